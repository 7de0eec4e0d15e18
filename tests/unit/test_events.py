"""The event contract: valid records round-trip; each kind of bad record gets its reason."""

from __future__ import annotations

import json

import pytest

from config import Settings
from connectors.errors import DecodeError
from connectors.events import Event, dead_letter, decode_event, decoder, encode_event

NOW = 1_511_658_000_000
GOOD = {"event_id": "e1", "event_type": "purchase", "user_id": "u1", "item_id": "i1",
        "event_time": NOW, "category_id": "c1", "price": 9.5}


def test_round_trip_keeps_every_field() -> None:
    event = Event(**GOOD, request_id="r1", position=3, query="shoes")
    assert decode_event(encode_event(event), now_ms=NOW) == event
    assert b"null" not in encode_event(Event(**GOOD))


@pytest.mark.parametrize(("raw", "reason"), [
    (b'{"event_id": "e1", "event_type": ', "bad_json"),
    (b"not json at all", "bad_json"),
    (b"[1, 2]", "invalid_field"),
    (json.dumps({**GOOD, "event_type": "teleport"}).encode(), "invalid_field"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "user_id"}).encode(), "invalid_field"),
    (json.dumps({**GOOD, "event_time": "yesterday"}).encode(), "invalid_field"),
    (json.dumps({**GOOD, "event_time": 1.5e12}).encode(), "invalid_field"),
    (json.dumps({**GOOD, "price": -1}).encode(), "invalid_field"),
    (json.dumps({**GOOD, "event_time": 15}).encode(), "absurd_time"),
    (json.dumps({**GOOD, "event_time": NOW + 10 * 86_400_000}).encode(), "absurd_time"),
    (json.dumps({**GOOD, "query": "x" * 20_000}).encode(), "oversize"),
    (b"\xff\xfe{}", "bad_json"),
])
def test_bad_records_get_their_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_event(raw, now_ms=NOW)
    assert info.value.reason == reason


def test_decoder_uses_the_settings_limits() -> None:
    strict = decoder(Settings(max_event_bytes=50))
    with pytest.raises(DecodeError, match="oversize"):
        strict(json.dumps(GOOD).encode())


def test_dead_letter_keeps_original_bytes_even_when_not_utf8() -> None:
    record = json.loads(dead_letter(b"\xff\x00", "bad_json", "not UTF-8", "events[2]@7"))
    assert record == {"reason": "bad_json", "detail": "not UTF-8", "source": "events[2]@7",
                      "original": "ff00", "original_encoding": "hex"}
