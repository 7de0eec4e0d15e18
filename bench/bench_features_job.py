"""Feature path benchmark: the feature jobs at stepped rates, bounded, and against the reference.

Sustained events/s of the ``features`` job (or of ``validate``, its validation alone) at
stepped offered rates, freshness produce -> visible through Feast, CPU per event per stage;
(``--bounded``) both jobs on a preloaded topic; (``--equality``) the whole-sample comparison
with the pure reference.

    .venv/bin/python bench/bench_features_job.py [--job features|validate]
        [--rates 5000,10000,20000] [--step-s 60] [--warmup-s 60] [--keep-going]
        [--rows N] [--redis-db 11] [--out DIR]
    .venv/bin/python bench/bench_features_job.py --bounded [--events 300000] [--out DIR]
    .venv/bin/python bench/bench_features_job.py --equality [--rows N]

The events are real: the Taobao sample (``data/``, its first ``--rows`` rows, default all)
through the impression rule, in event-time order (repeated with new event IDs and shifted times
when a run needs more). Fresh topics, a private run directory and Redis database (Feast's
online store).

**Steps** (default): the job and, for ``features``, the Feast writer run detached, unbounded,
as in production. This process sends pre-encoded events at the first rate for ``--warmup-s``
seconds (not measured: the JIT's warm-up), then at each offered rate for ``--step-s`` seconds;
every second it samples the job's lag (events produced minus the position of its Kafka source,
from the source's ``currentOffset`` metrics on the job's REST endpoint) and the writer's (rows
on ``features.rows`` minus the rows it has committed). A rate is *sustained* when neither lag
grows over the step (the last 10 s of the step end no more than 2 s of events above its first
10 s for the job, 4 s for the writer). The steps go up until one is not sustained
(``--keep-going``: all of them). Per step it also prints:

* **freshness** (``features``): twice a second a sent event (one that feeds state) is timed
  from its delivery to Kafka until Feast's ``get_online_features`` returns, for its user and
  for its item, a row whose event timestamp has reached the event's time (polled every 20 ms;
  p50/p99);
* **rows per event**: records appended to ``features.rows`` over the step per event read;
* **CPU µs per event per stage**: CPU time of the job's threads (``/proc``; Flink's task
  threads are named after their operator chains: source + validation, item stage, user stage
  + label join; then the Kafka sinks' network threads, checkpoints, JIT, GC and the rest of
  the JVM and Python), of the Feast writer process and of the stack's Kafka broker and Redis,
  over the step, divided by the events the job's source read over it (the broker and Redis
  also serve this bench's producer and its freshness reads).

**Bounded** (``--bounded``): ``validate`` and ``features`` each run bounded in a child process
(this script builds the job with the job's own ``build_job``) on the first ``--events`` events
preloaded into a fresh ``events`` topic (``settings.events_partitions`` partitions). Events/s
are over the job's net run time as Flink reports it (from its start on the MiniCluster to its
end, so without the JVM start and the job submission, with the Kafka source's start); CPU
µs/event over the same interval for the child's process tree; "with start-up" over the child's
wall time. The producer row is the preloads' rate: one Python process, every record
acknowledged. Runs of fewer than ~300k events mostly measure the source's start and the JIT's
warm-up.

**Equality** (``--equality``): the events through a bounded run of ``features`` and the
writer, then every row of the reference (:func:`features.verify.reference`) read back through
``get_online_features`` and every example on ``training.examples`` compared (counts exactly,
floats to 1e-9); prints the numbers and the first differences.

Timings on shared machines are noisy: compare the rows of one run.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path

import numpy as np
from confluent_kafka import Consumer, TopicPartition
from redis import Redis
from rich.progress import track
from support import (
    Record,
    SourcePosition,
    console,
    fresh_settings,
    fresh_topics,
    group_pids,
    job_command,
    markdown_table,
    open_producer,
    preload,
    record,
    run_sampled,
    running_job,
    sample_events,
    table,
    thread_cpu_s,
    write_report,
)

from config import Settings, load_settings
from connectors.admin import end_offsets
from connectors.events import Event
from connectors.kafka_config import consumer_config
from connectors.producer import EventProducer, TopicProducer
from connectors.training_examples import TrainingExample, decode_example
from features.rows import ITEM_VIEW, USER_VIEW, feeds_state
from features.state import HOUR_MS
from features.store import apply_repo, open_store
from features.verify import example_differences, reference, row_differences
from features.writer_service import GROUP as WRITER_GROUP
from jobs.flink import create_env
from jobs.launch import JOBS, detached_env, run_job, running_pid, stop_job
from jobs.processes import read_pid

POLL_S = 0.02
STAGES = {"Source: events": "ingest (source + validate)", "item features": "item stage",
          "user features": "user stage + label join",
          "kafka-producer-": "Kafka sinks' network threads", "C1 CompilerThre": "JIT",
          "C2 CompilerThre": "JIT", "GC Thread#": "GC", "G1 ": "GC",
          "AsyncOperations": "checkpoints", "jobmanager-io-t": "checkpoints"}
"""Prefixes of thread names (``/proc`` keeps 15 characters) -> stage: the Flink task threads
are named after their operator chains."""
BOUNDED = {"validation alone (validate)": "validate", "whole path (features)": "features"}


def stage_of(thread: str) -> str:
    """The stage a job thread's CPU is counted in.

    >>> stage_of("item features -"), stage_of("Thread-7")
    ('item stage', 'job: JVM, Python runtime, other')
    """
    return next((stage for prefix, stage in STAGES.items() if thread.startswith(prefix)),
                "job: JVM, Python runtime, other")


def services(base: Settings) -> dict[str, int]:
    """The pids of the stack's Kafka broker and Redis (``streamrank stack up``), by name."""
    pids = {"Kafka broker": read_pid(base, "kafka"), "Redis": read_pid(base, "redis")}
    return {name: pid for name, pid in pids.items() if pid is not None}


