"""Writes the golden fixtures: input logs and what the pure Python reference makes of them.

The expected files are the reference's output (``connectors.events`` validation and dead
letters, ``features.example_builder.ExampleBuilder`` rows and examples): they are the
specification that the Java port (``ops/flink-udfs``, ``GoldenTest``) is held to, and are
regenerated only when the specification changes, never to make a failing test pass::

    .venv/bin/python -m tests.golden.generate     # or: python tests/golden/generate.py

Each case directory (``messy``: :func:`messy_records`; ``taobao``: :func:`taobao_records`)
holds, the JSON-lines files gzipped (``zcat`` them; gzip keeps the fixtures under 1 MB):

* ``settings.json``: the settings the case runs under (and ``now_ms``, the wall clock of the
  ``absurd_time`` check; every time in the logs is years away from any plausible now, so the
  Java side, which reads the real clock, decides the same).
* ``events.jsonl.gz``: the raw records in arrival order, one JSON object a line:
  ``{"timestamp": <Kafka timestamp>, "value": <the record as text>}``, or ``"value_base64"``
  for a record that is not UTF-8. Valid events carry their event time as timestamp; the other
  records one no later than the latest event time so far, so that they move no watermark.
* ``dead_letters.jsonl.gz``: ``connectors.events.dead_letter`` of every rejected record, in
  order (its source the topic: a Flink source reads values only, no partition or offset).
* ``rows.jsonl.gz``: every feature row (``connectors.feature_rows`` wire value) in the order the
  reference emits them, per event: user, item, user x category.
* ``examples.jsonl.gz``: every training example (``encode_example`` JSON), in the reference's
  order (impression time).

Deterministic: seeded logs, a fixed ``now_ms``, settings pinned in the case (not the
environment).
"""

from __future__ import annotations

import base64
import gzip
import itertools
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: the repository root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from config import Settings
from connectors.errors import DecodeError, source
from connectors.events import Event, EventType, dead_letter, decode_event, encode_event
from connectors.feature_rows import encode_row
from connectors.logs import read_log
from connectors.training_examples import encode_example
from features.example_builder import ExampleBuilder
from features.impressions import with_impressions
from tests.shop_logs import BASE_MS, messy_log, spanning_log

GOLDEN = Path(__file__).resolve().parent
CASES = ("messy", "taobao")
FILES = ("dead_letters", "rows", "examples")
"""The expected outputs of a case, ``<name>.jsonl.gz`` each."""
NOW_MS = 1_767_225_600_000
"""2026-01-01: the ``absurd_time`` check's now."""
SETTINGS_KEYS = ("topic_events", "min_event_time_ms", "max_future_ms", "max_event_bytes",
                 "max_out_of_orderness_ms", "allowed_lateness_ms", "attribution_window_ms",
                 "feature_state_ttl_ms")
"""The settings that decide the outputs (both sides read them from ``settings.json``)."""
MINUTE_MS = 60_000
SAMPLE: Path = Settings.model_fields["sample_log"].default

Record = tuple[bytes, int]
"""A raw record and its Kafka timestamp."""
Values = dict[str, Any]
"""Settings by name, as in ``settings.json``."""

BASE = '"event_id":"{id}","event_type":"click","user_id":"u0","item_id":"i0","event_time":{t}'
BAD: list[str] = [
    "[1]", '"x"', "null", "", "{", "{BASE}} x", "{BASE},}", "{'a':1}", "  {BASE}},",
    "{BASE},\"position\":01}", "{BASE},\"position\":2.5}", "{BASE},\"position\":-1}",
    "{BASE},\"position\":\"1e2\"}", "{BASE},\"price\":NaN}", "{BASE},\"price\":\"abc\"}",
    "{BASE},\"price\":-1}", "{BASE},\"synthetic\":null}", "{BASE},\"synthetic\":2}",
    "{BASE},\"synthetic\":\" true\"}", "{BASE},\"event_time\":1.5e12}",
    "{BASE},\"event_time\":\"5\"}", "{BASE},\"event_time\":true}", "{BASE},\"event_time\":-1}",
    "{BASE},\"event_time\":5}", "{BASE},\"event_time\":946684799999}",
    "{BASE},\"event_time\":9999999999999999}",
    "{BASE},\"event_time\":99999999999999999999999}", "{BASE},\"event_id\":5}",
    "{BASE},\"event_id\":\"\"}", "{BASE},\"event_type\":\"Click\"}",
    "{BASE},\"event_type\":\"view\"}", "{BASE},\"user_id\":\"\\ud800\"}",
    "{BASE},\"request_id\":\"" + "r" * 129 + "\"}", "{BASE},\"query\":[1]}",
    '{"event_type":"click"}', "{BASE},\"item_id\":null}", "{BASE},\"category_id\":7}",
    "{BASE},\"x\":\"" + "y" * 17_000 + "\"}",
    "{BASE},\"x\":" + "[" * 201 + "]" * 201 + "}",
    "{BASE},\"x\":" + "{\"a\":" * 200 + "1" + "}" * 200 + "}",
    "[" * 202 + "]" * 202,
]
"""Invalid records, every reason (``{BASE}`` opens a valid click's object). The last three nest
a value deeper than pydantic's parser allows (a value inside more than 200 arrays/objects)."""
RAW_BAD: dict[int, bytes] = {100: b"\xff\xfe{not utf-8", 500: b'{"event_id":"\xff"}',
                             900: b"\xef\xbb\xbf{}"}
