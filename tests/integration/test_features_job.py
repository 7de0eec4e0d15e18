"""The ``features`` job (Java operators) against the pure Python reference, end to end:
real Kafka, a real Flink MiniCluster, the job run as ``streamrank job run features``.

For each log, one pass over the records in the order they were produced gives what the job
must write: the dead letters (:func:`connectors.events.decode_event`'s reason, or ``late`` /
duplicate as :class:`features.labels.LabelJoiner` decides), and the feature rows (coalesced
per key as the Feast writer does: newest event time wins) and examples of
:meth:`features.example_builder.ExampleBuilder.step`. The job's outputs must equal them: DLQ reasons and
originals in order, every row (counts exactly, floats to 1e-9, lists exactly), every example
(with its price and recent clicked items and categories) as a set by ``example_id``.

Logs: a generated one with duplicated event ids, events out of order within the lateness,
events past it, bad records of many kinds, and users whose events span many attribution
windows; and the whole Taobao sample through the impression rule (marked ``full_sample``,
minutes: ``pytest -m full_sample``; not in the default run). The events topic has one
partition, so the job sees the log's order (see the job's docstring). A run over the first
``RESTORE_ROWS`` rows of the sample killed (SIGKILL) after two checkpoints and restored ends
with the same outputs (rows and examples at least once: identical copies allowed).
"""

from __future__ import annotations

import itertools
import json
import math
import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from confluent_kafka import Consumer

from config import Settings
from connectors.admin import delete_topics, end_offsets, ensure_topics
from connectors.errors import DecodeError
from connectors.events import Event, decoder, encode_event
from connectors.kafka_config import consumer_config
from connectors.logs import read_log
from connectors.producer import EventProducer
from connectors.training_examples import TrainingExample, decode_example
from features.example_builder import ExampleBuilder
from features.impressions import with_impressions
from features.writer import Coalescer
from jobs.features import JOB
from tests.integration.child_jobs import ChildJob

pytestmark = pytest.mark.integration

T0 = 1_700_000_000_000
RESTORE_ROWS = 20_000
"""Rows of the sample the kill/restore test replays: enough for a kill mid-stream."""

BASE = ('"event_id":"bad{n}","event_type":"click","user_id":"u0","item_id":"i0",'
        '"event_time":{t}')
BAD_RECORDS: list[str] = [
    "[1]", '"x"', "null", "", "{", "{BASE}} x", "{BASE},}", "{'a':1}", "{BASE},\"position\":01}",
    "{BASE},\"position\":2.5}", "{BASE},\"position\":-1}", "{BASE},\"position\":\"1e2\"}",
    "{BASE},\"price\":NaN}", "{BASE},\"price\":\"abc\"}", "{BASE},\"price\":-1}",
    "{BASE},\"synthetic\":null}", "{BASE},\"synthetic\":2}", "{BASE},\"synthetic\":\" true\"}",
    "{BASE},\"event_time\":1.5e12}", "{BASE},\"event_time\":\"5\"}",
    "{BASE},\"event_time\":true}", "{BASE},\"event_time\":-1}", "{BASE},\"event_time\":5}",
    "{BASE},\"event_time\":9999999999999999}",
    "{BASE},\"event_time\":99999999999999999999999}", "{BASE},\"event_id\":5}",
    "{BASE},\"event_id\":\"\"}", "{BASE},\"event_type\":\"Click\"}",
    "{BASE},\"user_id\":\"\\ud800\"}",
    "{BASE},\"request_id\":\"" + "r" * 129 + "\"}", "{BASE},\"query\":[1]}",
    '{"event_type":"click"}', "{BASE},\"item_id\":null}", "{BASE},\"category_id\":7}",
    "{BASE},\"x\":\"" + "y" * 17_000 + "\"}",
]
"""Invalid records (``{BASE}`` opens a valid event's object); valid look-alikes follow."""
ODD_VALID: list[str] = [
    "{BASE},\"position\":\"2\"}", "{BASE},\"position\":2.0}", "{BASE},\"position\":true}",
    "{BASE},\"price\":\"1.5\"}", "{BASE},\"price\":Infinity}", "{BASE},\"synthetic\":\"no\"}",
    "{BASE},\"synthetic\":0}", "{BASE},\"x\":[1,2,{\"y\":NaN}]}", "  {BASE}}  ",
    "{BASE},\"user_id\":\"\\u00e9\\ud83d\\ude00\"}", "{BASE},\"category_id\":null}",
]


