"""Features path benchmark: sustained events/s of the whole feature path at stepped offered
rates, freshness produce -> visible through Feast, CPU per event per stage; and (``--equality``)
the whole-sample comparison with the pure reference.

    .venv/bin/python bench/bench_features_job.py [--job features|features-fast]
        [--rates 250,500,1000,2000] [--step-s 60] [--warmup-s 0] [--keep-going]
        [--rows N] [--redis-db 11] [--out DIR]
    .venv/bin/python bench/bench_features_job.py --equality [--job ...] [--rows N]

The events are real: the Taobao sample (``data/``) through the impression rule, in event-time
order (repeated with new event IDs and shifted times when a run needs more). Fresh topics, a
private run directory and Redis database (Feast's online store).

**Steps** (default): the job (``--job``: the Python ``features`` job or the Java
``features-fast``) and the Feast writer run detached, unbounded, as in production. For each
offered rate, a producer sends pre-encoded events at that rate for ``--step-s`` seconds; every
second the bench samples the job's lag (events produced minus the position of its Kafka
source, from the source's ``currentOffset`` metrics on the job's REST endpoint) and the writer's (rows on ``features.rows`` minus the rows it
has committed). A rate is *sustained* when neither lag grows over the step (the last 10 s of
the step end no more than 2 s of events above its first 10 s for the job, 4 s for the
writer). The steps go up until one is not sustained. Per step it also prints:

* **freshness**: twice a second a sent event (one that feeds state) is timed from its delivery
  to Kafka until Feast's ``get_online_features`` returns, for its user and for its item, a row
  whose event timestamp has reached the event's time (polled every 20 ms; p50/p99);
* **CPU µs per event per stage**: CPU time of the job's threads (``/proc``; Flink's task
  threads are named after their operator chains: source + validation, item stage, user stage
  (+ label join in features-fast), the Python job's row sink; then the Kafka sinks' network
  threads, checkpoints, JIT, GC and the rest of the JVM or Python runtime), of the Feast
  writer process and of the stack's Kafka broker and Redis, over the step, divided by the
  events the job's source read over it (the broker and Redis also serve this bench's
  producer and its freshness reads).

**Equality** (``--equality``): the whole sample (or its first ``--rows`` rows) through a bounded
run and the writer, then every row of the reference (:func:`features.verify.reference`) read
back through ``get_online_features`` and every example on ``training.examples`` compared
(counts exactly, floats to 1e-9); prints the numbers and the first differences.

Timings on shared machines are noisy: compare the rows of one run.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Callable
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from bench_ingest import Record, record
from confluent_kafka import Consumer, TopicPartition
from redis import Redis
from rich.console import Console
from rich.progress import track
from rich.table import Table

from config import Settings, load_settings
from connectors.admin import delete_topics, end_offsets, ensure_topics, topic_specs
from connectors.events import Event
from connectors.kafka_config import consumer_config
from connectors.logs import read_log
from connectors.producer import EventProducer
from connectors.training_examples import decode_example
from features.impressions import with_impressions
from features.rows import ITEM_VIEW, USER_VIEW, feeds_state
from features.state import HOUR_MS
from features.store import apply_repo, open_store
from features.verify import example_differences, reference, row_differences
from jobs.feast_writer import GROUP as WRITER_GROUP
from jobs.launch import run_job, running_pid, settings_env, stop_job
from streamrank.processes import read_pid

console = Console(width=160)
POLL_S = 0.02
CLK = os.sysconf("SC_CLK_TCK")
STAGES = {"Source: events": "ingest (source + validate)", "item features": "item stage",
          "user features": "user stage + label join", "DataStreamToTab": "row sink",
          "kafka-producer-": "Kafka sinks' network threads", "C1 CompilerThre": "JIT",
          "C2 CompilerThre": "JIT", "GC Thread#": "GC", "G1 ": "GC",
          "AsyncOperations": "checkpoints", "jobmanager-io-t": "checkpoints"}
"""Prefixes of thread names (``/proc`` keeps 15 characters) -> stage: the Flink task threads
are named after their operator chains."""


def stage_of(thread: str) -> str:
    """The stage a job thread's CPU is counted in."""
    return next((stage for prefix, stage in STAGES.items() if thread.startswith(prefix)),
                "job: JVM, Python runtime, other")


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


