"""features-fast benchmark: validation alone, the whole feature path, and today's Python
``features`` job, in one run on the same events.

    .venv/bin/python bench/bench_features_fast.py [--events N] [--python-events N]
        [--rates 10000,20000,30000] [--rate-s 60] [--out bench/out]

Events: the shared Taobao sample through the impression rule (its own event times), preloaded
into a fresh ``events`` topic (``settings.events_partitions`` partitions).

* **Preloaded topic**: each job runs bounded in a child process (this script builds it with
  the job's own ``build_job``) on ``--events`` events; events/s are over the job's net run
  time as Flink reports it (from its start on the MiniCluster to its end, so without the JVM
  start and the job submission, with the Kafka source's start), CPU µs/event over the same
  interval for the child's process tree. Today's Python job runs on ``--python-events`` (it
  is slow).
* **Fixed offered rate**: the whole path runs unbounded; this process sends events at each of
  ``--rates`` for ``--rate-s`` seconds and samples the consumer lag (end offsets minus the
  job's committed offsets, committed at each checkpoint) every 2 s. A rate is sustained when
  the lag's slope over the second half of the interval is under 2 % of the rate and the lag
  at the end is under 3 checkpoint intervals of traffic.

The machine is shared: compare rows of one run (ratios), not figures across runs. Runs of
fewer than ~300k events mostly measure the source's start and the JIT's warm-up.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from confluent_kafka import Consumer, TopicPartition
from rich.console import Console
from rich.table import Table

from bench_ingest import Record, cpu_between, produce, run_sampled, tree_cpu_s
from connectors.admin import delete_topics, ensure_topics, end_offsets
from connectors.events import encode_event
from connectors.kafka_config import consumer_config
from connectors.logs import read_log
from connectors.producer import EventProducer, UnknownTopic
from features.impressions import with_impressions
from features.state import HOUR_MS
from features.store import apply_repo
from jobs.launch import settings_env, stop_job
from jobs.runtime import group_id
from streamrank.config import Settings

ROOT = Path(__file__).resolve().parents[1]
REDIS_DB = 11


def sample_records(settings: Settings, n: int) -> list[Record]:
    """The first ``n`` events of the Taobao sample through the impression rule."""
    events, _ = read_log(settings.sample_log, "taobao", settings=settings)
    out: list[Record] = []
    for event in with_impressions(events, settings):
        out.append((encode_event(event), event.user_id.encode(), event.event_time))
        if len(out) == n:
            break
    return out


def _producer(settings: Settings) -> EventProducer:
    """A producer of a topic just created (its metadata can take a moment to show it)."""
    for _ in range(20):
        try:
            return EventProducer(settings)
        except UnknownTopic:
            time.sleep(0.5)
    return EventProducer(settings)


def fresh(base: Settings, tag: str) -> Settings:
    """Settings with fresh topics, run directory and Feast Redis db."""
    settings = base.model_copy(update={
        "topic_events": f"bench-fast-events-{tag}", "topic_dlq": f"bench-fast-dlq-{tag}",
        "topic_examples": f"bench-fast-examples-{tag}",
        "topic_feature_rows": f"bench-fast-rows-{tag}",
        "run_dir": Path(tempfile.mkdtemp(prefix="bench-fast-")),
        "redis_url": base.redis_url.rsplit("/", 1)[0] + f"/{REDIS_DB}"})
    ensure_topics(settings, {settings.topic_events: settings.events_partitions,
                             settings.topic_dlq: 1,
                             settings.topic_examples: settings.events_partitions,
                             settings.topic_feature_rows: settings.events_partitions})
    return settings


def cleanup(settings: Settings) -> None:
    delete_topics(settings, [settings.topic_events, settings.topic_dlq, settings.topic_examples,
                             settings.topic_feature_rows])
    shutil.rmtree(settings.run_dir, ignore_errors=True)


def bounded_run(job: str, records: list[Record], base: Settings) -> dict[str, float]:
    """A bounded run of ``job`` over ``records`` in a child process: events/s over the job's
    net run time (from its start on the cluster to its end: no JVM start or job submission),
    CPU µs/event of the process tree over that time, and the wall time of the whole child."""
    settings = fresh(base, uuid.uuid4().hex[:8])
    try:
        produce(settings, records)
        if job == "features":
            apply_repo(settings)
        report = settings.run_dir.resolve() / "net-runtime"
        cmd = [sys.executable, __file__, "--child", job, "--report", str(report)]
        wall, samples = run_sampled(cmd, {**os.environ, **settings_env(settings)})
        net_ms, end_ms = (float(x) for x in report.read_text().split())
    finally:
        cleanup(settings)
    cpu = cpu_between(samples, end_ms - net_ms, end_ms)
    return {"events": len(records), "per_s": len(records) / (net_ms / 1000),
            "cpu_us": cpu / len(records) * 1e6, "wall_s": wall,
            "with_startup_per_s": len(records) / wall}


def child(job: str, report: Path) -> None:
    """Run ``job`` bounded in this process and write its net run time (ms) and the wall time
    (ms) it ended at to ``report``; ``validate`` is the validation alone of features-fast."""
    import importlib

    from jobs.features_fast import build_validation_only
    from jobs.launch import JOBS
    from jobs.runtime import create_env
    from streamrank.config import load_settings

    settings = load_settings()
    env = create_env(f"bench-{job}", settings)
    build = (build_validation_only if job == "validate"
             else importlib.import_module(JOBS[job]).build_job)
    build(env, settings, bounded=True)
    result = env.execute(f"bench-{job}")
    report.write_text(f"{result.get_net_runtime()} {time.time() * 1000}")


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


def lag(settings: Settings, consumer: Consumer) -> int:
    """End offsets minus the job's committed offsets, over the events topic."""
    ends = end_offsets(settings, settings.topic_events)
    parts = [TopicPartition(settings.topic_events, p) for p in ends]
    committed = {tp.partition: tp.offset for tp in consumer.committed(parts, timeout=10)}
    return sum(end - max(committed.get(p, 0), 0) for p, end in ends.items())


