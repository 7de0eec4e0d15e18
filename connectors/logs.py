"""Shopper logs on disk read as time-ordered :class:`~connectors.events.Event` streams.

Formats (``replay`` and ``evaluate`` take the same ones):

* ``taobao`` — Alibaba's Taobao user-behaviour CSV: ``user_id,item_id,category_id,behavior,
  timestamp`` in Unix seconds, no header (a header line is tolerated); ``pv`` is a click,
  ``cart`` an add-to-cart, ``fav`` a favourite, ``buy`` a purchase.
* ``csv`` — any shopper log in CSV, described by a :class:`CsvMapping`.
* ``jsonl`` — one event of the contract per line (what ``produce`` takes); may carry
  impressions, request IDs and positions.

Rows that fail parsing or validation are counted in a :class:`ParseReport` with their line
number and reason (the first :data:`MAX_REPORTED` kept as examples); nothing is dropped
silently and no bad row stops the read. Logs without event IDs get ``<format>-<line_no>``.
Out-of-order logs are sorted by ``(event_time, line_no)``: in memory up to
``max_rows_in_memory`` rows, above that by an external merge of sorted runs in temporary files.

>>> import tempfile, pathlib
>>> from config import Settings
>>> log = pathlib.Path(tempfile.mkdtemp()) / "log.csv"
>>> _ = log.write_text("1,10,5,pv,1511658001\\n2,11,5,buy,1511658000\\n3,12,5,pv,15\\n")
>>> events, report = read_log(log, "taobao", settings=Settings())
>>> [(e.event_id, e.event_type, e.event_time) for e in events]
[('taobao-2', 'purchase', 1511658000000), ('taobao-1', 'click', 1511658001000)]
>>> report.events, report.bad, report.examples[0].line, report.examples[0].reason
(2, 1, 3, 'absurd_time')
"""

from __future__ import annotations

import csv
import heapq
import math
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from config import FeatureSettings
from connectors.errors import DecodeError, explain
from connectors.events import EVENT_TYPES, Event, EventType, decode_event, encode_event

LogFormat = Literal["taobao", "csv", "jsonl"]
LOG_FORMATS: tuple[str, ...] = LogFormat.__args__  # type: ignore[attr-defined]
MAX_REPORTED = 20
"""Bad rows kept as examples in a :class:`ParseReport` (all are counted)."""
MAX_ROWS_IN_MEMORY = 1_000_000
"""Above this many rows (about 1.5 GB of parsed events) a log is sorted by an external merge of
sorted runs."""

Column = str | int
"""A column by header name, or by 0-based position."""


class CsvMapping(BaseModel):
    """How the columns of a CSV shopper log map onto the event contract.

    Columns are header names (when ``header`` is true) or 0-based positions. ``event_names``
    maps the log's event names to ours; names already ours map to themselves. It may be given
    as a dict or as ``"pv=click,buy=purchase"`` (the CLI's form).

    >>> m = CsvMapping(user="uid", item="sku", event_type="action", time="ts",
    ...                event_names="view=click, order=purchase")
    >>> m.event_names
    {'view': 'click', 'order': 'purchase'}
    >>> try:
    ...     CsvMapping(user="uid", item=1, event_type=2, time=3, header=False)
    ... except ValidationError as err:
    ...     print(err.errors()[0]["msg"])
    Value error, without a header, columns must be 0-based positions: user='uid'
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    user: Column
    item: Column
    event_type: Column
    time: Column
    time_unit: Literal["s", "ms"] = "ms"
    """Unit of the time column: Unix seconds or milliseconds (fractions allowed)."""
    category: Column | None = None
    price: Column | None = None
    event_id: Column | None = None
    """Without it, events get ``<format>-<line_no>``."""
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    header: bool = True
    event_names: dict[str, EventType] = Field(default_factory=dict)

    @field_validator("event_names", mode="before")
    @classmethod
    def _parse_pairs(cls, value: object) -> object:
        if isinstance(value, str):
            pairs = [p.split("=", 1) for p in value.split(",") if p.strip()]
            if any(len(p) != 2 for p in pairs):
                raise ValueError("event_names must look like 'theirs=ours,theirs=ours'")
            return {k.strip(): v.strip() for k, v in pairs}
        return value

    @model_validator(mode="after")
    def _positions_without_header(self) -> CsvMapping:
        if not self.header:
            named = [f"{k}={v!r}" for k, v in self.columns().items() if isinstance(v, str)]
            if named:
                raise ValueError(
                    "without a header, columns must be 0-based positions: " + ", ".join(named))
        return self

    def columns(self) -> dict[str, Column]:
        """The mapped columns by field name (optional ones only when set)."""
        cols = {"user": self.user, "item": self.item, "event_type": self.event_type,
                "time": self.time, "category": self.category, "price": self.price,
                "event_id": self.event_id}
        return {k: v for k, v in cols.items() if v is not None}

    @classmethod
    def from_yaml(cls, path: str | Path) -> CsvMapping:
        """A mapping from a small YAML file whose keys are this model's fields."""
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of CsvMapping fields")
        return cls.model_validate(data)


