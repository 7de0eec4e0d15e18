"""The jobs on a standalone Flink session cluster (``streamrank cluster up``: one JobManager and
two TaskManagers on loopback, on free ports), submitted, stopped with a savepoint and resumed
at another parallelism as ``streamrank job submit|stop`` do it.

**features**: a log of the Taobao sample (through the impression rule, a few bad records
added) on ``events`` with two partitions, in three parts, one per run (:data:`RUNS`): at
parallelism 2 (subtasks on both TaskManagers, one partition per source subtask; the item
stage is one subtask, see :mod:`jobs.features`), stopped with a savepoint, resumed at
parallelism 1 on RocksDB (a canonical savepoint restores on any backend), stopped again,
resumed at parallelism 2 on the heap. After each part Feast's values (through the Feast writer
and ``get_online_features``), the examples and the dead letters equal the reference's for the
log so far, every example exactly once. Each part ends with a far-ahead event on each
partition, so that every impression of the part is finished on both sides. With several
partitions ``late`` is judged against each source subtask's own watermark, not the log's
(``docs/cluster.md``): this log has no late events, so the results are exact.

**training** at parallelism 1: examples learned, stopped with a savepoint, resumed with more:
every example learned exactly once, versions only going up, one chain a follower applies.

``cluster down`` at the end leaves no process of the cluster.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer
from redis import Redis
from typer.testing import CliRunner

from config import Settings, settings_env
from connectors.admin import delete_topics, end_offsets, ensure_topics
from connectors.errors import DecodeError
from connectors.events import Event, decoder, encode_event
from connectors.kafka_config import consumer_config, producer_config
from connectors.logs import read_log
from connectors.model_updates import ModelUpdateSubscriber
from connectors.training_examples import decode_example, encode_example
from features import writer_service
from features.example_builder import build_examples
from features.impressions import with_impressions
from features.store import apply_repo, open_store
from features.verify import example_differences, reference, row_differences
from jobs import processes
from jobs.launch import cancel_job
from jobs.metrics import FlinkRest
from jobs.training import status_path
from models.delta import hmac_key, read_metadata
from models.follower import ModelFollower, Status
from models.ranker import Ranker
from streamrank import cluster
from streamrank.cli import app
from tests.integration.child_jobs import wait_for

pytestmark = pytest.mark.integration

RUNS = ((2, "hashmap", 3_000), (1, "rocksdb", 1_500), (2, "hashmap", 1_500))
"""The features test's runs, each resumed from the savepoint of the one before: parallelism,
state backend, rows of the Taobao sample it gets."""
EXAMPLES = (2_000, 1_000)
"""Examples in the training test's two parts."""
REDIS_DB = 12
BAD = [b"{", b'{"event_type": "click"}', b"\xff\xfe not utf-8"]
"""Records that fail validation (sent to the first partition in the first part)."""
WAIT_S = 180.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cluster_processes(settings: Settings) -> list[int]:
    """Every process whose command line names the cluster's directory."""
    marker = str(cluster.home(settings)).encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return [pid for pid in found if processes.alive(pid)]


@pytest.fixture(scope="module")
def flink(live_stack: Settings, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Settings]:
    """Settings of a cluster started for this module (two TaskManagers, two slots each) on
    free loopback ports, with a run directory of its own; stopped by pid at the end."""
    settings = live_stack.model_copy(update={
        "run_dir": tmp_path_factory.mktemp("cluster") / "run",
        "flink_rest": f"127.0.0.1:{_free_port()}", "cluster_rpc_port": _free_port(),
        "cluster_taskmanagers": 2, "cluster_slots": 2})
    status, started = cluster.up(settings)
    assert started and status.ready and len(status.taskmanagers) == 2
    try:
        assert cli(settings, "cluster", "status") == settings.flink_rest
        yield settings
    finally:
        stopped = cluster.down(settings)
        assert set(stopped) == {status.jobmanager, *status.taskmanagers}
        assert _cluster_processes(settings) == []


