"""The Feast writer on the real broker and Redis: rows from ``features.rows`` read back through
Feast's ``get_online_features``, bad records dead-lettered, offsets committed only after the
writes, a restart (also after a SIGKILL) resuming from them, and the offline log holding every
row once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from confluent_kafka import Consumer, TopicPartition
from redis import Redis

from config import Settings, settings_env
from connectors.admin import delete_topics, end_offsets, ensure_topics, topic_specs
from connectors.feature_rows import encode_row
from connectors.kafka_config import consumer_config
from connectors.producer import TopicProducer
from features import writer_service
from features.rows import FeatureRow
from features.store import apply_repo, offline_dir, open_store
from features.verify import STORED, reference, row_differences
from features.writer_service import GROUP
from tests.shop_logs import spanning_log

pytestmark = pytest.mark.integration

REDIS_DB = 10


@pytest.fixture
def settings(live_stack: Settings, tmp_path: Path) -> Iterator[Settings]:
    tag = f"{time.time_ns():x}"
    redis = live_stack.redis_url.rsplit("/", 1)[0] + f"/{REDIS_DB}"
    s = live_stack.model_copy(update={
        "run_dir": tmp_path / "run", "redis_url": redis, "topic_events": f"ev-{tag}",
        "topic_dlq": f"dlq-{tag}", "topic_examples": f"ex-{tag}", "topic_deltas": f"de-{tag}",
        "topic_feature_rows": f"rows-{tag}", "feast_commit_ms": 0})
    ensure_topics(s)
    apply_repo(s)
    Redis.from_url(redis).flushdb()
    yield s
    delete_topics(s, list(topic_specs(s)))


def send(settings: Settings, rows: list[FeatureRow], extra: list[bytes] = ()) -> None:
    with TopicProducer(settings, settings.topic_feature_rows) as producer:
        for row in rows:
            key, value = encode_row(row)
            producer.send_raw(value, key)
        for raw in extra:
            producer.send_raw(raw, b'["user_features","broken"]')


def all_rows(settings: Settings) -> list[FeatureRow]:
    """Every row the reference emits for a small log, in order (many per key)."""
    from features.example_builder import ExampleBuilder

    builder, out = ExampleBuilder(settings), []
    for event in spanning_log(users=4, minutes=30, seed=3):
        out += builder.step(event)[0]
    return out


def dead_letters(settings: Settings) -> list[dict]:
    consumer = Consumer(consumer_config(settings, f"check-{time.time_ns()}"))
    consumer.subscribe([settings.topic_dlq])
    try:
        return [json.loads(m.value()) for m in consumer.consume(100, 5.0) if not m.error()]
    finally:
        consumer.close()


def offline_row_count(settings: Settings) -> int:
    return sum(pq.read_table(f).num_rows for view in STORED
               for f in (offline_dir(settings) / view).glob("*.parquet"))


def test_rows_read_back_through_feast_and_bad_records_are_dead_lettered(settings):
    rows = all_rows(settings)
    send(settings, rows, [b"{not json", b'{"view": "user_features"}'])
    run = writer_service.run(settings, bounded=True)

    last = {(r.view, r.key): r for r in rows}
    assert not row_differences(last, open_store(settings))
    assert run.messages == len(rows) + 2 and run.dead_letters == 2
    assert run.rows_written < len(rows)  # coalesced per key within each poll
    reasons = sorted(d["reason"] for d in dead_letters(settings))
    assert reasons == ["bad_json", "invalid_field"]
    assert offline_row_count(settings) == run.rows_written
    # offsets were committed: a second run finds nothing to do
    assert writer_service.run(settings, bounded=True).messages == 0


def test_a_restart_resumes_from_the_committed_offsets(settings):
    rows = all_rows(settings)
    half = len(rows) // 2
    send(settings, rows[:half])
    first = writer_service.run(settings, bounded=True)
    send(settings, rows[half:])
    second = writer_service.run(settings, bounded=True)

    assert (first.messages, second.messages) == (half, len(rows) - half)
    last = {(r.view, r.key): r for r in rows}
    assert not row_differences(last, open_store(settings))
    assert offline_row_count(settings) == first.rows_written + second.rows_written


def test_the_reference_of_a_log_reads_back_exactly(settings):
    events = spanning_log(users=6, minutes=40, seed=4)
    rows, _ = reference(events, settings)
    send(settings, list(rows.values()))
    writer_service.run(settings, bounded=True)
    assert not row_differences(rows, open_store(settings), tol=0.0)


def test_killed_at_any_moment_a_restarted_writer_ends_with_the_same_values(settings, tmp_path):
    rows = [FeatureRow("item_features", (f"i{k % 5_000}",),
                       {"i_impressions_24h": float(k), "i_clicks_1h": 0.0, "i_clicks_24h": 1.0,
                        "i_purchases_24h": 0.0, "i_ctr": 0.5, "i_cvr": 0.25,
                        "i_secs_since_last": 3.0}, 1_000 + k) for k in range(80_000)]
    send(settings, rows)
    with (tmp_path / "writer.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "jobs", "run", "writer"], stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **settings_env(settings)})
    deadline = time.monotonic() + 120
    while committed_rows(settings) == 0:
        assert proc.poll() is None and time.monotonic() < deadline, (
            (tmp_path / "writer.log").read_text())
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert committed_rows(settings) < len(rows), "killed too late to be mid-stream"

    writer_service.run(settings, bounded=True)
    last = {(r.view, r.key): r for r in rows}
    assert not row_differences(last, open_store(settings))


def committed_rows(settings: Settings) -> int:
    """Offsets the writer's group has committed, over all partitions."""
    consumer = Consumer(consumer_config(settings, GROUP, **{"enable.auto.commit": False}))
    try:
        parts = [TopicPartition(settings.topic_feature_rows, p)
                 for p in end_offsets(settings, settings.topic_feature_rows)]
        return sum(max(tp.offset, 0) for tp in consumer.committed(parts, timeout=10))
    finally:
        consumer.close()