def offered(records: list[Record], rates: list[int], seconds: float,
            base: Settings, console: Console) -> list[dict[str, float]]:
    """The whole path, unbounded, fed at each rate in turn; lag samples per rate."""
    from jobs.features_fast import JOB
    from jobs.launch import run_job

    settings = fresh(base, uuid.uuid4().hex[:8])
    results = []
    consumer = Consumer(consumer_config(settings, group_id(JOB)))
    try:
        run = run_job(JOB, settings, detach=True)
        with _producer(settings) as producer:
            producer.send_raw(*records[0])
            producer.flush()
            deadline = time.monotonic() + 120
            while lag(settings, consumer) > 0 and time.monotonic() < deadline:
                time.sleep(1)  # the job is up and has committed
            i = 1
            for rate in rates:
                t0 = time.monotonic()
                cpu0 = tree_cpu_s(run.pid)
                samples: list[tuple[float, int]] = []
                sent, next_sample = 0, t0
                with console.status(f"offering {rate:,} events/s for {seconds:.0f} s"):
                    while (now := time.monotonic()) - t0 < seconds:
                        due = int((now - t0) * rate)
                        while sent < due:
                            producer.send_raw(*cycled(records, i))
                            i += 1
                            sent += 1
                        if now >= next_sample:
                            samples.append((now - t0, lag(settings, consumer)))
                            next_sample += 2.0
                        time.sleep(0.001)
                cpu = tree_cpu_s(run.pid) - cpu0
                t = np.array([s[0] for s in samples])
                lags = np.array([s[1] for s in samples], dtype=float)
                half = t >= seconds / 2
                slope = float(np.polyfit(t[half], lags[half], 1)[0]) if half.sum() > 1 else 0.0
                end_lag = float(lags[-1])
                ok = slope < 0.02 * rate and end_lag < 3 * settings.checkpoint_interval_ms \
                    / 1000 * rate
                results.append({"rate": rate, "sent_per_s": sent / seconds, "slope": slope,
                                "end_lag": end_lag, "cpu_us": cpu / max(sent, 1) * 1e6,
                                "sustained": ok})
                if not ok:
                    break
    finally:
        stop_job(JOB, settings)
        consumer.close()
        cleanup(settings)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--python-events", type=int, default=6_000, help="0: skip it")
    parser.add_argument("--rates", default="10000,20000,30000")
    parser.add_argument("--rate-s", type=float, default=60.0)
    parser.add_argument("--out", type=Path, help="directory for features_fast.md")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--report", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.report)
        return
    base = Settings()
    console = Console(width=150)
    load_before = os.getloadavg()[0]
    with console.status("reading the sample"):
        records = sample_records(base, args.events)
    runs = {}
    for name, job, n in [
            ("validation alone (features-fast, Java)", "validate", len(records)),
            ("whole path (features-fast, Java)", "features-fast", len(records)),
            ("today's features job (Python)", "features", args.python_events)]:
        if n == 0:
            continue
        with console.status(f"{name}: {n:,} events, bounded"):
            runs[name] = bounded_run(job, records[:n], base)
    rates = [int(r) for r in args.rates.split(",") if r]
    offered_runs = offered(records, rates, args.rate_s, base, console) if rates else []

    title = (f"features-fast, Taobao sample with impressions, parallelism "
             f"{base.job_parallelism}, {base.events_partitions} partitions, {os.cpu_count()} "
             f"cores, load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    headers = ("what", "events", "events/s sustained", "CPU µs/event", "with start-up/s",
               "wall s")
    rows = [(name, f"{r['events']:,}", f"{r['per_s']:,.0f}", f"{r['cpu_us']:.1f}",
             f"{r['with_startup_per_s']:,.0f}", f"{r['wall_s']:.1f}")
            for name, r in runs.items()]
    python = runs.get("today's features job (Python)", {}).get("per_s")
    whole = runs["whole path (features-fast, Java)"]["per_s"]
    ratio = (f"Whole path: {whole / python:,.0f}x today's Python features job in this run."
             if python else "Today's Python features job not run (--python-events 0).")
    rate_headers = ("offered events/s", "sent events/s", "lag slope /s", "lag at end",
                    "CPU µs/event", "sustained")
    rate_rows = [(f"{r['rate']:,}", f"{r['sent_per_s']:,.0f}", f"{r['slope']:,.0f}",
                  f"{r['end_lag']:,.0f}", f"{r['cpu_us']:.1f}", "yes" if r["sustained"] else "no")
                 for r in offered_runs]
    for t, hs, rs in [(title, headers, rows),
                      (f"whole path at fixed offered rates, {args.rate_s:.0f} s each",
                       rate_headers, rate_rows)]:
        table = Table(title=t)
        for h in hs:
            table.add_column(h, justify="left" if h == "what" else "right")
        for row in rs:
            table.add_row(*row)
        console.print(table)
    console.print(ratio)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        lines = [f"# {title}", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        lines += ["", ratio, "", f"## whole path at fixed offered rates, {args.rate_s:.0f} s each",
                  "", "| " + " | ".join(rate_headers) + " |", "|" + "---|" * len(rate_headers)]
        lines += ["| " + " | ".join(r) + " |" for r in rate_rows]
        lines += ["", "Command: `.venv/bin/python bench/bench_features_fast.py "
                  f"--events {args.events} --python-events "
                  f"{args.python_events} --rates {args.rates} --rate-s {args.rate_s:.0f} "
                  f"--out {args.out}`", ""]
        (args.out / "features_fast.md").write_text("\n".join(lines))
        console.print(f"wrote {args.out / 'features_fast.md'}")


if __name__ == "__main__":
    main()