def services(base: Settings) -> dict[str, int]:
    """The pids of the stack's Kafka broker and Redis (``streamrank stack up``), by name."""
    pids = {"Kafka broker": read_pid(base, "kafka"), "Redis": read_pid(base, "redis")}
    return {name: pid for name, pid in pids.items() if pid is not None}


def cpu_by_stage(job_pid: int, writer_pid: int,
                 others: dict[str, int] | None = None) -> dict[str, float]:
    """CPU seconds so far of each stage's threads, the job's other threads, the writer, and
    each of ``others`` (name -> pid: the broker, Redis)."""
    out: dict[str, float] = defaultdict(float)
    processes = ([(p, "job") for p in _group_pids(job_pid)] + [(writer_pid, "Feast writer")]
                 + [(pid, name) for name, pid in (others or {}).items()])
    for pid, group in processes:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                name = (task / "comm").read_text().rstrip("\n")
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            seconds = (int(fields[11]) + int(fields[12])) / CLK
            stage = stage_of(name) if group == "job" else group
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

    def add(self, user: str, item: str, event_time: int, sent: float) -> None:
        """Time an event of ``user`` on ``item`` at ``event_time``, delivered at ``sent``."""
        with self._lock:
            for view, key in ((USER_VIEW, user), (ITEM_VIEW, item)):
                self.pending.setdefault((view, key), []).append((event_time, sent))

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


Timed = tuple[str, str, bool]
"""What freshness needs of a record: its user, its item, whether it feeds state."""


def encoded(events: list[Event]) -> tuple[list[Record], list[Timed]]:
    """The events as records to send, and what freshness needs of each."""
    return ([record(e) for e in events],
            [(e.user_id, e.item_id, feeds_state(e)) for e in events])


EVENT_TIME = re.compile(rb'"event_time":(\d+)')


def cycled(records: list[Record], i: int) -> Record:
    """Record ``i`` of the records repeated without end: each repetition gets new event IDs
    and times shifted past the previous one (so nothing is a duplicate or late)."""
    c, k = divmod(i, len(records))
    value, key, t = records[k]
    if c == 0:
        return value, key, t
    shift = c * (records[-1][2] - records[0][2] + HOUR_MS)
    value = value.replace(b'"event_id":"', b'"event_id":"c%d-' % c, 1)
    value = EVENT_TIME.sub(lambda m: b'"event_time":%d' % (int(m.group(1)) + shift), value, 1)
    return value, key, t + shift


