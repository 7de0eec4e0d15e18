"""The wire format of feature rows on ``settings.topic_feature_rows`` (``features.rows``), shared
by every features job that feeds the Feast writer.

* **Key**: UTF-8 JSON array ``[view, *key]``, e.g. ``["user_category_features","u1","c7"]``
  (the topic is compacted: the latest row of each key is kept).
* **Value**: UTF-8 JSON object ``{"view": str, "key": [str, ...], "event_time_ms": int,
  "values": {...}}``: a :class:`FeatureRow`; ``values`` maps feature names to
  numbers or lists of IDs. Floats travel as their shortest round-trip text, so a decoded row
  holds exactly the floats that were encoded.

>>> row = FeatureRow("user_category_features", ("u1", "c7"), {"uc_clicks_24h": 0.1 + 0.2}, 5)
>>> key, value = encode_row(row)
>>> key
b'["user_category_features","u1","c7"]'
>>> value
b'{"view":"user_category_features","key":["u1","c7"],"event_time_ms":5,"values":{"uc_clicks_24h":0.30000000000000004}}'
>>> decode_row(value) == row
True
>>> decode_row(b'{"view": "user_features"}')
Traceback (most recent call last):
...
connectors.errors.DecodeError: invalid_field: feature row lacks key, event_time_ms, values
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import orjson

from connectors.errors import DecodeError

_FIELDS = ("view", "key", "event_time_ms", "values")


class FeatureRow(NamedTuple):
    """One feature-row update: a view, its entity key, the values, and their as-of time (ms)."""

    view: str
    key: tuple[str, ...]
    values: dict[str, Any]
    event_time_ms: int
_COMPACT = (",", ":")


def encode_key(view: str, key: tuple[str, ...] | list[str]) -> bytes:
    """The Kafka key of a row of ``view`` for entity ``key``."""
    return json.dumps([view, *key], separators=_COMPACT).encode()


def encode_row(row: FeatureRow) -> tuple[bytes, bytes]:
    """The Kafka key and value of ``row``."""
    value = {"view": row.view, "key": list(row.key), "event_time_ms": row.event_time_ms,
             "values": row.values}
    return encode_key(row.view, row.key), json.dumps(value, separators=_COMPACT).encode()


def decode_row(raw: bytes | str) -> FeatureRow:
    """The row of a Kafka value; :class:`DecodeError` if it is not one."""
    try:
        body: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:  # also NaN and Infinity, which the standard parser takes
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as err:
            raise DecodeError("bad_json", str(err)) from None
    if not isinstance(body, dict):
        raise DecodeError("invalid_field", "a feature row is a JSON object")
    missing = [f for f in _FIELDS if f not in body]
    if missing:
        raise DecodeError("invalid_field", f"feature row lacks {', '.join(missing)}")
    view, key, t, values = (body[f] for f in _FIELDS)
    if (not isinstance(view, str) or not isinstance(key, list)
            or not all(isinstance(k, str) for k in key) or isinstance(t, bool)
            or not isinstance(t, int) or not isinstance(values, dict)):
        raise DecodeError("invalid_field", "feature row fields have the wrong types")
    return FeatureRow(view, tuple(key), values, t)
