"""Hostile input, property-based: every event record is accepted or rejected with one of the
contract's reasons (never another exception), its dead letter keeps the original bytes; every
damaged model update is rejected with a reason, never applied; every ``/rank`` body is a
request or a validation error (the fast parse agreeing with the request model), and a bearer
header passes only with the exact token. ``pytest -s --hypothesis-show-statistics`` shows how
many inputs of each kind were tried and what became of them."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError

from connectors.errors import DecodeError
from connectors.events import decode_event, dead_letter
from models.scorer.api import RankRequest, _fast, parse_rank
from models.scorer.app import bearer_ok
from models.delta import ROWS_SUFFIX, ModelUpdate, UpdateRejected, decode_message, encode_delta
from tests.hostile import T0, hostile_records

REASONS = {"bad_json", "invalid_field", "oversize", "absurd_time"}
KEY = b"shared-secret"


@settings(max_examples=1_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_records())
def test_every_record_is_an_event_or_a_stated_reason(tagged: tuple[str, bytes]) -> None:
    kind, raw = tagged
    try:
        decoded = decode_event(raw, now_ms=T0)
    except DecodeError as err:
        event(f"{kind}: {err.reason}")
        assert err.reason in REASONS, err
        letter = json.loads(dead_letter(raw, err.reason, err.detail, "events[0]@1"))
        original = letter["original"]
        assert (original.encode() if letter["original_encoding"] == "utf-8"
                else bytes.fromhex(original)) == raw
        assert kind != "valid", (raw, err)
    else:
        event(f"{kind}: accepted")
        assert kind in ("valid", "deep_nesting", "non_finite", "wrong_type"), (kind, raw)
        assert decoded.user_id and decoded.event_time >= 0


def _genuine() -> bytes:
    update = ModelUpdate(model_id="m", kind="delta", version=3, base_version=2, watermark_ms=42,
                         examples=100, metrics={"click_auc": 0.75},
                         tensors={"emb": torch.arange(6.0).reshape(3, 2),
                                  "emb" + ROWS_SUFFIX: torch.tensor([0, 2, 5]),
                                  "bias": torch.tensor([0.5])})
    return encode_delta(update, KEY)


GENUINE = _genuine()


@st.composite
def damaged_updates(draw: st.DrawFn) -> tuple[str, bytes]:
    """``(kind, bytes)``: the genuine signed update truncated, with bytes flipped, signed with
    another key, or replaced by arbitrary bytes."""
    kind = draw(st.sampled_from(("truncated", "flipped", "foreign_key", "garbage")))
    if kind == "truncated":
        return kind, GENUINE[:draw(st.integers(0, len(GENUINE) - 1))]
    if kind == "flipped":
        data = bytearray(GENUINE)
        for at in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=4,
                                unique=True)):
            data[at] ^= draw(st.integers(1, 255))
        return kind, bytes(data)
    if kind == "foreign_key":
        return kind, encode_delta(decode_message(GENUINE, KEY), draw(
            st.binary(min_size=1, max_size=32).filter(lambda k: k != KEY)))
    return kind, draw(st.binary(max_size=400))


@settings(max_examples=500, deadline=None)
@given(damaged_updates())
def test_every_damaged_update_is_rejected_with_a_reason(tagged: tuple[str, bytes]) -> None:
    kind, data = tagged
    try:
        update = decode_message(data, KEY)
    except UpdateRejected as err:
        event(f"{kind}: {err.reason}")
        return
    # A flip may land in JSON padding or whitespace of the header: then the content is intact.
    event(f"{kind}: intact content accepted")
    assert kind == "flipped"
    genuine = decode_message(GENUINE, KEY)
    assert update.version == genuine.version
    assert all(torch.equal(update.tensors[k], v) for k, v in genuine.tensors.items())


_good_ids = st.text(alphabet="abc-é😀\x00\"\\", min_size=1, max_size=6)
_rank_ids = st.one_of(_good_ids, _good_ids, _good_ids, st.sampled_from(["", "x" * 257]))
_odd_json = st.none() | st.booleans() | st.integers(-2, 2**64) | st.floats() | st.text(max_size=4) \
    | st.lists(st.integers(), max_size=2) | st.dictionaries(st.text(max_size=3), st.integers(),
                                                            max_size=2)


@st.composite
def rank_bodies(draw: st.DrawFn) -> tuple[str, bytes]:
    """``(kind, body)``: a ``/rank`` body, plausible or damaged in one way."""
    items = draw(st.lists(st.one_of(
        _rank_ids, st.fixed_dictionaries({"item_id": _rank_ids}, optional={
            "category_id": st.none() | _rank_ids,
            "price": st.one_of(st.none(), st.floats(0, 1e6), st.floats(0, 1e6), st.floats(),
                               st.integers(-1, 10), st.text(max_size=3))})),
        min_size=1, max_size=5))
    body: dict = {"user_id": draw(_rank_ids), "items": items}
    for name, values in (("query", st.none() | st.text(max_size=8) | st.just("q" * 1025)),
                         ("as_of_ms", st.none() | st.integers(-1, 2**63)),
                         ("context", st.none() | st.dictionaries(st.text(max_size=2),
                                                                 st.integers(), max_size=2))):
        if draw(st.booleans()):
            body[name] = draw(values)
    kind = draw(st.sampled_from(("plausible", "wrong_type", "unknown_field", "duplicate_item",
                                 "duplicate_key", "non_finite", "garbage", "invalid_utf8",
                                 "deep_nesting")))
    if kind == "wrong_type":
        body[draw(st.sampled_from(sorted(body)))] = draw(_odd_json)
    elif kind == "unknown_field":
        body[draw(st.text(min_size=1, max_size=5))] = 1
    elif kind == "duplicate_item" and items:
        items.append(items[0])
    text = json.dumps(body, ensure_ascii=draw(st.booleans()))
    if kind == "duplicate_key":
        text = text[:-1] + ', "user_id": ' + json.dumps(draw(_rank_ids)) + "}"
    elif kind == "non_finite":
        text = text[:-1] + ', "as_of_ms": ' + draw(st.sampled_from(("NaN", "Infinity", "1e400",
                                                                     "-0.0", "1.0"))) + "}"
    elif kind == "deep_nesting":
        depth = draw(st.integers(150, 1_000))
        text = text[:-1] + ', "context": {"a": ' + "[" * depth + "]" * depth + "}}"
    raw = text.encode("utf-8", "surrogatepass")
    if kind == "garbage":
        raw = draw(st.binary(max_size=40))
    elif kind == "invalid_utf8":
        raw = raw.replace(b'"user_id": "', b'"user_id": "\xff', 1)
    return kind, raw


@settings(max_examples=1_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rank_bodies())
def test_every_rank_body_is_a_request_or_a_validation_error(tagged: tuple[str, bytes]) -> None:
    """The fast path agrees with the request model on every body it takes; any other body is
    the model's to judge, which answers a request or a ValidationError (the app's 422), never
    another exception."""
    kind, body = tagged
    fast = _fast(body)
    try:
        slow = RankRequest.model_validate_json(body).candidates()
    except ValidationError:
        assert fast is None, (kind, body)
        with pytest.raises(ValidationError):
            parse_rank(body)
        event(f"{kind}: 422")
    else:
        assert fast is None or fast == slow, (kind, body)
        assert parse_rank(body) == slow
        event(f"{kind}: accepted" + (" (fast path)" if fast is not None else ""))


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=255), max_size=40),
       st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1,
               max_size=20))
def test_a_bearer_header_passes_only_with_the_exact_token(header: str, token: str) -> None:
    """Any header an HTTP server can hand over (latin-1 text) passes only when it is exactly
    ``Bearer <token>``; without a token every header passes."""
    assert bearer_ok(header, SecretStr(token)) == (header == f"Bearer {token}")
    assert bearer_ok(f"Bearer {token}", SecretStr(token))
    assert bearer_ok(header, None)
