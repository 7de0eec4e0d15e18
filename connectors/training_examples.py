"""The training-example contract carried on ``training.examples`` (one JSON object each).

>>> x = TrainingExample(example_id="e1", request_id="r1", user_id="u", item_id="i",
...     category_id="c", position=0, event_time=1, click=1, purchase=0, features={"a": 1.0})
>>> decode_example(encode_example(x)) == x
True
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from connectors.errors import DecodeError, rejected


class TrainingExample(BaseModel):
    """An impression with its labels and its features as of the impression.

    ``price``, ``recent_items``, ``recent_categories`` and ``query`` default to none, so
    producers that predate them still decode. A search's ``features`` also carry the query–item
    text features (:data:`features.query_item.QUERY_ITEM_FEATURES`) as of the impression.
    """

    model_config = ConfigDict(frozen=True)

    example_id: str
    """The impression's event_id."""
    request_id: str | None = None
    user_id: str
    item_id: str
    category_id: str | None = None
    position: int | None = None
    event_time: int
    """The impression's event time (ms)."""
    click: int = Field(ge=0, le=1)
    purchase: int = Field(ge=0, le=1)
    features: dict[str, float]
    """Dense features by name (see features.schema.DENSE_FEATURES and
    features.query_item.QUERY_ITEM_FEATURES), as of the impression."""
    price: float | None = None
    """The impression's price, where the log has one."""
    recent_items: tuple[str, ...] = ()
    """The user's last clicked items before the impression, newest first (``last_items``)."""
    recent_categories: tuple[str, ...] = ()
    """The user's last clicked categories before the impression, newest first."""
    query: str | None = None
    """The search query the item was shown for (None: not a search)."""


def encode_example(example: TrainingExample) -> bytes:
    """Compact JSON bytes (without ``query`` when there is none: the bytes of an example that
    is not a search are as before the field existed)."""
    return example.model_dump_json(exclude={"query"} if example.query is None else None).encode()


def decode_example(raw: bytes | str) -> TrainingExample:
    """Parse one example; a malformed one raises :class:`~connectors.errors.DecodeError` with
    its reason (``not_utf8``, ``bad_json``, ``invalid_field``).

    >>> decode_example(b"\\xff")
    Traceback (most recent call last):
    ...
    connectors.errors.DecodeError: not_utf8: 'utf-8' codec can't decode byte 0xff in position 0: invalid start byte
    """
    if isinstance(raw, bytes):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DecodeError("not_utf8", str(err)) from None
    try:
        return TrainingExample.model_validate_json(raw)
    except ValidationError as err:
        raise rejected(err) from None
