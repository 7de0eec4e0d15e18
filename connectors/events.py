"""The shopper-event contract and its JSON (de)serialisation.

One JSON object per event. ``event_time`` is event time in epoch milliseconds. IDs are strings
on the wire (numeric IDs of a log are written as their decimal text).

>>> e = Event(event_id="e1", event_type="click", user_id="u1", item_id="i9",
...           event_time=1511658000000, request_id="r1", position=2)
>>> decode_event(encode_event(e)) == e
True
>>> decode_event(b'{"event_id": "e2"}', now_ms=1511658000000)
Traceback (most recent call last):
...
connectors.errors.DecodeError: invalid_field: event_type: Field required; user_id: Field required; item_id: Field required; event_time: Field required
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from connectors.errors import DecodeError, rejected

if TYPE_CHECKING:
    from config import FeatureSettings

EventType = Literal["impression", "click", "add_to_cart", "favourite", "purchase", "search"]
EVENT_TYPES: tuple[str, ...] = EventType.__args__  # type: ignore[attr-defined]

MIN_EVENT_TIME_MS = 946_684_800_000  # 2000-01-01
MAX_FUTURE_MS = 24 * 3_600_000
MAX_EVENT_BYTES = 16_384


class Event(BaseModel):
    """A shopper event (see DESIGN.md, "Events")."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=False)

    event_id: str = Field(min_length=1, max_length=128)
    event_type: EventType
    user_id: str = Field(min_length=1, max_length=128)
    item_id: str = Field(min_length=1, max_length=128)
    event_time: int = Field(strict=True, ge=0)
    request_id: str | None = Field(default=None, max_length=128)
    position: int | None = Field(default=None, ge=0)
    category_id: str | None = Field(default=None, max_length=128)
    price: float | None = Field(default=None, ge=0)
    query: str | None = Field(default=None, max_length=1024)
    synthetic: bool = False
    """True for an impression made up by the impression rule (nobody was shown it): it feeds the
    label join, never feature state (see ``features/impressions.py``)."""


def encode_event(event: Event) -> bytes:
    """The event as compact UTF-8 JSON, without fields left at their defaults (nulls, false)."""
    return event.model_dump_json(exclude_defaults=True).encode()


def decode_event(
    raw: bytes | str,
    *,
    now_ms: int | None = None,
    min_time_ms: int = MIN_EVENT_TIME_MS,
    max_future_ms: int = MAX_FUTURE_MS,
    max_bytes: int = MAX_EVENT_BYTES,
) -> Event:
    """Parse and validate one record; raise :class:`DecodeError` with the reason if invalid.

    Checks, in order: size (``oversize``), JSON syntax (``bad_json``), an object at the top
    (``invalid_field``), field presence and types (``invalid_field``), and that ``event_time``
    lies between ``min_time_ms`` and ``now + max_future_ms`` (``absurd_time``).
    """
    if len(raw) > max_bytes:
        raise DecodeError("oversize", f"{len(raw)} bytes > {max_bytes}")
    try:
        event = Event.model_validate_json(raw)
    except ValidationError as err:
        raise rejected(err) from None
    now = int(time.time() * 1000) if now_ms is None else now_ms
    if not min_time_ms <= event.event_time <= now + max_future_ms:
        raise DecodeError("absurd_time", f"event_time {event.event_time} outside plausible range")
    return event


def decoder(settings: FeatureSettings) -> Callable[[bytes | str], Event]:
    """:func:`decode_event` with the limits of ``settings``."""
    return partial(decode_event, min_time_ms=settings.min_event_time_ms,
                   max_future_ms=settings.max_future_ms, max_bytes=settings.max_event_bytes)


def dead_letter(raw: bytes, reason: str, detail: str, source: str = "") -> bytes:
    """The dead-letter record: the reason and the original bytes (as text when UTF-8, else hex);
    ``source`` as :func:`connectors.errors.source` writes it.

    >>> json.loads(dead_letter(b"{", "bad_json", "EOF", "events[0]@5"))["original"]
    '{'
    """
    try:
        original, encoding = raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        original, encoding = raw.hex(), "hex"
    return json.dumps(
        {"reason": reason, "detail": detail, "source": source,
         "original": original, "original_encoding": encoding},
        separators=(",", ":"),
    ).encode()