@pytest.fixture
def fresh(flink: Settings) -> Iterator[Settings]:
    """Fresh topics (``events`` and the examples with two partitions), Redis database and
    run directory for one test; its jobs cancelled at the end."""
    tag = uuid.uuid4().hex[:8]
    settings = flink.model_copy(update={
        "run_dir": flink.run_dir.parent / tag,
        "redis_url": flink.redis_url.rsplit("/", 1)[0] + f"/{REDIS_DB}",
        "topic_events": f"events-{tag}", "topic_dlq": f"dlq-{tag}",
        "topic_examples": f"examples-{tag}", "topic_feature_rows": f"rows-{tag}",
        "topic_deltas": f"deltas-{tag}", "events_partitions": 2, "feast_commit_ms": 0,
        "checkpoint_interval_ms": 1_000, "features_checkpoint_interval_ms": 2_000})
    topics = {settings.topic_events: 2, settings.topic_dlq: 1, settings.topic_examples: 2,
              settings.topic_feature_rows: 2, settings.topic_deltas: 1}
    ensure_topics(settings, topics)
    Redis.from_url(settings.redis_url).flushdb()
    yield settings
    for name in ("features", "training"):
        with contextlib.suppress(LookupError):
            cancel_job(name, settings.flink_rest)
    delete_topics(settings, list(topics))


def cli(settings: Settings, *args: str) -> str:
    """``streamrank ARGS`` with ``settings`` in its environment: what it prints on standard
    output."""
    result = CliRunner().invoke(app, list(args), env=settings_env(settings))
    assert result.exit_code == 0, f"{result.stderr}{result.exception!r}"
    return result.stdout.strip()


def count(settings: Settings, topic: str) -> int:
    """Records on ``topic`` (the sum of its end offsets)."""
    return sum(end_offsets(settings, topic).values())


def read_all(settings: Settings, topic: str, n: int) -> list[bytes]:
    """The first ``n`` records of ``topic`` (all partitions)."""
    consumer = Consumer(consumer_config(settings, f"check-{uuid.uuid4().hex[:6]}"))
    consumer.subscribe([topic])
    values: list[bytes] = []
    try:
        deadline = time.monotonic() + 60
        while len(values) < n and time.monotonic() < deadline:
            values += [m.value() or b"" for m in consumer.consume(1000, 0.5) if not m.error()]
    finally:
        consumer.close()
    return values


