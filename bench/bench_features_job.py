"""Features job benchmark: sustained events/s of a bounded run, and Feast freshness under replay.

    .venv/bin/python bench/bench_features_job.py [--rows 3000] [--speed 150] [--samples 200]
        [--redis-db 10] [--out DIR]

The events are real: the first ``--rows`` rows of the shared Taobao sample through the
impression rule. Two runs, each on fresh topics, a private run directory and its own Redis
database (``--redis-db``; Feast's online store):

* **throughput**: the events preloaded, then ``python -m jobs run features --bounded`` in a
  child process. "events/s" runs from the first to the last valid event the ingest step counted
  (its stats file); "with start-up" divides by the process's wall time. Feast rows written and
  examples come from the job's stats.
* **freshness**: the job runs detached (unbounded) while this process replays the same events
  at ``--speed`` events/s (a rate the throughput run shows it sustains). For ``--samples``
  events spread over the replay, a poller reads the user's row with ``get_online_features``
  every 20 ms; the event is visible once the row's event timestamp reaches the event's time.
  Sampled events are those that change the user's row (not synthetic impressions).
  Freshness is the wall time from the event's delivery to Kafka to that read (p50/p99). Only
  user rows are timed: item rows wait for the watermark (their order across partitions, see
  ``jobs/features_job.py``), i.e. for event time to move on by the out-of-orderness.

Timings on shared machines are noisy: compare the rows of one run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from itertools import islice
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from connectors.admin import delete_topics, ensure_topics, topic_specs
from connectors.events import Event
from connectors.logs import read_log
from connectors.producer import EventProducer
from features.impressions import with_impressions
from features.rows import USER_VIEW, feeds_state
from features.store import apply_repo, open_store
from jobs.features_job import JOB
from jobs.launch import run_job, settings_env, stop_job
from jobs.runtime import read_stats
from streamrank.config import Settings, load_settings

console = Console(width=150)
POLL_S = 0.02


def load_events(settings: Settings, rows: int, tmp: Path) -> list[Event]:
    head = tmp / "head.csv"
    with settings.sample_log.open() as src:
        head.write_text("".join(islice(src, rows)))
    events, _ = read_log(head, "taobao", settings=settings)
    return list(with_impressions(events, settings))


def fresh_settings(base: Settings, run_dir: Path, redis_db: int) -> Settings:
    tag = uuid.uuid4().hex[:8]
    settings = base.model_copy(update={
        "topic_events": f"bench-events-{tag}", "topic_dlq": f"bench-events.dlq-{tag}",
        "topic_examples": f"bench-examples-{tag}", "topic_deltas": f"bench-deltas-{tag}",
        "run_dir": run_dir, "redis_url": base.redis_url.rsplit("/", 1)[0] + f"/{redis_db}"})
    ensure_topics(settings)
    apply_repo(settings)
    return settings


def throughput(settings: Settings, events: list[Event]) -> dict[str, float]:
    with EventProducer(settings) as producer:
        producer.send_many(events)
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "jobs", "run", JOB, "--bounded"],
                          env={**os.environ, **settings_env(settings)}, capture_output=True,
                          check=False)
    wall = time.monotonic() - t0
    if done.returncode:
        raise RuntimeError(done.stdout.decode()[-3000:] + done.stderr.decode()[-3000:])
    stats = read_stats(JOB, settings)
    valid = stats["counts"].get("valid", 0)
    span_s = max(stats["last_ms"]["valid"] - stats["first_ms"]["valid"], 1) / 1000
    return {"events": valid, "per_s": valid / span_s, "with_startup": valid / wall,
            "rows": stats["counts"].get("rows_written", 0),
            "examples": stats["counts"].get("examples", 0),
            "late": stats["counts"].get("reason.late", 0)}


def freshness(settings: Settings, events: list[Event], speed: float,
              samples: int) -> dict[str, float]:
    """Replay at ``speed`` events/s into a running job; freshness of sampled user rows."""
    store = open_store(settings)
    pending: dict[int, tuple[str, int, float]] = {}  # index -> (user, event time, sent at)
    seen: list[float] = []
    lock, done = threading.Lock(), threading.Event()

    def poll() -> None:
        while not done.is_set() or pending:
            with lock:
                waiting = list(pending.items())
            if waiting:
                response = store.get_online_features(
                    features=[f"{USER_VIEW}:u_clicks_24h"],
                    entity_rows=[{"user_id": user} for _, (user, _, _) in waiting])
                names = list(response.proto.metadata.feature_names.val)
                stamps = response.proto.results[names.index("u_clicks_24h")].event_timestamps
                now = time.monotonic()
                with lock:
                    for (i, (_, t, sent)), ts in zip(waiting, stamps):
                        if ts.seconds * 1000 + ts.nanos // 1_000_000 >= t:
                            seen.append(now - sent)
                            del pending[i]
            if done.is_set() and time.monotonic() > deadline:
                break
            time.sleep(POLL_S)

    feeding = [i for i, event in enumerate(events) if feeds_state(event)]
    sampled = set(feeding[::max(1, len(feeding) // samples)])
    run_job(JOB, settings, detach=True)
    deadline = float("inf")
    try:
        time.sleep(20)  # start-up: the first sampled event should not time the JVM's start
        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        with EventProducer(settings) as producer:
            start = time.monotonic()
            for i, event in enumerate(events):
                while time.monotonic() < start + i / speed:
                    time.sleep(0.001)
                producer.send(event)
                if i in sampled:
                    producer.flush()  # delivered: the clock starts when Kafka has it
                    with lock:
                        pending[i] = (event.user_id, event.event_time, time.monotonic())
        replay_s = time.monotonic() - start
        deadline = time.monotonic() + 60
        done.set()
        poller.join()
    finally:
        stop_job(JOB, settings)
    ms = np.array(seen) * 1000
    return {"rate": len(events) / replay_s, "timed": len(seen), "missed": len(pending),
            "p50": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
            "p99": float(np.percentile(ms, 99)) if len(ms) else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=3_000)
    parser.add_argument("--speed", type=float, default=150.0, help="replay events/s")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--redis-db", type=int, default=10)
    parser.add_argument("--skip-freshness", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    base = load_settings()
    with tempfile.TemporaryDirectory(prefix="bench-features-") as tmp:
        events = load_events(base, args.rows, Path(tmp))
        results: list[tuple[str, dict[str, float]]] = []
        for name in ("throughput", "freshness"):
            if name == "freshness" and args.skip_freshness:
                continue
            settings = fresh_settings(base, Path(tmp) / name, args.redis_db)
            try:
                results.append((name, throughput(settings, events) if name == "throughput"
                                else freshness(settings, events, args.speed, args.samples)))
            finally:
                delete_topics(settings, list(topic_specs(settings)))
    title = f"features job: {len(events):,} events from {args.rows:,} Taobao rows"
    columns = ("run", "events/s", "with start-up", "Feast rows", "examples", "late",
               "replay rate", "freshness p50 ms", "p99 ms", "timed/missed")
    rows = []
    for name, r in results:
        if name == "throughput":
            rows.append((name, f"{r['per_s']:,.0f}", f"{r['with_startup']:,.0f}",
                         f"{r['rows']:,}", f"{r['examples']:,}", f"{r['late']:,}",
                         "", "", "", ""))
        else:
            rows.append((name, "", "", "", "", "", f"{r['rate']:,.0f}/s", f"{r['p50']:,.0f}",
                         f"{r['p99']:,.0f}", f"{r['timed']}/{r['missed']}"))
    table = Table(title=title)
    for col in columns:
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        lines = [f"## {title}", "", "| " + " | ".join(columns) + " |",
                 "|" + "---:|" * len(columns)] + ["| " + " | ".join(r) + " |" for r in rows]
        (args.out / "features_job.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