@contextmanager
def path_settings(base: Settings, run_dir: Path, redis_db: int) -> Iterator[Settings]:
    """Settings of a run of the feature path: fresh topics (deleted on exit), Feast's repo
    applied in ``run_dir``, an emptied Redis database of the bench's own."""
    settings = fresh_settings(base, run_dir, redis_db=redis_db, feast_commit_ms=1_000)
    with fresh_topics(settings):
        apply_repo(settings)
        Redis.from_url(settings.redis_url).flushdb()
        yield settings


# --- records to send -----------------------------------------------------------------------------

Timed = tuple[str, str, bool]
"""What freshness needs of a record: its user, its item, whether it feeds state."""
EVENT_TIME = re.compile(rb'"event_time":(\d+)')


def encoded(events: list[Event]) -> tuple[list[Record], list[Timed]]:
    """The events as records to send, and what freshness needs of each."""
    return ([record(e) for e in events],
            [(e.user_id, e.item_id, feeds_state(e)) for e in events])


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


def send_at(producer: TopicProducer, batch: list[Record], rate: float,
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


# --- what the steps read of the running path ------------------------------------------------------


def committed(settings: Settings, topic: str, group: str) -> int:
    """Records of ``topic`` that consumer group ``group`` has committed, over its partitions."""
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
        """Stop polling."""
        self._stop.set()
        self._thread.join()


@dataclass
class RunningPath:
    """A detached run of the job, and of the Feast writer when the job writes rows; what the
    steps read of them."""

    settings: Settings
    job_pid: int
    writer_pid: int | None
    position: SourcePosition
    fresh: Freshness | None
    others: dict[str, int]
    """Other processes whose CPU counts (name -> pid: the broker, Redis)."""

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of each stage's threads, the job's other threads, the writer,
        and each of ``others``."""
        out: dict[str, float] = defaultdict(float)
        for pid in group_pids(self.job_pid):
            for thread, seconds in thread_cpu_s(pid).items():
                out[stage_of(thread)] += seconds
        named = dict(self.others)
        if self.writer_pid is not None:
            named["Feast writer"] = self.writer_pid
        for name, pid in named.items():
            out[name] += sum(thread_cpu_s(pid).values())
        return out

    def rows(self) -> int:
        """Records appended to the rows topic so far."""
        return sum(end_offsets(self.settings, self.settings.topic_feature_rows).values())

    def writer_lag(self) -> int:
        """Rows on the rows topic that the writer has not committed (0 without a writer)."""
        if self.writer_pid is None:
            return 0
        topic = self.settings.topic_feature_rows
        return (sum(end_offsets(self.settings, topic).values())
                - committed(self.settings, topic, WRITER_GROUP))


@contextmanager
def running_path(settings: Settings, job: str,
                 others: dict[str, int]) -> Iterator[RunningPath]:
    """``job`` (and for ``features`` the writer) run detached until the block ends."""
    names = [job, "writer"] if job == "features" else [job]
    try:
        for name in names:
            run_job(name, settings, detach=True)
        job_pid = running_pid(job, settings)
        assert job_pid is not None
        rest, job_id = running_job(settings, job)
        fresh = Freshness(settings) if "writer" in names else None
        try:
            yield RunningPath(settings, job_pid, running_pid("writer", settings),
                              SourcePosition(rest, job_id, settings.topic_events), fresh, others)
        finally:
            if fresh is not None:
                fresh.close()
    finally:
        for name in names:
            stop_job(name, settings)


# --- steps ------------------------------------------------------------------------------------------


@dataclass
class Step:
    """One offered rate's figures."""

    rate: float
    """Events/s sent."""
    read_per_s: float
    sustained: bool
    job_lag: tuple[int, int]
    """The job's lag at the step's start and end (events)."""
    writer_lag: tuple[int, int]
    """The writer's lag at the step's start and end (rows)."""
    fresh: dict[str, tuple[float, float] | None]
    """Freshness p50 and p99 ms by view (``None``: no event timed)."""
    cpu_us: dict[str, float]
    """CPU µs per event read, by stage."""
    rows_per_event: float
    """Records appended to the rows topic per event read."""


def lag_growth(samples: list[tuple[float, int]], elapsed: float) -> tuple[int, int, float]:
    """A lag's first and last sample ((seconds into the step, lag) pairs), and how much it
    grew over the step: the mean of its last 10 s minus that of its first 10 s.

    >>> lag_growth([(0.5, 10), (5.0, 20), (30.0, 500), (55.0, 900)], 60.0)
    (10, 900, 885.0)
    """
    first = [lag for t, lag in samples if t < 10] or [0]
    last = [lag for t, lag in samples if t > elapsed - 10] or [0]
    return first[0], last[-1], float(np.mean(last) - np.mean(first))


def run_step(path: RunningPath, producer: TopicProducer, records: list[Record],
             timed: list[Timed], sent: int, rate: float, step_s: float) -> Step:
    """Send ``rate`` events/s for ``step_s`` (records ``sent`` onwards, cycled), sampling the
    lags every second and timing an event's freshness twice a second."""
    batch = [cycled(records, i) for i in range(sent, sent + int(rate * step_s))]
    if path.fresh is not None:
        path.fresh.take()
    cpu0, read0, rows0 = path.cpu(), path.position.settled(), path.rows()
    job_lags: list[tuple[float, int]] = []
    writer_lags: list[tuple[float, int]] = []
    start = time.monotonic()
    next_timed = next_sample = start

    def tick(now: float, k: int) -> None:
        nonlocal next_timed, next_sample
        user, item, feeds = timed[(sent + k - 1) % len(records)]
        if path.fresh is not None and now >= next_timed and feeds:
            producer.flush()
            path.fresh.add(user, item, batch[k - 1][2], time.monotonic())
            next_timed = now + 0.5
        if now >= next_sample:
            job_lags.append((now - start, sent + k - path.position()))
            writer_lags.append((now - start, path.writer_lag()))
            next_sample = now + 1.0

    send_at(producer, batch, rate, tick)
    elapsed = time.monotonic() - start
    read = path.position.settled() - read0
    cpu1, rows = path.cpu(), path.rows() - rows0
    job_first, job_last, job_growth = lag_growth(job_lags, elapsed)
    writer_first, writer_last, writer_growth = lag_growth(writer_lags, elapsed)
    delays = path.fresh.take() if path.fresh is not None else {}
    return Step(
        rate=len(batch) / elapsed, read_per_s=read / elapsed,
        sustained=job_growth <= 2 * rate and writer_growth <= 2 * rate * 2,
        job_lag=(job_first, job_last), writer_lag=(writer_first, writer_last),
        fresh={view: (float(np.percentile(np.array(d) * 1000, 50)),
                      float(np.percentile(np.array(d) * 1000, 99))) if d else None
               for view, d in delays.items()},
        cpu_us={k: (cpu1[k] - cpu0.get(k, 0.0)) / max(read, 1) * 1e6 for k in cpu1},
        rows_per_event=rows / max(read, 1))


def steps(settings: Settings, job: str, records: list[Record], timed: list[Timed],
          rates: list[float], step_s: float, *, warmup_s: float, keep_going: bool,
          others: dict[str, int]) -> list[Step]:
    """The stepped-rate runs of ``job`` (module docstring); ``keep_going`` runs every rate
    even after one is not sustained; the CPU of ``others`` (name -> pid, e.g.
    :func:`services`) is counted beside the job's and the writer's."""
    results: list[Step] = []
    with (running_path(settings, job, others) as path,
          open_producer(settings, settings.topic_events) as producer):
        sent = 200  # wait until the job reads events
        for i in range(sent):
            producer.send_raw(*records[i])
        producer.flush()
        path.position.wait_for(sent)
        if warmup_s > 0:
            with console.status(f"warm-up: {rates[0]:,.0f} events/s for {warmup_s:.0f} s"):
                warm = int(rates[0] * warmup_s)
                send_at(producer, [cycled(records, i) for i in range(sent, sent + warm)],
                        rates[0])
                sent += warm
        for rate in rates:
            step = run_step(path, producer, records, timed, sent, rate, step_s)
            sent += int(rate * step_s)
            results.append(step)
            console.print(f"offered {rate:,.0f}/s: read {step.read_per_s:,.0f}/s, lag "
                          f"{step.job_lag[0]:,} -> {step.job_lag[1]:,}, "
                          f"{'sustained' if step.sustained else 'NOT sustained'}")
            if not step.sustained and not keep_going:
                break
    return results


def print_steps(job: str, results: list[Step], out: Path | None) -> None:
    """Print the steps' table, and write it to ``out/<job>_steps.md`` with ``out``."""
    title = f"feature path ({job} job{' + Feast writer' if job == 'features' else ''}), " \
            "Taobao events, steps of offered rate"
    stages = sorted({k for r in results for k in r.cpu_us})
    columns = ["offered/s", "read/s", "sustained", "job lag start→end", "writer lag start→end",
               "user fresh p50/p99 ms", "item fresh p50/p99 ms", "rows/event",
               *(f"CPU µs/ev {s}" for s in stages)]

    def ms(p: tuple[float, float] | None) -> str:
        return "—" if p is None else f"{p[0]:,.0f} / {p[1]:,.0f}"

    rows = [[f"{r.rate:,.0f}", f"{r.read_per_s:,.0f}", "yes" if r.sustained else "no",
             f"{r.job_lag[0]:,} → {r.job_lag[1]:,}", f"{r.writer_lag[0]:,} → {r.writer_lag[1]:,}",
             ms(r.fresh.get(USER_VIEW)), ms(r.fresh.get(ITEM_VIEW)), f"{r.rows_per_event:.2f}",
             *(f"{r.cpu_us.get(s, 0.0):,.0f}" for s in stages)] for r in results]
    console.print(table(title, columns, rows))
    if out:
        write_report(out, f"{job}_steps.md", [f"## {title}", "", *markdown_table(columns, rows)])


# --- bounded runs -------------------------------------------------------------------------------------


def bounded_run(job: str, records: list[Record], base: Settings) -> dict[str, float]:
    """A bounded run of ``job`` over ``records`` in a child process (module docstring); also
    the preload's events/s."""
    with tempfile.TemporaryDirectory(prefix="bench-bounded-") as tmp:
        settings = fresh_settings(base, Path(tmp))
        report = Path(tmp) / "net-runtime"
        with fresh_topics(settings):
            produced = preload(settings, settings.topic_events, records)
            child = run_sampled([sys.executable, __file__, "--child", job,
                                 "--report", str(report)], settings)
        net_ms, end_ms = (float(x) for x in report.read_text().split())
    cpu = child.cpu_between(end_ms - net_ms, end_ms)
    return {"events": len(records), "per_s": len(records) / (net_ms / 1000),
            "cpu_us": cpu / len(records) * 1e6, "wall_s": child.wall_s,
            "with_startup_per_s": len(records) / child.wall_s, "produced_per_s": produced}


def child(job: str, report: Path) -> None:
    """Run ``job`` bounded in this process and write its net run time (ms) and the wall time
    (ms) it ended at to ``report``."""
    settings = load_settings()
    env = create_env(job, settings)
    import_module(JOBS[job]).build_job(env, settings, bounded=True)
    result = env.execute(f"streamrank-{job}")
    report.write_text(f"{result.get_net_runtime()} {time.time() * 1000}")


def bounded(base: Settings, events: list[Event], out: Path | None) -> None:
    """The bounded runs of :data:`BOUNDED` on the same events, side by side."""
    load_before = os.getloadavg()[0]
    records = [record(e) for e in events]
    runs = {}
    for name, job in BOUNDED.items():
        with console.status(f"{name}: {len(records):,} events, bounded"):
            runs[name] = bounded_run(job, records, base)
    producer = statistics.median(r["produced_per_s"] for r in runs.values())
    title = (f"bounded runs, Taobao sample with impressions, parallelism "
             f"{base.job_parallelism}, {base.events_partitions} partitions, {os.cpu_count()} "
             f"cores, load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    columns = ("what", "events", "events/s sustained", "CPU µs/event", "with start-up/s",
               "wall s")
    rows = [("producer (EventProducer, 1 process, acked)", f"{len(records):,}",
             f"{producer:,.0f}", "", "", "")]
    rows += [(name, f"{r['events']:,.0f}", f"{r['per_s']:,.0f}", f"{r['cpu_us']:.1f}",
              f"{r['with_startup_per_s']:,.0f}", f"{r['wall_s']:.1f}")
             for name, r in runs.items()]
    console.print(table(title, columns, rows))
    if out:
        write_report(out, "features_bounded.md", [
            f"# {title}", "", *markdown_table(columns, rows), "",
            f"Command: `.venv/bin/python bench/bench_features_job.py --bounded "
            f"--events {len(records)} --out {out}`"])


# --- equality ---------------------------------------------------------------------------------------


def topic_examples(settings: Settings) -> list[TrainingExample]:
    """Every example on the run's examples topic (read until 5 s bring none)."""
    consumer = Consumer(consumer_config(settings, f"bench-{uuid.uuid4().hex[:8]}"))
    consumer.subscribe([settings.topic_examples])
    got: list[TrainingExample] = []
    idle = 0
    while idle < 5:
        batch = [decode_example(value) for m in consumer.consume(5000, 1.0)
                 if not m.error() and (value := m.value()) is not None]
        got += batch
        idle = 0 if batch else idle + 1
    consumer.close()
    return got


def equality(settings: Settings, events: list[Event]) -> None:
    """The whole-sample comparison of ``features`` with the reference (module docstring)."""
    with EventProducer(settings) as producer:
        producer.send_many(track(events, description="produce"))
    started = time.monotonic()
    for name in ("features", "writer"):
        done = subprocess.run(job_command(name), env=detached_env(settings),
                              capture_output=True, check=False)
        if done.returncode:
            raise RuntimeError(done.stdout.decode()[-3000:] + done.stderr.decode()[-3000:])
    wall = time.monotonic() - started
    rows, examples = reference(events, settings)
    row_bad = row_differences(rows, open_store(settings))
    got = topic_examples(settings)
    ex_bad = example_differences(examples, got)
    console.print(table(
        f"features job vs the reference: {len(events):,} events",
        ("events", "job + writer wall s", "rows compared", "row differences",
         "examples (reference)", "examples on the topic", "example differences"),
        [(f"{len(events):,}", f"{wall:,.0f}", f"{len(rows):,}", f"{len(row_bad):,}",
          f"{len(examples):,}", f"{len(got):,}", f"{len(ex_bad):,}")]))
    for line in (row_bad + ex_bad)[:20]:
        console.print(line)


def parse_args() -> argparse.Namespace:
    """The command line (module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", choices=("features", "validate"), default="features")
    parser.add_argument("--rates", default="5000,10000,20000", help="offered events/s, in steps")
    parser.add_argument("--step-s", type=float, default=60.0, help="seconds per offered rate")
    parser.add_argument("--warmup-s", type=float, default=60.0,
                        help="seconds at the first rate, not measured, before the steps")
    parser.add_argument("--keep-going", action="store_true",
                        help="run every rate, even after one is not sustained")
    parser.add_argument("--rows", type=int, default=None, help="sample rows (default: all)")
    parser.add_argument("--redis-db", type=int, default=11,
                        help="the bench's own Redis database (emptied first)")
    parser.add_argument("--bounded", action="store_true",
                        help="bounded runs of validate and features on a preloaded topic")
    parser.add_argument("--events", type=int, default=300_000,
                        help="events of the bounded runs")
    parser.add_argument("--equality", action="store_true",
                        help="the features job and the writer against the reference")
    parser.add_argument("--out", type=Path, help="directory for the markdown tables")
    parser.add_argument("--child", choices=sorted(BOUNDED.values()), help=argparse.SUPPRESS)
    parser.add_argument("--report", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.equality and args.job != "features":
        parser.error("--equality compares the features job with the reference")
    return args


def main() -> None:
    args = parse_args()
    if args.child:
        child(args.child, args.report)
        return
    base = load_settings()
    with console.status("reading the sample"):
        events = sample_events(base, args.rows)
    if args.bounded:
        bounded(base, events[:args.events], args.out)
        return
    with (tempfile.TemporaryDirectory(prefix="bench-features-") as tmp,
          path_settings(base, Path(tmp) / "run", args.redis_db) as settings):
        if args.equality:
            equality(settings, events)
            return
        records, timed = encoded(events)
        results = steps(settings, args.job, records, timed,
                        [float(r) for r in args.rates.split(",")], args.step_s,
                        warmup_s=args.warmup_s, keep_going=args.keep_going,
                        others=services(base))
    print_steps(args.job, results, args.out)


if __name__ == "__main__":
    main()
