"""The jobs on a local standalone Flink cluster (``streamrank cluster up``): how long the cluster
takes to start and a job to be submitted, the ``features`` job's rate over a backlog at each
parallelism, and how long a stop with a savepoint takes and how large the savepoint is.

    .venv/bin/python bench/bench_cluster.py [--rows 40000] [--parallelism 1,2] [--partitions 2]

Needs the local stack's Kafka (``streamrank stack up``; ``STREAMRANK_*`` as usual). Starts its
own cluster (two TaskManagers, two slots each) on free loopback ports in a temporary run
directory and stops it at the end. Per parallelism: fresh topics (``events`` with
``--partitions`` partitions) holding the Taobao sample's first ``--rows`` rows through the
impression rule; the job submitted at that parallelism reads the backlog; its rate is the
source's records (Flink's ``numRecordsOut``, from the REST API, refreshed every second) from
the first one read to the last, over that time; then it is stopped with a savepoint.
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import time
import uuid
from itertools import islice
from pathlib import Path
from urllib.parse import urlparse

from confluent_kafka import Producer

from config import Settings, load_settings
from connectors.admin import delete_topics, ensure_topics
from connectors.events import encode_event
from connectors.kafka_config import producer_config
from connectors.logs import read_log
from features.impressions import with_impressions
from jobs.launch import stop_with_savepoint, submit_job
from jobs.metrics import FlinkRest
from streamrank import cluster


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def backlog(settings: Settings, rows: int, partitions: int) -> tuple[Settings, int]:
    """Fresh topics whose ``events`` hold the sample's first ``rows`` rows; their settings and
    the number of events."""
    tag = uuid.uuid4().hex[:8]
    fresh = settings.model_copy(update={
        "topic_events": f"events-{tag}", "topic_dlq": f"dlq-{tag}",
        "topic_examples": f"examples-{tag}", "topic_feature_rows": f"rows-{tag}",
        "events_partitions": partitions})
    ensure_topics(fresh, {fresh.topic_events: partitions, fresh.topic_dlq: 1,
                          fresh.topic_examples: partitions, fresh.topic_feature_rows: partitions})
    raw, _ = read_log(settings.sample_log, "taobao", settings=settings)
    producer = Producer(producer_config(settings))
    n = 0
    for event in with_impressions(islice(raw, rows), settings):
        producer.produce(fresh.topic_events, encode_event(event), event.user_id.encode(),
                         timestamp=event.event_time)
        producer.poll(0)
        n += 1
    assert producer.flush(60) == 0
    return fresh, n


def read_rate(rest: FlinkRest, job_id: str, n: int, timeout_s: float = 600) -> float:
    """Events/s of the job's source from its first record read to its ``n``-th."""
    first: tuple[float, int] | None = None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            read = rest.records_read(job_id)
        except (OSError, ValueError, KeyError, StopIteration):
            read = 0
        now = time.monotonic()
        if read and first is None:
            first = (now, read)
        if read >= n and first is not None:
            return (read - first[1]) / max(now - first[0], 1e-9)
        time.sleep(0.25)
    raise TimeoutError(f"the job read fewer than {n} events in {timeout_s:.0f} s")


def size_mb(location: str) -> float:
    """The size of a local savepoint directory, MB."""
    path = Path(urlparse(location).path)
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=40_000)
    parser.add_argument("--parallelism", default="1,2")
    parser.add_argument("--partitions", type=int, default=2)
    args = parser.parse_args()
    run_dir = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    settings = load_settings(run_dir=run_dir, flink_rest=f"127.0.0.1:{free_port()}",
                             cluster_rpc_port=free_port(), cluster_taskmanagers=2,
                             cluster_slots=2)
    started = time.monotonic()
    cluster.up(settings)
    print(f"cluster up (1 JobManager, 2 TaskManagers): {time.monotonic() - started:.1f} s")
    rest = FlinkRest(settings.flink_rest)
    try:
        for p in [int(x) for x in args.parallelism.split(",")]:
            fresh, n = backlog(settings, args.rows, args.partitions)
            started = time.monotonic()
            job = submit_job("features", fresh, settings.flink_rest, parallelism=p)
            submitted = time.monotonic() - started
            rate = read_rate(rest, job, n)
            savepoint = stop_with_savepoint("features", fresh)
            print(f"parallelism {p}: submit {submitted:.1f} s; {n:,} events at {rate:,.0f}/s; "
                  f"stop with savepoint {savepoint.seconds:.1f} s, "
                  f"{size_mb(savepoint.location):.1f} MB")
            delete_topics(fresh, [fresh.topic_events, fresh.topic_dlq, fresh.topic_examples,
                                  fresh.topic_feature_rows])
    finally:
        started = time.monotonic()
        cluster.down(settings)
        print(f"cluster down: {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
