"""Features path benchmark: sustained events/s of the whole feature path at stepped offered
rates, freshness produce -> visible through Feast, CPU per event per stage; and (``--equality``)
the whole-sample comparison with the pure reference.

    .venv/bin/python bench/bench_features_job.py [--rates 250,500,1000,2000] [--step-s 60]
        [--redis-db 11] [--out DIR]
    .venv/bin/python bench/bench_features_job.py --equality [--rows N]

The events are real: the Taobao sample (``data/``) through the impression rule, in event-time
order. Fresh topics, a private run directory and Redis database (Feast's online store).

**Steps** (default): the features job and the Feast writer run detached, unbounded, as in
production. For each offered rate, a producer sends events at that rate for ``--step-s``
seconds; every second the bench samples the job's lag (events produced minus events its ingest
step has counted) and the writer's (rows on ``features.rows`` minus the rows it has committed).
A rate is *sustained* when neither lag grows over the step (the last 10 s of the step end no
more than 2 s of events above its first 10 s). The steps go up until one is not sustained.
Per step it also prints:

* **freshness**: twice a second a sent event (one that feeds state) is timed from its delivery
  to Kafka until Feast's ``get_online_features`` returns, for its user and for its item, a row
  whose event timestamp has reached the event's time (polled every 20 ms; p50/p99);
* **CPU µs per event per stage**: CPU time of each Flink task thread (``/proc``; thread names
  are the operator chains: source + validation, item stage, user stage + examples sink, the
  feature-row sink), of the job's other threads (the JVM and Python runtime), and of the Feast
  writer process, over the step, divided by the events the ingest step counted.

**Equality** (``--equality``): the whole sample (or its first ``--rows`` rows) through a bounded
run and the writer, then every row of the reference (:func:`features.verify.reference`) read
back through ``get_online_features`` and every example on ``training.examples`` compared
(counts exactly, floats to 1e-9); prints the numbers and the first differences.

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
from collections import defaultdict
from itertools import islice
from pathlib import Path

import numpy as np
from confluent_kafka import Consumer, TopicPartition
from redis import Redis
from rich.console import Console
from rich.progress import track
from rich.table import Table

from connectors.admin import delete_topics, end_offsets, ensure_topics, topic_specs
from connectors.events import Event
from connectors.examples import decode_example
from connectors.kafka_config import consumer_config
from connectors.logs import read_log
from connectors.producer import EventProducer
from features.rows import ITEM_VIEW, USER_VIEW, feeds_state
from features.impressions import with_impressions
from features.store import apply_repo, open_store
from features.verify import example_differences, reference, row_differences
from jobs.feast_writer import GROUP as WRITER_GROUP
from jobs.features_job import JOB
from jobs.launch import run_job, running_pid, settings_env, stop_job
from jobs.runtime import read_stats
from streamrank.config import Settings, load_settings

console = Console(width=160)
POLL_S = 0.02
CLK = os.sysconf("SC_CLK_TCK")
STAGES = {"Source: events ": "ingest (source + validate)", "item features -": "item stage",
          "user features +": "user stage + examples", "DataStreamToTab": "row sink"}
"""Flink task thread names (``/proc`` keeps 15 characters) -> stage."""


def load_events(settings: Settings, rows: int | None, tmp: Path) -> list[Event]:
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
        "topic_feature_rows": f"bench-rows-{tag}", "run_dir": run_dir, "feast_commit_ms": 1_000,
        "redis_url": base.redis_url.rsplit("/", 1)[0] + f"/{redis_db}"})
    ensure_topics(settings)
    apply_repo(settings)
    Redis.from_url(settings.redis_url).flushdb()
    return settings


# --- /proc: CPU per thread ----------------------------------------------------------------------


def _group_pids(pgid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            out.append(int(stat.parent.name))
    return out


def cpu_by_stage(job_pid: int, writer_pid: int) -> dict[str, float]:
    """CPU seconds so far of each stage's threads, the job's other threads and the writer."""
    out: dict[str, float] = defaultdict(float)
    for pid, group in [(p, "job") for p in _group_pids(job_pid)] + [(writer_pid, "writer")]:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                name = (task / "comm").read_text().rstrip("\n")
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            seconds = (int(fields[11]) + int(fields[12])) / CLK
            stage = ("Feast writer" if group == "writer"
                     else STAGES.get(name, "job: JVM, Python runtime, other"))
            out[stage] += seconds
    return out


# --- lag and freshness -------------------------------------------------------------------------


def committed(settings: Settings, topic: str, group: str) -> int:
    consumer = Consumer(consumer_config(settings, group, **{"enable.auto.commit": False}))
    try:
        parts = [TopicPartition(topic, p) for p in end_offsets(settings, topic)]
        return sum(max(tp.offset, 0) for tp in consumer.committed(parts, timeout=10))
    finally:
        consumer.close()


class Freshness:
    """Times sent events until Feast shows them for their user and their item."""

    def __init__(self, settings: Settings) -> None:
        self._store = open_store(settings)
        self._lock = threading.Lock()
        self.pending: dict[tuple[str, str], list[tuple[int, float]]] = {}
        self.seen: dict[str, list[float]] = {USER_VIEW: [], ITEM_VIEW: []}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def add(self, event: Event, sent: float) -> None:
        with self._lock:
            for view, key in ((USER_VIEW, event.user_id), (ITEM_VIEW, event.item_id)):
                self.pending.setdefault((view, key), []).append((event.event_time, sent))

    def take(self) -> dict[str, list[float]]:
        """The delays (s) measured since the last call, by view."""
        with self._lock:
            out, self.seen = self.seen, {USER_VIEW: [], ITEM_VIEW: []}
        return out

    def _poll(self) -> None:
        feature = {USER_VIEW: "u_clicks_24h", ITEM_VIEW: "i_clicks_24h"}
        join = {USER_VIEW: "user_id", ITEM_VIEW: "item_id"}
        while not self._stop.is_set():
            with self._lock:
                waiting = list(self.pending)
            for view in (USER_VIEW, ITEM_VIEW):
                keys = [k for v, k in waiting if v == view]
                if not keys:
                    continue
                response = self._store.get_online_features(
                    features=[f"{view}:{feature[view]}"],
                    entity_rows=[{join[view]: k} for k in keys])
                names = list(response.proto.metadata.feature_names.val)
                stamps = response.proto.results[names.index(feature[view])].event_timestamps
                now = time.monotonic()
                with self._lock:
                    for key, ts in zip(keys, stamps):
                        t_ms = ts.seconds * 1000 + ts.nanos // 1_000_000
                        left = []
                        for t, sent in self.pending.get((view, key), []):
                            if t_ms >= t:
                                self.seen[view].append(now - sent)
                            else:
                                left.append((t, sent))
                        if left:
                            self.pending[(view, key)] = left
                        else:
                            self.pending.pop((view, key), None)
            time.sleep(POLL_S)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def steps(settings: Settings, events: list[Event], rates: list[float],
          step_s: float) -> list[dict[str, object]]:
    """The stepped-rate runs (module docstring)."""
    run_job(JOB, settings, detach=True)
    run_job("writer", settings, detach=True)
    job_pid, writer_pid = running_pid(JOB, settings), running_pid("writer", settings)
    assert job_pid and writer_pid
    results: list[dict[str, object]] = []
    fresh = Freshness(settings)
    sent = 0
    try:
        with EventProducer(settings) as producer:
            producer.send_many(events[:200])  # warm-up: wait until the job reads events
            sent = 200
            deadline = time.monotonic() + 180
            while read_stats(JOB, settings)["counts"].get("valid", 0) < 200:
                if time.monotonic() > deadline:
                    raise RuntimeError("the features job did not start reading")
                time.sleep(0.5)
            for rate in rates:
                n = int(rate * step_s)
                if sent + n > len(events):
                    console.print(f"[yellow]not enough events left for {rate:,.0f}/s")
                    break
                fresh.take()
                cpu0 = cpu_by_stage(job_pid, writer_pid)
                read0 = read_stats(JOB, settings)["counts"].get("valid", 0)
                lags: list[tuple[float, int, int]] = []
                start = next_sample = next_timed = time.monotonic()
                for i, event in enumerate(events[sent:sent + n]):
                    while (now := time.monotonic()) < start + i / rate:
                        time.sleep(0.0005)
                    producer.send(event)
                    if now >= next_timed and feeds_state(event):
                        producer.flush()
                        fresh.add(event, time.monotonic())
                        next_timed = now + 0.5
                    if now >= next_sample:
                        produced = sent + i + 1
                        job_lag = produced - read_stats(JOB, settings)["counts"].get("valid", 0)
                        rows = sum(end_offsets(settings, settings.topic_feature_rows).values())
                        writer_lag = rows - committed(settings, settings.topic_feature_rows,
                                                      WRITER_GROUP)
                        lags.append((now - start, job_lag, writer_lag))
                        next_sample = now + 1.0
                producer.flush()
                elapsed = time.monotonic() - start
                sent += n
                read = read_stats(JOB, settings)["counts"].get("valid", 0) - read0
                cpu1 = cpu_by_stage(job_pid, writer_pid)
                first = [lag for t, lag, _ in lags if t < 10] or [0]
                last = [lag for t, lag, _ in lags if t > elapsed - 10] or [0]
                wfirst = [w for t, _, w in lags if t < 10] or [0]
                wlast = [w for t, _, w in lags if t > elapsed - 10] or [0]
                growth = (np.mean(last) - np.mean(first), np.mean(wlast) - np.mean(wfirst))
                sustained = growth[0] <= 2 * rate and growth[1] <= 2 * rate * 2
                delays = fresh.take()
                results.append({
                    "rate": n / elapsed, "read_per_s": read / elapsed, "sustained": sustained,
                    "job_lag": (first[0], last[-1]), "writer_lag": (wfirst[0], wlast[-1]),
                    "fresh": {v: (np.percentile(np.array(d) * 1000, [50, 99]) if d else None)
                              for v, d in delays.items()},
                    "timed": {v: len(d) for v, d in delays.items()},
                    "cpu_us": {k: (cpu1[k] - cpu0.get(k, 0.0)) / max(read, 1) * 1e6
                               for k in cpu1}})
                console.print(f"offered {rate:,.0f}/s: read {read / elapsed:,.0f}/s, lag "
                              f"{first[0]:,} -> {last[-1]:,}, "
                              f"{'sustained' if sustained else 'NOT sustained'}")
                if not sustained:
                    break
    finally:
        fresh.close()
        stop_job(JOB, settings)
        stop_job("writer", settings)
    return results


def equality(settings: Settings, events: list[Event]) -> None:
    """The whole-sample comparison with the reference (module docstring)."""
    with EventProducer(settings) as producer:
        producer.send_many(track(events, description="produce"))
    env = {**os.environ, **settings_env(settings)}
    t0 = time.monotonic()
    for job in (JOB, "writer"):
        done = subprocess.run([sys.executable, "-m", "jobs", "run", job, "--bounded"], env=env,
                              capture_output=True, check=False)
        if done.returncode:
            raise RuntimeError(done.stdout.decode()[-3000:] + done.stderr.decode()[-3000:])
    wall = time.monotonic() - t0
    rows, examples = reference(events, settings)
    row_bad = row_differences(rows, open_store(settings))
    consumer = Consumer(consumer_config(settings, f"bench-{uuid.uuid4().hex[:8]}"))
    consumer.subscribe([settings.topic_examples])
    got, idle = [], 0
    while idle < 5:
        batch = [decode_example(m.value()) for m in consumer.consume(5000, 1.0) if not m.error()]
        got += batch
        idle = 0 if batch else idle + 1
    consumer.close()
    ex_bad = example_differences(examples, got)
    table = Table(title=f"features job vs the reference: {len(events):,} events")
    for col in ("events", "job + writer wall s", "rows compared", "row differences",
                "examples (reference)", "examples on the topic", "example differences"):
        table.add_column(col, justify="right")
    table.add_row(f"{len(events):,}", f"{wall:,.0f}", f"{len(rows):,}", f"{len(row_bad):,}",
                  f"{len(examples):,}", f"{len(got):,}", f"{len(ex_bad):,}")
    console.print(table)
    for line in (row_bad + ex_bad)[:20]:
        console.print(line)


def report(results: list[dict[str, object]], n_events: int) -> tuple[str, list[str], list[list[str]]]:
    title = f"feature path (features job + Feast writer), Taobao events, steps of offered rate"
    stages = sorted({k for r in results for k in r["cpu_us"]})  # type: ignore[union-attr]
    columns = ["offered/s", "read/s", "sustained", "job lag start→end", "writer lag start→end",
               "user fresh p50/p99 ms", "item fresh p50/p99 ms"] + [f"CPU µs/ev {s}" for s in stages]
    rows = []
    for r in results:
        fresh = r["fresh"]

        def ms(view: str) -> str:
            p = fresh[view]  # type: ignore[index]
            return "—" if p is None else f"{p[0]:,.0f} / {p[1]:,.0f}"

        jl, wl = r["job_lag"], r["writer_lag"]
        rows.append([f"{r['rate']:,.0f}", f"{r['read_per_s']:,.0f}",
                     "yes" if r["sustained"] else "no", f"{jl[0]:,} → {jl[1]:,}",
                     f"{wl[0]:,} → {wl[1]:,}", ms(USER_VIEW), ms(ITEM_VIEW)]
                    + [f"{r['cpu_us'].get(s, 0.0):,.0f}" for s in stages])  # type: ignore[union-attr]
    return title, columns, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default="250,500,1000,2000",
                        help="offered events/s, in steps")
    parser.add_argument("--step-s", type=float, default=60.0)
    parser.add_argument("--rows", type=int, default=None, help="sample rows (default: all)")
    parser.add_argument("--redis-db", type=int, default=11)
    parser.add_argument("--equality", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    base = load_settings()
    with tempfile.TemporaryDirectory(prefix="bench-features-") as tmp:
        events = load_events(base, args.rows, Path(tmp))
        settings = fresh_settings(base, Path(tmp) / "run", args.redis_db)
        try:
            if args.equality:
                equality(settings, events)
                return
            results = steps(settings, events, [float(r) for r in args.rates.split(",")],
                            args.step_s)
        finally:
            delete_topics(settings, list(topic_specs(settings)))
    title, columns, rows = report(results, len(events))
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
