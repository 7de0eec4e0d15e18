"""Hostile input, as hypothesis strategies: event records of every kind of wrongness the
``events`` contract must survive, each tagged with its kind so that tests can count what they
tried.

Kinds: ``valid`` (a plausible event, odd but legal values included), ``wrong_type`` (a field
holding another JSON type), ``missing_field``, ``huge_string`` (an ID over its limit, or a
record over ``max_event_bytes``), ``non_finite`` (NaN and infinities where numbers go),
``bad_time`` (negative, tiny or far-future event times), ``invalid_utf8``, ``deep_nesting``,
``garbage`` (arbitrary bytes), ``not_an_object`` (JSON that is not an object).
"""

from __future__ import annotations

import json

from hypothesis import strategies as st

T0 = 1_700_000_000_000
"""The event time around which valid events fall (tests decode with ``now_ms`` = T0)."""
FIELDS = ("event_id", "event_type", "user_id", "item_id", "event_time")
EVENT_TYPES = ("impression", "click", "add_to_cart", "favourite", "purchase")

_ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_é😀", min_size=1, max_size=12)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                 max_size=3),
    max_leaves=6)


@st.composite
def valid_events(draw: st.DrawFn) -> dict:
    """A valid event as a dict, with the optional fields sometimes present."""
    event = {"event_id": draw(_ids), "event_type": draw(st.sampled_from(EVENT_TYPES)),
             "user_id": "h-" + draw(_ids), "item_id": draw(_ids),
             "event_time": T0 + draw(st.integers(0, 60_000))}
    if draw(st.booleans()):
        event["category_id"] = draw(_ids)
    if draw(st.booleans()):
        event["price"] = draw(st.floats(0, 1e6))
    if draw(st.booleans()):
        event["request_id"], event["position"] = draw(_ids), draw(st.integers(0, 50))
    if draw(st.booleans()):
        event["query"] = draw(st.text(max_size=40))
    return event


def _dumps(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


@st.composite
def hostile_records(draw: st.DrawFn) -> tuple[str, bytes]:
    """``(kind, record bytes)`` of one kind (module docstring)."""
    kind = draw(st.sampled_from(("valid", "wrong_type", "missing_field", "huge_string",
                                 "non_finite", "bad_time", "invalid_utf8", "deep_nesting",
                                 "garbage", "not_an_object")))
    event = draw(valid_events())
    if kind == "wrong_type":
        name = draw(st.sampled_from(FIELDS + ("position", "price")))
        event[name] = draw(_json_values.filter(lambda v: not isinstance(v, str)
                                               if name in FIELDS[:4] else isinstance(v, (list, dict))))
    elif kind == "missing_field":
        del event[draw(st.sampled_from(FIELDS))]
    elif kind == "huge_string":
        name = draw(st.sampled_from(("user_id", "item_id", "event_id", "query")))
        event[name] = "x" * draw(st.sampled_from((1_025, 20_000)))
    elif kind == "non_finite":
        raw = _dumps(event)[:-1] + b', "' + draw(st.sampled_from((b"price", b"event_time",
                                                                   b"position"))) + b'": '
        return kind, raw + draw(st.sampled_from((b"NaN", b"Infinity", b"-Infinity"))) + b"}"
    elif kind == "bad_time":
        event["event_time"] = draw(st.sampled_from((-1, 0, 5, T0 + 400 * 86_400_000, 2**63)))
    elif kind == "invalid_utf8":
        raw = _dumps(event)
        cut = draw(st.integers(1, len(raw) - 1))
        return kind, raw[:cut] + draw(st.sampled_from((b"\xff", b"\xc3\x28", b"\xed\xa0\x80",
                                                       b"\x80"))) + raw[cut:]
    elif kind == "deep_nesting":
        depth = draw(st.sampled_from((50, 1_000, 5_000)))
        return kind, _dumps(event)[:-1] + b', "extra": ' + b"[" * depth + b"]" * depth + b"}"
    elif kind == "garbage":
        return kind, draw(st.binary(min_size=0, max_size=200))
    elif kind == "not_an_object":
        return kind, _dumps(draw(st.lists(_json_values, max_size=3) | st.integers() | st.text()))
    return kind, _dumps(event)