TAOBAO = CsvMapping(
    user=0, item=1, category=2, event_type=3, time=4, time_unit="s", header=False,
    event_names={"pv": "click", "cart": "add_to_cart", "fav": "favourite", "buy": "purchase"},
)
"""The Taobao user-behaviour log as a CSV mapping."""


@dataclass(frozen=True, slots=True)
class BadRow:
    """One rejected row: where, why, and its text (truncated)."""

    line: int
    reason: str
    detail: str
    text: str


@dataclass
class ParseReport:
    """What reading a log did: counts of rows, events and bad rows by reason, plus examples."""

    path: str
    fmt: str
    lines: int = 0
    """Physical lines read."""
    events: int = 0
    bad: int = 0
    blank_lines: int = 0
    header_lines: int = 0
    out_of_order: int = 0
    """Rows with an event time earlier than a row before them."""
    sorted_runs: int = 0
    """Temporary sorted runs of the external sort (0 when sorted in memory or not at all)."""
    reasons: Counter[str] = field(default_factory=Counter)
    examples: list[BadRow] = field(default_factory=list)

    def reject(self, line: int, reason: str, detail: str, text: str) -> None:
        """Count one bad row (and keep it as an example while fewer than MAX_REPORTED)."""
        self.bad += 1
        self.reasons[reason] += 1
        if len(self.examples) < MAX_REPORTED:
            self.examples.append(BadRow(line, reason, detail, text[:200]))

    def summary(self) -> str:
        """One line for humans.

        >>> r = ParseReport("x.csv", "csv", lines=3, events=2)
        >>> r.reject(3, "absurd_time", "event_time 15000", "1,2,3")
        >>> r.summary()
        'x.csv (csv): 3 lines, 2 events, 1 bad (absurd_time=1), 0 blank, 0 header, 0 out of order'
        """
        why = ", ".join(f"{k}={v}" for k, v in sorted(self.reasons.items()))
        return (f"{self.path} ({self.fmt}): {self.lines} lines, {self.events} events, "
                f"{self.bad} bad{f' ({why})' if why else ''}, {self.blank_lines} blank, "
                f"{self.header_lines} header, {self.out_of_order} out of order")


