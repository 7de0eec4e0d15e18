"""Outages on a stack of this module's own (Kafka and Redis on free loopback ports, a fresh run
directory, stopped by pid at the end), each test printing its figures (``pytest -s``):

* **broker**: Kafka SIGKILLed for :data:`OUTAGE_S` while a producer sends :data:`PROBES` probe
  events; after ``stack up`` restarts it, every event the producer accepted is on ``events``
  exactly once, and none failed;
* **Redis**: Redis SIGKILLed under a scorer: ``/rank`` keeps answering, at once and marked
  ``degraded``, and stops being degraded once ``stack up`` has restarted Redis;
* **garbage on model.deltas**: random bytes, empty, truncated, tampered and foreign-key updates
  leave the scorer on its version; the genuine update after them is applied.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import statistics
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from confluent_kafka import Consumer

from config import Settings
from connectors.events import Event, decode_event
from connectors.kafka_config import consumer_config
from connectors.producer import EventProducer
from features.store import apply_repo
from jobs import processes
from models.delta import decode_message, encode_delta, hmac_key
from streamrank import stack
from streamrank.scorer_process import ScorerProcess, start_scorer
from tests.integration.test_scorer import Trainer, rank
from tests.integration.test_stack import free_ports, processes_of

pytestmark = pytest.mark.integration

PROBES = 300
"""Probe events of the broker outage, one every :data:`PROBE_GAP_S`."""
PROBE_GAP_S = 0.1
OUTAGE_S = 20.0
"""How long the broker, then Redis, stays dead."""
REQUESTS = 50
"""``/rank`` requests while Redis is dead."""
BODY = {"user_id": "u1", "items": ["i1", "i2", "i3"]}


@pytest.fixture(scope="module")
def private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A stack of its own (free ports, fresh run directory), stopped by pid at the end."""
    kafka, controller, redis_port = free_ports(3)
    run_dir = tmp_path_factory.mktemp("outages") / "run"
    settings = Settings(run_dir=run_dir, kafka_bootstrap=f"127.0.0.1:{kafka}",
                        kafka_controller_port=controller,
                        redis_url=f"redis://127.0.0.1:{redis_port}/0",
                        hash_buckets=10_007, embedding_dim=8, snapshot_every=10, dense_every=1,
                        delta_hmac_key="delta-key")
    stack.up(settings)
    try:
        yield settings
    finally:
        stack.down(settings)
        assert processes_of(run_dir) == []


def kill(settings: Settings, service: str) -> int:
    """SIGKILL the stack's ``service`` (by its recorded pid) and reap it; returns the pid."""
    pid = processes.read_pid(settings, service)
    assert pid is not None, f"{service} is not running"
    os.kill(pid, signal.SIGKILL)
    while processes.alive(pid):
        time.sleep(0.05)
    return pid


