"""The features job end to end: real Kafka, a real Flink MiniCluster, the Feast writer, Feast on
the real Redis, against the pure reference.

Each log goes into fresh topics; the job runs as ``python -m jobs run features --bounded`` in a
child process, then the Feast writer drains ``features.rows`` into Feast. Every row the
reference (:func:`features.verify.reference`) ends with must read back through Feast's
``get_online_features`` with the same values, and ``training.examples`` must hold exactly the
reference's examples (counts exactly, floats to 1e-9). The Feast online store is a Redis
database of its own (``REDIS_DB``), so other runs that write the same keys do not interfere.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path

import pytest
from confluent_kafka import Consumer
from redis import Redis

from connectors.admin import delete_topics, ensure_topics, topic_specs
from connectors.events import Event
from connectors.examples import TrainingExample, decode_example
from connectors.kafka_config import consumer_config
from connectors.logs import read_log
from connectors.producer import EventProducer
from features.examples import ExampleBuilder
from features.impressions import with_impressions
from features.store import apply_repo, open_store
from features.verify import example_differences, reference, row_differences
from jobs import feast_writer
from jobs.features_job import JOB
from jobs.runtime import read_stats
from streamrank.config import Settings
from tests.integration.child_jobs import ChildJob
from tests.shop_logs import messy_log, spanning_log

pytestmark = pytest.mark.integration

SAMPLE_ROWS = 1_000
RESTORE_ROWS = 2_000
REDIS_DB = 9


def sample_events(rows: int, tmp: Path) -> list[Event]:
    """The first ``rows`` rows of the Taobao sample with the impression rule applied."""
    settings = Settings()
    head = tmp / "head.csv"
    with settings.sample_log.open() as src:
        head.write_text("".join(islice(src, rows)))
    raw, _ = read_log(head, "taobao", settings=settings)
    return list(with_impressions(raw, settings))


def private(settings: Settings, tmp_path: Path) -> Settings:
    """A private run directory (checkpoints, Feast registry) and Redis database, Feast applied."""
    redis = settings.redis_url.rsplit("/", 1)[0] + f"/{REDIS_DB}"
    settings = settings.model_copy(update={"run_dir": tmp_path / "run", "redis_url": redis,
                                           "checkpoint_interval_ms": 1_000})
    apply_repo(settings)
    Redis.from_url(redis).flushdb()
    return settings


@pytest.fixture
def job_settings(topics: Settings, tmp_path: Path) -> Settings:
    """Fresh topics (4 partitions), a private run directory and Redis database."""
    return private(topics, tmp_path)


@pytest.fixture
def one_partition(live_stack: Settings, tmp_path: Path) -> Iterator[Settings]:
    """Like ``job_settings`` with one partition per topic: the job's watermark then follows
    the arrival order, as the reference's does, so that which events are late is the same."""
    tag = f"{time.time_ns():x}"
    settings = live_stack.model_copy(update={
        "events_partitions": 1, "topic_events": f"events-{tag}", "topic_dlq": f"dlq-{tag}",
        "topic_examples": f"examples-{tag}", "topic_deltas": f"deltas-{tag}",
        "topic_feature_rows": f"rows-{tag}"})
    ensure_topics(settings)
    yield private(settings, tmp_path)
    delete_topics(settings, list(topic_specs(settings)))


def produce(settings: Settings, events: list[Event]) -> None:
    with EventProducer(settings) as producer:
        producer.send_many(events)


def read_examples(settings: Settings, n: int) -> list[TrainingExample]:
    """The examples topic from the start: ``n`` records, then whatever follows within 3 s."""
    consumer = Consumer(consumer_config(settings, f"check-{time.time_ns()}"))
    consumer.subscribe([settings.topic_examples])
    out: list[TrainingExample] = []
    try:
        deadline = time.monotonic() + 60
        while len(out) < n and time.monotonic() < deadline:
            out += [decode_example(m.value()) for m in consumer.consume(1000, 1.0) if not m.error()]
        out += [decode_example(m.value()) for m in consumer.consume(1000, 3.0) if not m.error()]
    finally:
        consumer.close()
    return out