def taobao_parts(settings: Settings) -> list[list[Event]]:
    """The sample's first rows through the impression rule, cut in the proportions of
    :data:`RUNS`; each part after the first moved in time to just after the closing events of
    the parts before it."""
    rows = [r for _, _, r in RUNS]
    raw, _ = read_log(settings.sample_log, "taobao", settings=settings)
    events = list(with_impressions(itertools.islice(raw, sum(rows)), settings))
    cuts = [len(events) * sum(rows[:k]) // sum(rows) for k in range(len(rows) + 1)]
    parts: list[list[Event]] = []
    for start, end in itertools.pairwise(cuts):
        part = events[start:end]
        if parts:
            shift = closing_time([e for p in parts for e in p], settings) + 1_000 \
                - part[0].event_time
            part = [e.model_copy(update={"event_time": e.event_time + shift}) for e in part]
        parts.append(part)
    return parts


def closing_time(events: list[Event], settings: Settings) -> int:
    """A time after which every impression of ``events`` is finished: its attribution window,
    the allowed lateness and twice the out-of-orderness (the watermark's lag) past, and a
    minute more."""
    return (max(e.event_time for e in events) + settings.attribution_window_ms
            + settings.allowed_lateness_ms + 2 * settings.max_out_of_orderness_ms + 60_000)


def closing(events: list[Event], settings: Settings, part: int) -> list[Event]:
    """One event for each partition of the events topic, at :func:`closing_time`."""
    t = closing_time(events, settings)
    return [Event(event_id=f"close-{part}-{p}", event_type="add_to_cart", user_id=f"closer-{p}",
                  item_id="closing", event_time=t) for p in range(2)]


def produce(settings: Settings, events: list[Event], closers: list[Event],
            bad: list[bytes]) -> None:
    """The events keyed by user (the replay's keys), ``bad`` and each closer to its own
    partition (so that every partition's watermark passes the part's impressions)."""
    producer = Producer(producer_config(settings))
    for event in events:
        producer.produce(settings.topic_events, encode_event(event), event.user_id.encode(),
                         timestamp=event.event_time)
        producer.poll(0)
    for value in bad:
        producer.produce(settings.topic_events, value, b"bad", partition=0,
                         timestamp=events[-1].event_time)
    assert producer.flush(30) == 0
    for p, event in enumerate(closers):
        producer.produce(settings.topic_events, encode_event(event), event.user_id.encode(),
                         partition=p, timestamp=event.event_time)
    assert producer.flush(30) == 0


def settled(settings: Settings, topic: str, want: int) -> int:
    """Wait until ``topic`` holds ``want`` records and no more arrive for 2 s."""
    wait_for(f"{want} records on {topic}", lambda: count(settings, topic) >= want, WAIT_S)
    before = -1
    while (now := count(settings, topic)) != before:
        before = now
        time.sleep(2.0)
    return now


def taskmanagers_of(settings: Settings, job_id: str) -> set[str]:
    """The TaskManagers that run some subtask of the job."""
    rest = FlinkRest(settings.flink_rest)
    found: set[str] = set()
    for vertex in rest.get(f"/jobs/{job_id}")["vertices"]:
        found |= {t["taskmanager-id"] for t in rest.get(
            f"/jobs/{job_id}/vertices/{vertex['id']}/taskmanagers")["taskmanagers"]}
    return found


def running(settings: Settings, job_id: str) -> bool:
    """Whether every subtask of the job runs."""
    job = FlinkRest(settings.flink_rest).get(f"/jobs/{job_id}")
    if job["state"] in ("FAILED", "FINISHED", "CANCELED"):
        pytest.fail(f"job {job_id} is {job['state']}")
    return job["state"] == "RUNNING" and all(v["status"] == "RUNNING" for v in job["vertices"])


def assert_features_equal(settings: Settings, events: list[Event], dead: list[str]) -> None:
    """Feast, the examples and the dead letters hold what the reference gives for ``events``
    (every example exactly once)."""
    rows, examples = reference(events, settings)
    n = settled(settings, settings.topic_examples, len(examples))
    assert n == len(examples)
    settled(settings, settings.topic_feature_rows, 1)
    writer_service.run(settings, bounded=True)
    assert row_differences(rows, open_store(settings)) == []
    got = [decode_example(v) for v in read_all(settings, settings.topic_examples, n)]
    assert example_differences(examples, got) == []
    letters = read_all(settings, settings.topic_dlq, len(dead))
    assert sorted(json.loads(v)["reason"] for v in letters) == sorted(dead)
    assert count(settings, settings.topic_dlq) == len(dead)


def reason(settings: Settings, value: bytes) -> str:
    """Why validation rejects ``value``."""
    try:
        decoder(settings)(value)
    except DecodeError as err:
        return err.reason
    raise AssertionError(f"{value!r} is valid")


def test_features_parallel_on_two_taskmanagers_rescaled_through_savepoints(
        fresh: Settings) -> None:
    settings = fresh
    apply_repo(settings)
    dead = [reason(settings, value) for value in BAD]
    log: list[Event] = []
    savepoint: list[str] = []
    for k, ((parallelism, backend, _), part) in enumerate(zip(RUNS, taobao_parts(settings))):
        run = settings.model_copy(update={"state_backend": backend})
        job = cli(run, "job", "submit", "features", "--parallelism", str(parallelism),
                  *(["--from-savepoint", *savepoint] if savepoint else []))
        wait_for(f"run {k} running", lambda: running(settings, job), 60)
        assert len(taskmanagers_of(settings, job)) == parallelism
        closers = closing(log + part, settings, k)
        produce(settings, part, closers, BAD if k == 0 else [])
        log += part + closers
        assert_features_equal(settings, log, dead)
        savepoint = [cli(settings, "job", "stop", "features", "--savepoint")]


def training_examples(settings: Settings) -> list[bytes]:
    """The first ``sum(EXAMPLES)`` examples of the sample's first rows, encoded."""
    raw, _ = read_log(settings.sample_log, "taobao", settings=settings)
    built = build_examples(with_impressions(itertools.islice(raw, 2_000), settings), settings)
    return [encode_example(x) for x in itertools.islice(built, sum(EXAMPLES))]


def status(settings: Settings) -> dict[str, Any]:
    try:
        return json.loads(status_path(settings).read_text())
    except (OSError, ValueError):
        return {}


def send(settings: Settings, records: list[bytes]) -> None:
    producer = Producer(producer_config(settings))
    for record in records:
        producer.produce(settings.topic_examples, record)
        producer.poll(0)
    assert producer.flush(30) == 0


def on_one_taskmanager(settings: Settings, job_id: str) -> None:
    """Wait until the job runs on the cluster; it runs at parallelism 1 on one TaskManager."""
    wait_for(f"job {job_id} running", lambda: running(settings, job_id), 60)
    vertices = FlinkRest(settings.flink_rest).get(f"/jobs/{job_id}")["vertices"]
    assert {v["parallelism"] for v in vertices} == {1}
    assert len(taskmanagers_of(settings, job_id)) == 1


def test_training_stopped_with_a_savepoint_and_resumed_learns_each_example_once(
        fresh: Settings) -> None:
    # every version a snapshot: the version cut when the job stops holds all it learned
    settings = fresh.model_copy(update={
        "hash_buckets": 20_011, "delta_interval_examples": 500, "snapshot_every": 1})
    examples = training_examples(settings)
    send(settings, examples[:EXAMPLES[0]])
    at = ("--jobmanager", settings.flink_rest)
    first = cli(settings, "job", "submit", "training", *at)
    on_one_taskmanager(settings, first)
    wait_for("the first part learned",
             lambda: status(settings).get("examples") == EXAMPLES[0], WAIT_S)
    savepoint = cli(settings, "job", "stop", "training", "--savepoint", *at)
    stopped = status(settings)

    send(settings, examples[EXAMPLES[0]:])
    second = cli(settings, "job", "submit", "training", "--from-savepoint", savepoint, *at)
    on_one_taskmanager(settings, second)
    wait_for("the second part learned",
             lambda: status(settings).get("examples") == sum(EXAMPLES), WAIT_S)
    final = status(settings)
    assert final["duplicates"] == 0 and final["restored_version"] >= stopped["version"]
    assert final["version"] > stopped["version"]

    messages: list[bytes] = []

    def every_version() -> bool:
        messages.extend(subscriber.poll(0.5))
        return bool(messages) and int(read_metadata(messages[-1])["examples"]) == sum(EXAMPLES)

    with ModelUpdateSubscriber(settings) as subscriber:
        wait_for("every version", every_version, 60)
    metadata = {int(m["version"]): m for m in map(read_metadata, messages)}
    versions = [int(read_metadata(m)["version"]) for m in messages]
    assert versions == sorted(set(versions))
    # the resumed run started from a snapshot of everything learned before the stop
    assert int(metadata[final["restored_version"]]["examples"]) == EXAMPLES[0]
    follower = ModelFollower(Ranker.from_settings(settings), hmac_key(settings))
    assert Status.REJECTED not in [follower.apply(m).status for m in messages]
    assert follower.version == versions[-1]