@dataclass
class Log:
    """Records in produce order: (value bytes, Kafka key, Kafka timestamp)."""

    records: list[tuple[bytes, bytes, int]] = field(default_factory=list)

    def add_event(self, event: Event) -> None:
        self.records.append((encode_event(event), event.user_id.encode(), event.event_time))


def generated_log(seed: int = 3) -> Log:
    """Six users over ~6 hours: requests of three impressions, clicks (with and without the
    request), purchases and other events, some out of order within the lateness, some sent
    twice, some too late, and bad records."""
    rng = random.Random(seed)
    users, items = [f"u{k}" for k in range(6)], [f"i{k}" for k in range(10)]
    categories = ["c0", "c1", "c2", None]
    category_of = {i: categories[k % 4] for k, i in enumerate(items)}
    events: list[Event] = []
    t, n = T0, 0

    def ev(kind: str, user: str, item: str, at: int, **kw: object) -> Event:
        nonlocal n
        n += 1
        return Event(event_id=f"e{n}", event_type=kind, user_id=user, item_id=item,
                     category_id=category_of[item], event_time=at, **kw)

    while t < T0 + 6 * 3_600_000:
        t += rng.randrange(0, 12_000)
        user = rng.choice(users)
        r = rng.random()
        if r < 0.35:
            request = f"r{n}"
            shown = rng.sample(items, 3)
            for position, item in enumerate(shown):
                events.append(ev("impression", user, item, t, request_id=request,
                                 position=position, synthetic=rng.random() < 0.3,
                                 price=rng.choice([None, 9.99, 12.0, 0.1 + 0.2])))
            if rng.random() < 0.5:  # a click on one of them, within the window or past it
                delay = rng.choice([rng.randrange(1, 30_000), rng.randrange(500_000, 700_000)])
                events.append(ev("click", user, rng.choice(shown), t + delay,
                                 request_id=request))
        elif r < 0.55:
            events.append(ev("click", user, rng.choice(items), t))
        elif r < 0.65:
            events.append(ev("purchase", user, rng.choice(items), t))
        else:
            events.append(ev(rng.choice(["add_to_cart", "favourite", "search"]), user,
                             rng.choice(items), t))
    events.sort(key=lambda e: e.event_time)
    # out of order: some events arrive up to 4 s (within the out-of-orderness) or 30 s (within
    # the allowed lateness) after later ones
    for k in range(len(events) - 1, 0, -1):
        if rng.random() < 0.08:
            lag = rng.choice([4_000, 30_000])
            j = k
            while j + 1 < len(events) and events[j + 1].event_time - events[k].event_time < lag:
                j += 1
            events.insert(j, events.pop(k))
    log = Log()
    latest = 0
    for k, e in enumerate(events):
        log.add_event(e)
        latest = max(latest, e.event_time)
        if rng.random() < 0.03:  # sent twice (a producer retry)
            log.add_event(e)
        if rng.random() < 0.01:  # far behind the watermark: dead-lettered as late
            log.add_event(e.model_copy(update={"event_id": f"late{k}",
                                               "event_time": latest - 300_000}))
        if k % 60 == 0:
            text = rng.choice(BAD_RECORDS + ODD_VALID)
            value = text.replace("{BASE}", "{" + BASE.format(n=k, t=latest - 1))
            log.records.append((value.encode(), b"u0", latest - 1))
        if k % 500 == 0:
            log.records.append((b"\xff\xfe{not utf-8", b"u0", latest - 1))
    return log