class _RowError(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _time_ms(text: str, unit: str) -> int:
    text = text.strip()
    try:
        value = int(text)
        return value * 1000 if unit == "s" else value
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        raise _RowError("bad_time", f"not a number: {text!r}") from None
    if not math.isfinite(number):
        raise _RowError("bad_time", f"not finite: {text!r}")
    return round(number * 1000) if unit == "s" else round(number)


def _cell(row: list[str], index: int) -> str:
    return row[index] if index < len(row) else ""


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


class _Bounds:
    """The plausible event-time range (same rule as the contract's ``absurd_time``)."""

    def __init__(self, settings: FeatureSettings) -> None:
        self.low = settings.min_event_time_ms
        self.high = int(time.time() * 1000) + settings.max_future_ms

    def check(self, t: int) -> None:
        if not self.low <= t <= self.high:
            raise _RowError("absurd_time", f"event_time {t} outside plausible range")


def _csv_events(
    path: Path, fmt: str, mapping: CsvMapping, bounds: _Bounds, report: ParseReport
) -> Iterator[tuple[int, Event]]:
    with path.open(newline="", encoding="utf-8-sig", errors="replace") as f:
        reader = csv.reader(f, delimiter=mapping.delimiter)
        if mapping.header:
            head = next(reader, None)
            report.header_lines = 1 if head is not None else 0
            names = {name.strip(): i for i, name in enumerate(head or [])}
            missing = [v for v in mapping.columns().values()
                       if isinstance(v, str) and v not in names]
            if missing:
                raise ValueError(f"{path}: header has no column(s) {missing}; it has {list(names)}")
            cols = {k: v if isinstance(v, int) else names[v]
                    for k, v in mapping.columns().items()}
        else:
            cols = {k: int(v) for k, v in mapping.columns().items()}
        width = max(cols.values()) + 1
        end = reader.line_num
        for row in reader:
            line, end = end + 1, reader.line_num
            if not row or all(not v.strip() for v in row):
                report.blank_lines += 1
                continue
            if line == 1 and not mapping.header and not _is_number(_cell(row, cols["time"])):
                report.header_lines = 1
                continue
            try:
                yield line, _row_event(row, cols, width, mapping, f"{fmt}-{line}", bounds)
            except _RowError as err:
                report.reject(line, err.reason, err.detail, mapping.delimiter.join(row))
        report.lines = reader.line_num


def _row_event(
    row: list[str], cols: dict[str, int], width: int, mapping: CsvMapping, default_id: str,
    bounds: _Bounds,
) -> Event:
    if len(row) < width:
        raise _RowError("bad_row", f"{len(row)} columns, expected at least {width}")
    if any("\ufffd" in v for v in row):
        raise _RowError("not_utf8", "row is not valid UTF-8")
    raw_type = row[cols["event_type"]].strip()
    event_type = mapping.event_names.get(raw_type, raw_type)
    if event_type not in EVENT_TYPES:
        raise _RowError("unknown_event_type", f"{raw_type!r} is not mapped to one of ours")
    t = _time_ms(row[cols["time"]], mapping.time_unit)
    bounds.check(t)
    fields: dict[str, object] = {
        "event_id": row[cols["event_id"]].strip() if "event_id" in cols else default_id,
        "event_type": event_type,
        "user_id": row[cols["user"]].strip(),
        "item_id": row[cols["item"]].strip(),
        "event_time": t,
    }
    if "category" in cols and row[cols["category"]].strip():
        fields["category_id"] = row[cols["category"]].strip()
    if "price" in cols and row[cols["price"]].strip():
        fields["price"] = row[cols["price"]].strip()
    try:
        return Event.model_validate(fields, strict=False)
    except ValidationError as err:
        raise _RowError("invalid_field", explain(err)) from None


def _jsonl_events(
    path: Path, settings: FeatureSettings, report: ParseReport
) -> Iterator[tuple[int, Event]]:
    now_ms = int(time.time() * 1000)
    with path.open("rb") as f:
        line = 0
        for line, raw in enumerate(f, start=1):
            raw = raw.strip()
            if not raw:
                report.blank_lines += 1
                continue
            try:
                yield line, decode_event(
                    raw, now_ms=now_ms, min_time_ms=settings.min_event_time_ms,
                    max_future_ms=settings.max_future_ms, max_bytes=settings.max_event_bytes)
            except DecodeError as err:
                report.reject(line, err.reason, err.detail, raw.decode("utf-8", "replace"))
        report.lines = line


def _write_run(rows: list[tuple[int, int, Event]], directory: Path, index: int) -> Path:
    rows.sort(key=lambda r: (r[0], r[1]))
    path = directory / f"run-{index:05d}.tsv"
    with path.open("wb") as f:
        for t, line, event in rows:
            f.write(b"%d\t%d\t%s\n" % (t, line, encode_event(event)))
    return path


def _read_run(path: Path) -> Iterator[tuple[int, int, Event]]:
    with path.open("rb") as f:
        for raw in f:
            t, line, payload = raw.split(b"\t", 2)
            yield int(t), int(line), Event.model_validate_json(payload)


def _merged(runs: list[Path], directory: Path) -> Iterator[Event]:
    try:
        for _, _, event in heapq.merge(*(_read_run(p) for p in runs)):
            yield event
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _time_ordered(
    rows: Iterable[tuple[int, Event]], report: ParseReport, max_rows: int, tmp_dir: str | None
) -> Iterator[Event]:
    buffer: list[tuple[int, int, Event]] = []
    runs: list[Path] = []
    directory: Path | None = None
    last = -1
    for line, event in rows:
        report.events += 1
        if event.event_time < last:
            report.out_of_order += 1
        last = max(last, event.event_time)
        buffer.append((event.event_time, line, event))
        if len(buffer) >= max_rows:
            directory = directory or Path(tempfile.mkdtemp(prefix="streamrank-sort-", dir=tmp_dir))
            runs.append(_write_run(buffer, directory, len(runs)))
            buffer = []
    if not runs:
        if report.out_of_order:
            buffer.sort(key=lambda r: (r[0], r[1]))
        return (event for _, _, event in buffer)
    assert directory is not None
    if buffer:
        runs.append(_write_run(buffer, directory, len(runs)))
    report.sorted_runs = len(runs)
    return _merged(runs, directory)


def read_log(
    path: str | Path,
    fmt: LogFormat,
    mapping: CsvMapping | None = None,
    *,
    settings: FeatureSettings,
    max_rows_in_memory: int = MAX_ROWS_IN_MEMORY,
    tmp_dir: str | None = None,
) -> tuple[Iterator[Event], ParseReport]:
    """Read a shopper log: its events in event-time order, and the report of the read.

    The whole file is parsed before this returns, so the report is final; the events are then
    served from memory, or (above ``max_rows_in_memory`` rows) merged lazily from sorted runs in
    ``tmp_dir`` (removed once the iterator is exhausted). Ties in time keep file order.
    ``mapping`` is required for ``csv`` and not accepted otherwise. Raises ``ValueError`` for a
    wrong format/mapping or a header that lacks a mapped column (a log-wide problem, not a row's).
    """
    path = Path(path)
    if fmt not in LOG_FORMATS:
        raise ValueError(f"unknown log format {fmt!r}; expected one of {LOG_FORMATS}")
    if (fmt == "csv") != (mapping is not None):
        raise ValueError("a CsvMapping is required for format 'csv' and only for it")
    if max_rows_in_memory < 1:
        raise ValueError("max_rows_in_memory must be at least 1")
    report = ParseReport(path=str(path), fmt=fmt)
    if fmt == "jsonl":
        rows = _jsonl_events(path, settings, report)
    else:
        rows = _csv_events(path, fmt, mapping or TAOBAO, _Bounds(settings), report)
    return _time_ordered(rows, report, max_rows_in_memory, tmp_dir), report