"""Records that are not UTF-8 (stored as base64) or start with a BOM (``bad_json``), by the
index of the event they follow."""
ODD_VALID: list[str] = [
    "{BASE},\"position\":\"2\"}", "{BASE},\"position\":2.0}", "{BASE},\"position\":true}",
    "{BASE},\"price\":\"1.5\"}", "{BASE},\"price\":Infinity}", "{BASE},\"synthetic\":\"no\"}",
    "{BASE},\"synthetic\":0}", "{BASE},\"x\":[1,2,{\"y\":NaN}]}", "  {BASE}}  ",
    "{BASE},\"user_id\":\"\\u00e9\\ud83d\\ude00\"}", "{BASE},\"category_id\":null}",
    "{BASE},\"event_id\":\"dup\",\"event_id\":\"{id}\"}",
    "{BASE},\"x\":" + "[" * 200 + "]" * 200 + "}",
    "{BASE},\"x\":" + "{\"a\":" * 199 + "1" + "}" * 199 + "}",
]
"""Valid look-alikes of the bad records (lax conversions the Java parser must copy)."""


QUERIES: list[str] = ["cordless drill", "", "Ünïcode \"quoted\" \\ back\\", "tab\tnew\nline\u0001",
                      "😀 emoji", "x" * 1024]
"""Search queries some impressions carry (the examples must carry them, escaped alike)."""


COMEBACK: list[tuple[EventType, int]] = [
    ("click", 2), ("impression", 3), ("click", 3), ("purchase", 4), ("impression", 30),
    ("click", 31), ("impression", 45)]
"""The events (and their minute) of a user and an item that come back after the TTL."""


def defaults(*keys: str) -> Values:
    """The default settings of ``keys`` (not the environment's)."""
    return {k: Settings.model_fields[k].default for k in keys}


def case_settings(name: str) -> Values:
    """The settings of a case: the defaults, but in ``messy`` a TTL of 5 minutes so that keys
    expire often (a third of its examples see an expired state)."""
    values = defaults(*SETTINGS_KEYS)
    if name == "messy":
        values["feature_state_ttl_ms"] = 5 * MINUTE_MS
    return values


def settings_of(values: Values) -> Settings:
    """:class:`Settings` with ``values`` (the environment cannot override them)."""
    return Settings(**{k: values[k] for k in SETTINGS_KEYS})