def taobao_log(sample: Path, rows: int | None = None) -> Log:
    """The Taobao sample (its first ``rows`` rows, or all of it) with the impression rule
    applied."""
    settings = Settings()
    raw, _ = read_log(sample, "taobao", settings=settings)
    log = Log()
    for event in with_impressions(itertools.islice(raw, rows), settings):
        log.add_event(event)
    return log


@dataclass
class Expected:
    dead_letters: list[tuple[str, str]]
    rows: dict[tuple[str, tuple[str, ...]], tuple[int, dict]]
    examples: dict[str, TrainingExample]


_REFERENCES: dict[int, Expected] = {}


def reference(log: Log, settings: Settings) -> Expected:
    """What the job must write for ``log``, from the pure Python code (one pass, in order);
    computed once per log (the settings that matter, lateness and windows, are the defaults
    in every test here)."""
    if id(log) not in _REFERENCES:
        _REFERENCES[id(log)] = _reference(log, settings)
    return _REFERENCES[id(log)]


def _reference(log: Log, settings: Settings) -> Expected:
    decode = decoder(settings)
    builder, rows = ExampleBuilder(settings), Coalescer()
    dead: list[tuple[str, str]] = []
    examples: list[TrainingExample] = []
    for value, _, _ in log.records:
        try:
            event = decode(value)
        except DecodeError as err:
            dead.append((err.reason, value.decode("utf-8", "replace")))
            continue
        if builder.joiner.rejects(event) == "late":
            dead.append(("late", value.decode()))
        changed, finished = builder.step(event)
        for row in changed:
            rows.add(row)
        examples += finished
    examples += builder.flush()
    coalesced = {(r.view, r.key): (r.event_time_ms, r.values)
                 for by_view in rows.rows().values() for r in by_view}
    return Expected(dead, coalesced, {x.example_id: x for x in examples})


