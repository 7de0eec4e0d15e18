"""The item catalog on the wire: the record, reading catalog files, the ``items`` topic.

One UTF-8 JSON object per item version on the compacted ``items`` topic, keyed by
``item_id`` (the newest record of a key is the item; a record with no value, a tombstone,
removes it): ``item_id`` and ``title`` (required, non-blank), optional ``description``,
``category_id``, ``price`` (>= 0), ``brand``. Catalog files are JSON lines (one such object a
line) or CSV with a header naming those columns (other columns are ignored; an empty cell is
a missing value).

>>> item = CatalogItem(item_id="d1", title="Cordless Drill 18V", price="89.5")
>>> decode_item(encode_item(item)) == item, item.price
(True, 89.5)
>>> decode_item(b'{"item_id": "d2", "title": "  "}')
Traceback (most recent call last):
...
connectors.errors.DecodeError: invalid_field: title: String should have at least 1 character
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from confluent_kafka import KafkaError, KafkaException
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from config import KafkaSettings
from connectors.errors import DecodeError, rejected
from connectors.producer import TopicProducer
from connectors.subscriber import TopicSubscriber

CatalogFormat = Literal["jsonl", "csv"]
MAX_ITEM_BYTES = 16_384


class CatalogItem(BaseModel):
    """One version of a catalog item."""

    model_config = ConfigDict(extra="ignore", frozen=True, str_strip_whitespace=True,
                              coerce_numbers_to_str=True)

    item_id: str = Field(min_length=1, max_length=128)
    title: str = Field(min_length=1, max_length=1_024)
    description: str | None = Field(default=None, max_length=8_192)
    category_id: str | None = Field(default=None, min_length=1, max_length=128)
    price: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    brand: str | None = Field(default=None, max_length=256)


def encode_item(item: CatalogItem) -> bytes:
    """The item as compact UTF-8 JSON, without its missing fields."""
    return item.model_dump_json(exclude_none=True).encode()


def decode_item(raw: bytes | str) -> CatalogItem:
    """Parse and validate one item; :class:`DecodeError` (``oversize``, ``bad_json``,
    ``invalid_field``) when it is not a valid one."""
    if len(raw) > MAX_ITEM_BYTES:
        raise DecodeError("oversize", f"{len(raw)} bytes > {MAX_ITEM_BYTES}")
    try:
        return CatalogItem.model_validate_json(raw)
    except ValidationError as err:
        raise rejected(err) from None


def _from_row(row: dict[str, str | None]) -> CatalogItem:
    fields = {k: v for k, v in row.items() if k is not None and v not in (None, "")}
    try:
        return CatalogItem.model_validate(fields)
    except ValidationError as err:
        raise rejected(err) from None


def catalog_format(path: Path, fmt: str | None = None) -> CatalogFormat:
    """``fmt`` when given, else from the suffix: ``.csv`` is CSV, anything else JSON lines.

    >>> catalog_format(Path("items.csv")), catalog_format(Path("items.jsonl"))
    ('csv', 'jsonl')
    """
    name = fmt or ("csv" if path.suffix.lower() == ".csv" else "jsonl")
    if name not in ("jsonl", "csv"):
        raise ValueError(f"catalog format must be jsonl or csv, not {name!r}")
    return name  # type: ignore[return-value]


def read_catalog(text: str, fmt: CatalogFormat) -> Iterator[tuple[int, CatalogItem | DecodeError]]:
    """``(line number, item or why it is invalid)`` per record of a catalog file's text
    (blank lines skipped; CSV's line numbers count the header as line 1).

    >>> rows = list(read_catalog("item_id,title,price\\na,Drill,9\\nb,,x\\n", "csv"))
    >>> rows[0][1].title, rows[1][0], rows[1][1].reason
    ('Drill', 3, 'invalid_field')
    """
    if fmt == "jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    yield n, decode_item(line.encode())
                except DecodeError as err:
                    yield n, err
        return
    reader = csv.DictReader(io.StringIO(text))
    if "item_id" not in (reader.fieldnames or ()) or "title" not in (reader.fieldnames or ()):
        yield 1, DecodeError("invalid_field", f"the CSV header {reader.fieldnames} needs item_id "
                                              "and title")
        return
    for row in reader:
        try:
            yield reader.line_num, _from_row(row)
        except DecodeError as err:
            yield reader.line_num, err


class ItemProducer(TopicProducer):
    """Sends item versions to the ``items`` topic, keyed by ``item_id``."""

    topic_setting = "topic_items"

    def send(self, item: CatalogItem) -> None:
        """Send one item version."""
        self.send_raw(encode_item(item), item.item_id.encode())


ItemRecord = tuple[str, CatalogItem | None]
"""``(item_id, the item's new version)``, or ``(item_id, None)`` for a tombstone."""


class ItemSubscriber(TopicSubscriber):
    """Reads the ``items`` topic from the earliest offset in a consumer group of its own (every
    follower sees the whole catalog); a context manager. Records that do not decode are counted
    in ``rejected`` (with the last reason in ``last_error``) and skipped."""

    group_prefix = "streamrank-catalog"

    def __init__(self, settings: KafkaSettings, group_id: str | None = None,
                 **overrides: object) -> None:
        super().__init__(settings, settings.topic_items, group_id, **overrides)
        self.rejected = 0
        self.last_error = ""
        self.reached_end = False
        """Whether a poll has reached the end of the topic (or found no topic): set with
        ``enable.partition.eof`` among the overrides (the ``items`` topic has one partition)."""

    def poll(self, timeout_s: float = 1.0, max_records: int = 500) -> list[ItemRecord]:
        """The item records that arrive within ``timeout_s``, in order."""
        out: list[ItemRecord] = []
        for msg in self._messages(max_records, timeout_s):
            err = msg.error()
            if err is not None:
                if err.code() in (KafkaError._PARTITION_EOF, KafkaError.UNKNOWN_TOPIC_OR_PART):
                    self.reached_end = True
                    continue
                raise KafkaException(err)
            key, value = msg.key(), msg.value()
            if value is None:
                if key:
                    out.append((key.decode("utf-8", "replace"), None))
                continue
            try:
                item = decode_item(value)
            except DecodeError as err:
                self.rejected += 1
                self.last_error = str(err)
                continue
            out.append((item.item_id, item))
        return out

