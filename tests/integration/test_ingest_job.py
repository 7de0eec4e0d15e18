"""The ingest job against the real broker and a real Flink MiniCluster, run detached.

One scenario (PyFlink start-up costs seconds, so it is paid once): bad records of every kind
reach the DLQ topic with their reason and original bytes, a late event is dead-lettered as
``late``, valid events are counted, the job keeps running, and stopping it leaves nothing.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from confluent_kafka import Consumer, Producer

from connectors.admin import delete_topics, ensure_topics
from connectors.kafka_config import consumer_config
from jobs.launch import run_job, running_pid, stop_job
from streamrank.config import Settings
from tests.integration.child_jobs import wait_for

pytestmark = pytest.mark.integration



@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    tag = uuid.uuid4().hex[:10]
    s = Settings(topic_events=f"events-{tag}", topic_dlq=f"events.dlq-{tag}", run_dir=tmp_path,
                 events_partitions=1, job_parallelism=1, max_out_of_orderness_ms=0,
                 allowed_lateness_ms=1_000)
    ensure_topics(s, {s.topic_events: 1, s.topic_dlq: 1})
    yield s
    stop_job("ingest", s, timeout_s=10)
    delete_topics(s, [s.topic_events, s.topic_dlq])


def event(n: int, t: int, **fields: Any) -> bytes:
    body = {"event_id": f"e{n}", "event_type": "click", "user_id": f"u{n % 3}",
            "item_id": f"i{n}", "event_time": t, **fields}
    return json.dumps(body).encode()


def stats(settings: Settings) -> dict[str, Any]:
    path = settings.run_dir / "metrics" / "ingest.json"
    return json.loads(path.read_text())["counts"] if path.exists() else {}


def test_ingest_job_dead_letters_bad_and_late_records_and_counts_valid_ones(
        settings: Settings) -> None:
    t = int(time.time() * 1000)
    invalid = {
        b'{"event_id": "x",': "bad_json",
        b"\xff\xfe not utf-8": "bad_json",
        json.dumps({"event_id": "m", "event_type": "click", "item_id": "i",
                    "event_time": t}).encode(): "invalid_field",  # no user_id
        event(101, t, user_id=123): "invalid_field",
        event(102, t, event_time=str(t)): "invalid_field",
        event(103, t, event_type="teleport"): "invalid_field",
        event(104, 15): "absurd_time",
        event(105, t, query="q" * 17_000): "oversize",
        b"[1, 2, 3]": "invalid_field",
    }
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})

    def send(values: list[bytes], ts: int) -> None:
        for v in values:
            producer.produce(settings.topic_events, v, b"k", timestamp=ts)
        assert producer.flush(10) == 0

    run = run_job("ingest", settings, detach=True)
    assert run.pid == running_pid("ingest", settings)
    # The source starts at the earliest offset of its new group: no need to wait for start-up.
    send([event(n, t + n) for n in range(5)] + list(invalid), t)
    wait_for("5 valid events counted", lambda: stats(settings).get("valid") == 5)

    # Advance the watermark to t + 10 s, then send an event 10 s behind it (lateness 1 s).
    send([event(200, t + 10_000)], t + 10_000)
    wait_for("the 6th valid event", lambda: stats(settings).get("valid") == 6)
    time.sleep(0.6)  # the source emits watermarks every 200 ms
    late = event(201, t)
    send([late], t)

    expected = {**invalid, late: "late"}
    consumer = Consumer(consumer_config(settings, f"test-{uuid.uuid4().hex}"))
    consumer.subscribe([settings.topic_dlq])
    letters: list[dict[str, Any]] = []

    def read_letters(timeout_s: float) -> bool:
        for m in consumer.consume(100, timeout_s):
            assert m.error() is None, m.error()
            letters.append(json.loads(cast(bytes, m.value())))
        return len(letters) >= len(expected)

    try:
        wait_for(f"{len(expected)} dead letters", lambda: read_letters(0.5))
        read_letters(1.0)  # and no more than those
    finally:
        consumer.close()

    def original(letter: dict[str, Any]) -> bytes:
        if letter["original_encoding"] == "hex":
            return bytes.fromhex(letter["original"])
        return letter["original"].encode()

    got = {original(letter): letter["reason"] for letter in letters}
    assert len(letters) == len(expected), [letter["detail"] for letter in letters]
    assert got == expected
    assert all(letter["source"].startswith(f"{settings.topic_events} timestamp=")
               for letter in letters)
    late_letter = next(letter for letter in letters if letter["reason"] == "late")
    assert "behind the watermark" in late_letter["detail"]

    send([event(300 + n, t + 10_000 + n) for n in range(20)], t + 10_000)
    counts = wait_for("26 valid events counted",
                      lambda: (c := stats(settings)).get("valid") == 26 and c)
    assert counts["invalid"] == len(expected)
    assert counts["reason.late"] == 1 and counts["reason.bad_json"] == 2
    assert running_pid("ingest", settings) == run.pid

    assert stop_job("ingest", settings)
    assert running_pid("ingest", settings) is None
    with pytest.raises(ProcessLookupError):
        os.killpg(run.pid, signal.SIGCONT)  # nothing is left of its process group