def read_topic(settings: Settings, topic: str, idle_s: float = 4.0) -> Iterator:
    """Every record of ``topic`` from the start, until none arrives for ``idle_s``."""
    consumer = Consumer(consumer_config(settings, f"check-{uuid.uuid4().hex[:6]}"))
    consumer.subscribe([topic])
    try:
        last = time.monotonic()
        while time.monotonic() - last < idle_s:
            for m in consumer.consume(1000, 0.5):
                if not m.error():
                    last = time.monotonic()
                    yield m
    finally:
        consumer.close()


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def assert_rows_equal(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key, (t, values) in want.items():
        got_t, got_values = got[key]
        assert got_t == t, key
        assert got_values.keys() == values.keys(), key
        for name, v in values.items():
            ok = got_values[name] == v if isinstance(v, list) else close(got_values[name], v)
            assert ok, (key, name, got_values[name], v)


def assert_examples_equal(got: list[TrainingExample], want: dict[str, TrainingExample],
                          once: bool = True) -> None:
    """``got`` holds exactly ``want``'s examples; each once, or (``once=False``, after a
    restore: the sink is at least once) possibly more than once, as identical copies."""
    assert {x.example_id for x in got} == want.keys()
    if once:
        assert len(got) == len(want)
    assert sum(x.click for x in got) > 0
    for x in got:
        w = want[x.example_id]
        assert x.model_dump(exclude={"features"}) == w.model_dump(exclude={"features"}), x
        assert list(x.features) == list(w.features)
        bad = {k: (x.features[k], v) for k, v in w.features.items() if not close(x.features[k], v)}
        assert not bad, (x.example_id, bad)


@pytest.fixture
def fast_settings(live_stack: Settings, tmp_path: Path) -> Iterator[Settings]:
    """Fresh topics (``events`` with one partition) and a private run directory."""
    tag = uuid.uuid4().hex[:8]
    settings = live_stack.model_copy(update={
        "topic_events": f"events-{tag}", "topic_dlq": f"events.dlq-{tag}",
        "topic_examples": f"training.examples-{tag}", "topic_feature_rows": f"rows-{tag}",
        "events_partitions": 1, "run_dir": tmp_path / "run",
        "features_checkpoint_interval_ms": live_stack.checkpoint_interval_ms})
    specs = {settings.topic_events: 1, settings.topic_dlq: 1, settings.topic_examples: 1,
             settings.topic_feature_rows: 1}
    ensure_topics(settings, specs)
    yield settings
    delete_topics(settings, list(specs))


def produce(settings: Settings, log: Log) -> None:
    with EventProducer(settings) as producer:
        for value, key, ts in log.records:
            producer.send_raw(value, key, ts)


def run_and_compare(settings: Settings, log: Log, child_jobs: Callable[..., ChildJob]) -> None:
    produce(settings, log)
    child_jobs(JOB, settings, "--bounded").finish()
    assert_outputs_equal(settings, log)


def assert_outputs_equal(settings: Settings, log: Log, once: bool = True) -> None:
    """The job's DLQ, rows and examples equal the reference's (``once``: each output record
    exactly once; else at least once)."""
    want = reference(log, settings)
    dead = [json.loads(m.value()) for m in read_topic(settings, settings.topic_dlq)]
    if once:
        assert [d["reason"] for d in dead] == [r for r, _ in want.dead_letters]
        for d, (_, original) in zip(dead, want.dead_letters):
            if d["original_encoding"] == "utf-8":
                assert d["original"] == original
            assert d["source"] == settings.topic_events  # partition and offset unknown there
    else:
        assert {(d["reason"], d["original"]) for d in dead} == set(want.dead_letters)

    got_rows: dict = {}
    for m in read_topic(settings, settings.topic_feature_rows):
        row = json.loads(m.value())
        key = (row["view"], tuple(row["key"]))
        assert json.loads(m.key()) == [row["view"], *row["key"]]
        if key not in got_rows or row["event_time_ms"] >= got_rows[key][0]:
            got_rows[key] = (row["event_time_ms"], row["values"])
    assert_rows_equal(got_rows, want.rows)

    examples = [decode_example(m.value()) for m in read_topic(settings, settings.topic_examples)]
    assert_examples_equal(examples, want.examples, once)


def test_generated_log_equals_the_reference(
        fast_settings: Settings, child_jobs: Callable[..., ChildJob]) -> None:
    log = generated_log()
    want = reference(log, fast_settings)
    reasons = {r for r, _ in want.dead_letters}
    assert {"late", "bad_json", "invalid_field", "absurd_time", "oversize"} <= reasons
    run_and_compare(fast_settings, log, child_jobs)


@pytest.mark.full_sample
def test_whole_taobao_sample_equals_the_reference(
        fast_settings: Settings, child_jobs: Callable[..., ChildJob]) -> None:
    run_and_compare(fast_settings, taobao_log(Settings().sample_log), child_jobs)


def test_killed_mid_stream_and_restored_it_ends_with_the_same_outputs(
        fast_settings: Settings, child_jobs: Callable[..., ChildJob]) -> None:
    log = taobao_log(Settings().sample_log, rows=RESTORE_ROWS)
    produce(fast_settings, log)
    # unbounded, so that it cannot finish before it is killed; mid-stream: rows written
    # already, then two more checkpoints (on a loaded machine the first checkpoints can come
    # before the source has read anything)
    run = child_jobs(JOB, fast_settings)
    run.wait_for("feature rows", lambda: sum(
        end_offsets(fast_settings, fast_settings.topic_feature_rows).values()) > 0)
    first = max(run.checkpoint_id(), 0)
    run.wait_for("two checkpoints", lambda: run.checkpoint_id() >= first + 2)
    assert run.proc.poll() is None, "the run ended before it could be killed mid-stream"
    run.kill()
    rows_before = sum(1 for _ in read_topic(fast_settings, fast_settings.topic_feature_rows, 2.0))
    assert rows_before > 0

    child_jobs(JOB, fast_settings, "--bounded", "--restore").finish()
    assert_outputs_equal(fast_settings, log, once=False)