def assert_equals_reference(settings: Settings, events: list[Event]) -> list[TrainingExample]:
    """Drain the rows into Feast, then compare Feast and the examples topic with the
    reference; returns the records of the examples topic."""
    feast_writer.run(settings, bounded=True)
    rows, examples = reference(events, settings)
    assert rows and examples and sum(x.click for x in examples.values()) > 0
    bad = row_differences(rows, open_store(settings))
    assert not bad, f"{len(bad)} differences in Feast, first: {bad[:5]}"
    got = read_examples(settings, len(examples))
    bad = example_differences(examples, got)
    assert not bad, f"{len(bad)} differences in the examples, first: {bad[:5]}"
    return got


def test_bounded_run_equals_the_reference(
        job_settings: Settings, tmp_path: Path, child_jobs: Callable[..., ChildJob]) -> None:
    settings, events = job_settings, sample_events(SAMPLE_ROWS, tmp_path)
    produce(settings, events)
    child_jobs(JOB, settings, "--bounded").finish()

    counts = read_stats(JOB, settings)["counts"]
    assert counts.get("valid") == len(events) and not counts.get("invalid"), counts
    assert len(assert_equals_reference(settings, events)) == counts["examples"]


def test_users_whose_events_span_several_attribution_windows(
        job_settings: Settings, child_jobs: Callable[..., ChildJob]) -> None:
    # each user's partition is read in chunks, ahead of the other partitions and so of Flink's
    # watermark: examples must wait for the watermark (their item features come with it), not
    # for the user's own later events
    settings = job_settings
    events = spanning_log(users=16, minutes=60)
    span = max(e.event_time for e in events) - min(e.event_time for e in events)
    assert span > 3 * settings.attribution_window_ms
    produce(settings, events)
    child_jobs(JOB, settings, "--bounded").finish()

    counts = read_stats(JOB, settings)["counts"]
    assert counts.get("valid") == len(events), counts
    assert len(assert_equals_reference(settings, events)) == counts["examples"]


def test_duplicates_out_of_order_and_late_events_as_in_the_reference(
        one_partition: Settings, child_jobs: Callable[..., ChildJob]) -> None:
    settings = one_partition
    events = messy_log(spanning_log(users=16, minutes=60), lateness_ms=settings.allowed_lateness_ms)
    produce(settings, events)
    child_jobs(JOB, settings, "--bounded").finish()

    counts = read_stats(JOB, settings)["counts"]
    builder = ExampleBuilder(settings)
    for event in events:
        builder.add(event)
    want = builder.counters()
    assert want["duplicates"] > 10 and want["late_events"] > 10
    assert counts.get("reason.late") == want["late_events"], counts
    assert counts.get("duplicates") == want["duplicates"], counts
    assert len(assert_equals_reference(settings, events)) == counts["examples"]


def test_killed_mid_stream_and_restored_it_ends_with_the_same_values(
        job_settings: Settings, tmp_path: Path, child_jobs: Callable[..., ChildJob]) -> None:
    settings = job_settings
    events = sample_events(RESTORE_ROWS, tmp_path)
    produce(settings, events)
    # unbounded, so that it is still running when it is killed however fast it reads (a
    # bounded run can finish first on an idle machine); killed early, after a checkpoint
    run = child_jobs(JOB, settings)
    run.wait_for("an eighth of the events read",
                 lambda: read_stats(JOB, settings)["counts"].get("valid", 0) > len(events) // 8)
    seen = run.checkpoint_id()
    run.wait_for("a checkpoint after that", lambda: run.checkpoint_id() > seen)
    time.sleep(0.5)  # the source commits the checkpoint's offsets just after it completes
    assert run.proc.poll() is None, "the run ended before it could be killed mid-stream"
    run.kill()

    child_jobs(JOB, settings, "--bounded", "--restore").finish()
    counts = read_stats(JOB, settings)["counts"]
    assert 0 < counts.get("valid", 0) < len(events), counts  # it went on from the checkpoint
    # at least once on the topic; exactly the reference's set, each id with one value
    got = assert_equals_reference(settings, events)
    assert len(got) >= len({x.example_id for x in got})