class SourcePosition:
    """How far a running job's Kafka source has read its topic: the sum over partitions of
    its ``currentOffset`` metrics, from the job's own REST endpoint (the MiniCluster's, on a
    port of one of the job's processes, found by asking each port they listen on)."""

    def __init__(self, pid: int, topic: str, timeout_s: float = 180) -> None:
        self._topic = topic
        deadline = time.monotonic() + timeout_s
        while True:
            found = self._find(pid)
            if found is not None:
                self._base = found
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"no running Flink job with a source in process {pid}")
            time.sleep(1.0)
        self._ids = ""

    @staticmethod
    def _get(url: str) -> Any:
        with urllib.request.urlopen(url, timeout=2) as response:
            return json.load(response)

    def _find(self, pid: int) -> str | None:
        listening = [c for p in _group_pids(pid) for c in psutil.Process(p).net_connections("tcp")]
        for conn in listening:
            if conn.status != psutil.CONN_LISTEN:
                continue
            base = f"http://127.0.0.1:{conn.laddr.port}"
            try:
                jobs = self._get(f"{base}/jobs/overview")["jobs"]
            except (OSError, ValueError, KeyError, http.client.HTTPException):
                continue  # not the REST endpoint
            for job in jobs:
                if job["state"] == "RUNNING":
                    vertices = self._get(f"{base}/jobs/{job['jid']}")["vertices"]
                    source = next(v for v in vertices if v["name"].startswith("Source: events"))
                    return f"{base}/jobs/{job['jid']}/vertices/{source['id']}"
        return None

    def settled(self) -> int:
        """:meth:`__call__` after a pause of one metrics update: the REST endpoint answers from
        its cache and refreshes it in the background, so a first query after a quiet spell
        returns old figures."""
        self()
        time.sleep(1.5)
        return self()

    def __call__(self) -> int:
        """Records read so far (0 until the source has reported; at most about a second
        old while queried every second)."""
        if not self._ids:
            names = [m["id"] for m in self._get(f"{self._base}/subtasks/metrics")
                     if m["id"].endswith(".currentOffset") and self._topic in m["id"]]
            if not names:
                return 0
            self._ids = ",".join(names)
        values = self._get(f"{self._base}/subtasks/metrics?get={self._ids}&agg=sum")
        # the offset of the last record read (negative: none yet)
        return int(sum(float(m["sum"]) + 1 for m in values if float(m["sum"]) >= 0))