def messy_records(settings: Settings) -> list[Record]:
    """``tests.shop_logs.messy_log`` (duplicates, out of order, late) over users spanning
    several windows, a user and an item that come back after the TTL, events right at the
    lateness horizon, and every kind of bad record (plus valid look-alikes) in between."""
    events = spanning_log(users=5, items=24, categories=5, minutes=50, seed=11)
    back = [Event(event_id=f"back{k}", event_type=kind, user_id="u-back", item_id="i-back",
                  category_id="c-back", event_time=BASE_MS + minute * MINUTE_MS)
            for k, (kind, minute) in enumerate(COMEBACK)]
    events = sorted(events + back, key=lambda e: e.event_time)
    events = [e.model_copy(update={"query": QUERIES[(k // 3) % len(QUERIES)]})
              if e.event_type == "impression" and k % 3 == 0 else e for k, e in enumerate(events)]
    messy = messy_log(events, lateness_ms=settings.allowed_lateness_ms, seed=5, late_after=60)
    records: list[Record] = []
    latest = 0
    bad = itertools.chain(BAD, ODD_VALID)
    horizon = settings.max_out_of_orderness_ms + settings.allowed_lateness_ms
    for k, event in enumerate(messy):
        records.append((encode_event(event), event.event_time))
        latest = max(latest, event.event_time)
        if k % 9 == 4:
            text = next(bad, None)
            if text is not None:
                value = text.replace("{BASE}", "{" + BASE.format(id=f"odd{k}", t=latest - 1))
                records.append((value.replace("{id}", f"odd{k}b").encode(), latest - 1))
        if k in (300, 700):  # the latest acceptable millisecond, then the first late one
            for n, dt in enumerate((horizon, horizon + 1)):
                edge = Event(event_id=f"edge{k}-{n}", event_type="click", user_id="u1",
                             item_id="i1", category_id="c1", event_time=latest - dt)
                records.append((encode_event(edge), edge.event_time))
        if k in RAW_BAD:
            records.append((RAW_BAD[k], latest - 1))
    return records


def taobao_records(settings: Settings, every: int = 48) -> list[Record]:
    """A slice of the real sample through the impression rule, as ``replay`` feeds it: the
    events of every ``every``-th user (by id), so that sessions span the whole sample
    (several attribution windows) instead of its first few minutes."""
    settings = settings.model_copy(update=defaults(
        "impressions_per_request", "popularity_window", "sampling_seed"))
    raw, _ = read_log(SAMPLE, "taobao", settings=settings)
    sliced = (e for e in raw if int(e.user_id) % every == 0)
    return [(encode_event(e), e.event_time) for e in with_impressions(sliced, settings)]


def read_lines(path: Path) -> list[str]:
    """The lines of a gzipped JSON-lines file."""
    return gzip.decompress(path.read_bytes()).decode().splitlines()


def read_records(path: Path) -> list[Record]:
    """The records of an ``events.jsonl.gz``."""
    out: list[Record] = []
    for line in read_lines(path):
        r = json.loads(line)
        value = r["value"].encode() if "value" in r else base64.b64decode(r["value_base64"])
        out.append((value, r["timestamp"]))
    return out


def record_line(value: bytes, timestamp: int) -> str:
    """One line of ``events.jsonl.gz``."""
    try:
        body = {"timestamp": timestamp, "value": value.decode("utf-8")}
    except UnicodeDecodeError:
        body = {"timestamp": timestamp, "value_base64": base64.b64encode(value).decode()}
    return json.dumps(body, separators=(",", ":"))


@dataclass
class Outputs:
    """The reference's outputs of a log, as the lines of the expected files."""

    dead_letters: list[str]
    rows: list[str]
    examples: list[str]


def reference(records: list[Record], values: Values,
              now_ms: int = NOW_MS) -> Outputs:
    """What the job must write for ``records``, one pass in arrival order: the dead letters
    (``decode_event``'s reason, or ``late`` as the label join decides), every row and every
    example of ``ExampleBuilder.step`` (duplicates are dropped without a dead letter)."""
    settings = settings_of(values)
    builder = ExampleBuilder(settings)
    out = Outputs([], [], [])

    def reject(value: bytes, reason: str, detail: str) -> None:
        letter = dead_letter(value, reason, detail, source(str(values["topic_events"])))
        out.dead_letters.append(letter.decode())

    for value, _ in records:
        try:
            event = decode_event(value, now_ms=now_ms, min_time_ms=settings.min_event_time_ms,
                                 max_future_ms=settings.max_future_ms,
                                 max_bytes=settings.max_event_bytes)
        except DecodeError as err:
            reject(value, err.reason, err.detail)
            continue
        if builder.joiner.rejects(event) == "late":
            reject(value, "late", f"event_time {event.event_time} is more than "
                   f"{settings.allowed_lateness_ms} ms behind the watermark "
                   f"{builder.joiner.watermark}")
        rows, examples = builder.step(event)
        out.rows += [encode_row(r)[1].decode() for r in rows]
        out.examples += [encode_example(x).decode() for x in examples]
    out.examples += [encode_example(x).decode() for x in builder.flush()]
    return out


def load(case: str) -> tuple[Values, int, list[Record]]:
    """A committed case: its settings, ``now_ms`` and records."""
    d = GOLDEN / case
    values = json.loads((d / "settings.json").read_text())
    now_ms = values.pop("now_ms")
    return values, now_ms, read_records(d / "events.jsonl.gz")


def write(case: str, values: Values, records: list[Record]) -> None:
    """Write a case's inputs and the reference's outputs."""
    d = GOLDEN / case
    d.mkdir(exist_ok=True)
    (d / "settings.json").write_text(json.dumps(values | {"now_ms": NOW_MS}, indent=1) + "\n")
    _lines(d / "events.jsonl.gz", (record_line(v, t) for v, t in records))
    out = reference(records, values)
    for name in FILES:
        _lines(d / f"{name}.jsonl.gz", getattr(out, name))


def _lines(path: Path, lines: Iterable[str]) -> None:
    text = "".join(f"{line}\n" for line in lines).encode()
    path.write_bytes(gzip.compress(text, compresslevel=9, mtime=0))


def main() -> None:
    """Regenerate every case."""
    for case, make in (("messy", messy_records), ("taobao", taobao_records)):
        values = case_settings(case)
        write(case, values, make(settings_of(values)))
        sizes = {p.name: p.stat().st_size for p in sorted((GOLDEN / case).iterdir())}
        print(case, sizes)


if __name__ == "__main__":
    main()