def probe(k: int, tag: str) -> Event:
    return Event(event_id=f"probe-{tag}-{k}", event_type="click", user_id=f"probe-{k % 100}",
                 item_id=f"item-{k % 37}", event_time=time.time_ns() // 1_000_000)


def event_ids(settings: Settings) -> list[str]:
    """The ids of every event on ``events`` (read until 5 s pass without a record)."""
    consumer = Consumer(consumer_config(settings, f"outage-check-{uuid.uuid4().hex[:6]}"))
    consumer.subscribe([settings.topic_events])
    ids: list[str] = []
    try:
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < 5.0:
            batch = [m for m in consumer.consume(1000, 0.5) if not m.error()]
            if batch:
                quiet_since = time.monotonic()
            ids += [decode_event(m.value() or b"").event_id for m in batch]
    finally:
        consumer.close()
    return ids


def test_a_broker_killed_for_20_s_loses_no_accepted_event(private: Settings) -> None:
    settings, tag = private, uuid.uuid4().hex[:6]
    producer = EventProducer(settings)
    killed_at = restarted_at = 0.0
    for k in range(PROBES):
        if k == PROBES // 3:
            kill(settings, "kafka")
            killed_at = time.monotonic()
        producer.send(probe(k, tag))
        time.sleep(PROBE_GAP_S)
    time.sleep(max(0.0, killed_at + OUTAGE_S - time.monotonic()))
    restarted_at = time.monotonic()
    assert stack.up(settings)["kafka"] == "started"
    up_s = time.monotonic() - restarted_at
    producer.flush(120)  # raises if any record failed
    delivered_s = time.monotonic() - restarted_at
    ids = [i for i in event_ids(settings) if i.startswith(f"probe-{tag}-")]
    print(f"\nbroker outage {restarted_at - killed_at:.1f} s: {PROBES} probes sent, "
          f"{producer.delivered} accepted, {producer.failed} failed, {len(ids)} on events "
          f"({len(set(ids))} distinct); broker up {up_s:.1f} s and every probe delivered "
          f"{delivered_s:.1f} s after the restart")
    assert (producer.delivered, producer.failed) == (PROBES, 0)
    assert sorted(ids) == sorted(f"probe-{tag}-{k}" for k in range(PROBES))


@pytest.fixture(scope="module")
def served(private: Settings, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[Trainer, ScorerProcess]]:
    """A trainer publishing to the stack and a scorer following it, on a version."""
    apply_repo(private)
    trainer = Trainer(private)
    scorer = start_scorer(private, tmp_path_factory.mktemp("outage-scorer") / "scorer.log")
    try:
        version = trainer.step()
        wait(f"the scorer on version {version}", lambda: scorer.version() == version, 60)
        yield trainer, scorer
    finally:
        scorer.stop()
        trainer.channel.flush()


def wait(what: str, check, timeout_s: float) -> float:  # noqa: ANN001
    """Poll ``check`` until true; returns the seconds it took (fails after ``timeout_s``)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        with contextlib.suppress(httpx.HTTPError):
            if check():
                return time.monotonic() - started
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def test_ranking_without_redis_answers_degraded_at_once_and_recovers(
        private: Settings, served: tuple[Trainer, ScorerProcess]) -> None:
    _, scorer = served
    assert rank(scorer, BODY).json()["degraded"] is False
    kill(private, "redis")
    killed_at = time.monotonic()
    latencies: list[float] = []
    degraded = 0
    while len(latencies) < REQUESTS:
        started = time.monotonic()
        answer = rank(scorer, BODY)
        latencies.append(1000 * (time.monotonic() - started))
        assert answer.status_code == 200, answer.text
        degraded += answer.json()["degraded"] is True
        time.sleep(max(0.0, OUTAGE_S / REQUESTS - latencies[-1] / 1000))
    restarted_at = time.monotonic()
    assert stack.up(private)["redis"] == "started"
    recovered_s = wait("ranking no longer degraded",
                       lambda: rank(scorer, BODY).json()["degraded"] is False, 60)
    print(f"\nRedis outage {restarted_at - killed_at:.1f} s: {REQUESTS} /rank requests, "
          f"{REQUESTS} answered 200, {degraded} degraded; latency median "
          f"{statistics.median(latencies):.1f} ms, max {max(latencies):.1f} ms; not degraded "
          f"{recovered_s:.1f} s after the restart")
    assert degraded == REQUESTS


def garbage(trainer: Trainer, genuine: bytes, rng: random.Random) -> dict[str, bytes]:
    """Bad updates made from ``genuine`` (the next delta) or from nothing, by kind."""
    tampered = bytearray(genuine)
    tampered[8 + int.from_bytes(tampered[:8], "little") + 3] ^= 0xFF  # a tensor byte
    update = decode_message(genuine, hmac_key(trainer.settings))
    return {
        "random bytes": rng.randbytes(4096),
        "empty": b"",
        "truncated": genuine[: len(genuine) // 2],
        "tampered": bytes(tampered),
        "signed with another key": encode_delta(update, b"another-key"),
    }


def test_garbage_on_model_deltas_leaves_the_scorer_on_its_version(
        private: Settings, served: tuple[Trainer, ScorerProcess]) -> None:
    trainer, scorer = served
    while (trainer.published[-1] + 1) % private.snapshot_every == 0:
        trainer.step()  # the next version must be a delta, not a snapshot
    good = trainer.published[-1]
    wait(f"the scorer on version {good}", lambda: scorer.version() == good, 60)
    trainer.learn()
    genuine = trainer.publisher.publish()
    bad = garbage(trainer, genuine[0], random.Random(26))
    for value in bad.values():
        trainer.channel.publish(private.model_id, value)
    trainer.channel.flush()
    time.sleep(2.0)
    held = scorer.version()
    answered = rank(scorer, BODY).json()["model_version"]
    rejected = [line for line in httpx.get(f"{scorer.url}/metrics", timeout=10).text.splitlines()
                if line.startswith("streamrank_model_updates_rejected_total")]
    newer = trainer.send(genuine)
    applied_s = wait(f"the scorer on version {newer}", lambda: scorer.version() == newer, 60)
    print(f"\ngarbage on model.deltas: {len(bad)} bad updates ({', '.join(bad)}); the scorer "
          f"stayed on version {held} (answered {answered}); rejected: "
          f"{'; '.join(rejected)}; the genuine update after them applied in {applied_s:.1f} s")
    assert held == answered == good
    assert sum(float(line.rsplit(" ", 1)[1]) for line in rejected) == len(bad)
    assert scorer.proc.poll() is None