def _wait_reading(position: SourcePosition, n: int, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while position() < n:
        if time.monotonic() > deadline:
            raise RuntimeError("the job did not start reading")
        time.sleep(0.5)


def _send_at(producer: EventProducer, batch: list[Record], rate: float,
             tick: Callable[[float, int], None] | None = None) -> None:
    """Send ``batch`` at ``rate`` records/s, calling ``tick(now, records sent)`` between
    sends; then flush."""
    start = time.monotonic()
    k = 0
    while k < len(batch):
        now = time.monotonic()
        due = min(len(batch), int((now - start) * rate) + 1)
        while k < due:
            producer.send_raw(*batch[k])
            k += 1
        if tick is not None:
            tick(now, k)
        time.sleep(0.0005)
    producer.flush()


def steps(settings: Settings, job: str, records: list[Record], timed: list[Timed],
          rates: list[float], step_s: float, *, warmup_s: float = 0.0,
          keep_going: bool = False, others: dict[str, int] | None = None
          ) -> list[dict[str, object]]:
    """The stepped-rate runs of ``job`` (``features`` or ``features-fast``) and the writer
    (module docstring); ``records`` are cycled (:func:`cycled`) when a step needs more. The
    first ``warmup_s`` seconds at the first rate are not measured (the JIT's warm-up);
    ``keep_going`` runs every rate even after one is not sustained; the CPU of ``others``
    (name -> pid, e.g. :func:`services`) is counted beside the job's and the writer's."""
    run_job(job, settings, detach=True)
    run_job("writer", settings, detach=True)
    job_pid, writer_pid = running_pid(job, settings), running_pid("writer", settings)
    assert job_pid and writer_pid
    results: list[dict[str, object]] = []
    fresh = Freshness(settings)
    try:
        position = SourcePosition(job_pid, settings.topic_events)
        with EventProducer(settings) as producer:
            sent = 200  # wait until the job reads events
            for i in range(sent):
                producer.send_raw(*records[i])
            producer.flush()
            _wait_reading(position, sent)
            if warmup_s > 0:
                with console.status(f"warm-up: {rates[0]:,.0f} events/s for {warmup_s:.0f} s"):
                    warm = int(rates[0] * warmup_s)
                    _send_at(producer, [cycled(records, i) for i in range(sent, sent + warm)],
                             rates[0])
                    sent += warm
            for rate in rates:
                n = int(rate * step_s)
                batch = [cycled(records, i) for i in range(sent, sent + n)]
                fresh.take()
                cpu0 = cpu_by_stage(job_pid, writer_pid, others)
                read0 = position.settled()
                lags: list[tuple[float, int, int]] = []
                start = time.monotonic()
                due_at = {"timed": start, "sample": start}

                def tick(now: float, k: int, base: int = sent,
                         due_at: dict[str, float] = due_at) -> None:
                    user, item, feeds = timed[(base + k - 1) % len(records)]
                    if now >= due_at["timed"] and feeds:
                        producer.flush()
                        fresh.add(user, item, batch[k - 1][2], time.monotonic())
                        due_at["timed"] = now + 0.5
                    if now >= due_at["sample"]:
                        job_lag = base + k - position()
                        rows = sum(end_offsets(settings, settings.topic_feature_rows).values())
                        writer_lag = rows - committed(settings, settings.topic_feature_rows,
                                                      WRITER_GROUP)
                        lags.append((now - start, job_lag, writer_lag))
                        due_at["sample"] = now + 1.0

                _send_at(producer, batch, rate, tick)
                elapsed = time.monotonic() - start
                sent += n
                read = position.settled() - read0
                cpu1 = cpu_by_stage(job_pid, writer_pid, others)
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
                if not sustained and not keep_going:
                    break
    finally:
        fresh.close()
        stop_job(job, settings)
        stop_job("writer", settings)
    return results


def equality(settings: Settings, job: str, events: list[Event]) -> None:
    """The whole-sample comparison of ``job`` with the reference (module docstring)."""
    with EventProducer(settings) as producer:
        producer.send_many(track(events, description="produce"))
    env = {**os.environ, **settings_env(settings)}
    t0 = time.monotonic()
    for name in (job, "writer"):
        done = subprocess.run([sys.executable, "-m", "jobs", "run", name, "--bounded"], env=env,
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
    table = Table(title=f"{job} job vs the reference: {len(events):,} events")
    for col in ("events", "job + writer wall s", "rows compared", "row differences",
                "examples (reference)", "examples on the topic", "example differences"):
        table.add_column(col, justify="right")
    table.add_row(f"{len(events):,}", f"{wall:,.0f}", f"{len(rows):,}", f"{len(row_bad):,}",
                  f"{len(examples):,}", f"{len(got):,}", f"{len(ex_bad):,}")
    console.print(table)
    for line in (row_bad + ex_bad)[:20]:
        console.print(line)


def report(job: str, results: list[dict[str, object]]) -> tuple[str, list[str], list[list[str]]]:
    """The steps as a table: title, columns, rows."""
    title = f"feature path ({job} job + Feast writer), Taobao events, steps of offered rate"
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


def print_steps(job: str, results: list[dict[str, object]], out: Path | None) -> None:
    """Print the steps' table, and write it to ``out/<job>_steps.md`` with ``out``."""
    title, columns, rows = report(job, results)
    table = Table(title=title)
    for col in columns:
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        lines = [f"## {title}", "", "| " + " | ".join(columns) + " |",
                 "|" + "---:|" * len(columns)] + ["| " + " | ".join(r) + " |" for r in rows]
        (out / f"{job.replace('-', '_')}_steps.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--job", choices=("features", "features-fast"), default="features")
    parser.add_argument("--rates", default="250,500,1000,2000",
                        help="offered events/s, in steps")
    parser.add_argument("--step-s", type=float, default=60.0)
    parser.add_argument("--warmup-s", type=float, default=0.0,
                        help="seconds at the first rate, not measured, before the steps")
    parser.add_argument("--keep-going", action="store_true",
                        help="run every rate, even after one is not sustained")
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
                equality(settings, args.job, events)
                return
            records, timed = encoded(events)
            results = steps(settings, args.job, records, timed,
                            [float(r) for r in args.rates.split(",")], args.step_s,
                            warmup_s=args.warmup_s, keep_going=args.keep_going,
                            others=services(base))
        finally:
            delete_topics(settings, list(topic_specs(settings)))
    print_steps(args.job, results, args.out)


if __name__ == "__main__":
    main()
