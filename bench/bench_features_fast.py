"""features-fast benchmark: validation alone, the whole feature path, and today's Python
``features`` job, in one run on the same events; then the whole path with the Feast writer at
fixed offered rates.

    .venv/bin/python bench/bench_features_fast.py [--events N] [--python-events N]
        [--rates 5000,10000,20000] [--rate-s 60] [--warmup-s 60] [--out bench/out]

Events: the shared Taobao sample through the impression rule (its own event times).

* **Preloaded topic**: each job runs bounded in a child process (this script builds it with
  the job's own ``build_job``) on ``--events`` events preloaded into a fresh ``events`` topic
  (``settings.events_partitions`` partitions); events/s are over the job's net run time as
  Flink reports it (from its start on the MiniCluster to its end, so without the JVM start
  and the job submission, with the Kafka source's start), CPU µs/event over the same interval
  for the child's process tree. Today's Python job runs on ``--python-events`` (it is slow).
  Runs of fewer than ~300k events mostly measure the source's start and the JIT's warm-up.
* **Fixed offered rates**: ``features-fast`` and the Feast writer run detached, unbounded, and
  this process sends the events (repeated with new IDs and later times as needed) at the
  first rate for ``--warmup-s`` seconds (not measured: the JIT's warm-up), then at each of
  ``--rates`` for ``--rate-s`` seconds: :func:`bench_features_job.steps` (lag of the job's
  source and of the writer, sustained or not, freshness produce → ``get_online_features``
  for user and item rows, CPU µs per event per stage).

The machine is shared: compare rows of one run (ratios), not figures across runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

from bench_features_job import encoded, fresh_settings, print_steps, services, steps
from bench_ingest import Record, cpu_between, produce, run_sampled
from rich.console import Console
from rich.table import Table

from config import Settings, settings_env
from connectors.admin import delete_topics, topic_specs
from connectors.events import Event
from connectors.logs import read_log
from features.impressions import with_impressions
from jobs.features_fast import JOB

REDIS_DB = 11


def sample_events(settings: Settings, n: int) -> list[Event]:
    """The first ``n`` events of the Taobao sample through the impression rule."""
    events, _ = read_log(settings.sample_log, "taobao", settings=settings)
    return list(islice(with_impressions(events, settings), n))


def bounded_run(job: str, records: list[Record], base: Settings) -> dict[str, float]:
    """A bounded run of ``job`` over ``records`` in a child process: events/s over the job's
    net run time (from its start on the cluster to its end: no JVM start or job submission),
    CPU µs/event of the process tree over that time, and the wall time of the whole child."""
    settings = fresh_settings(base, Path(tempfile.mkdtemp(prefix="bench-fast-")), REDIS_DB)
    try:
        produce(settings, records)
        report = settings.run_dir.resolve() / "net-runtime"
        cmd = [sys.executable, __file__, "--child", job, "--report", str(report)]
        wall, samples = run_sampled(cmd, {**os.environ, **settings_env(settings)})
        net_ms, end_ms = (float(x) for x in report.read_text().split())
    finally:
        delete_topics(settings, list(topic_specs(settings)))
        shutil.rmtree(settings.run_dir, ignore_errors=True)
    cpu = cpu_between(samples, end_ms - net_ms, end_ms)
    return {"events": len(records), "per_s": len(records) / (net_ms / 1000),
            "cpu_us": cpu / len(records) * 1e6, "wall_s": wall,
            "with_startup_per_s": len(records) / wall}


def child(job: str, report: Path) -> None:
    """Run ``job`` bounded in this process and write its net run time (ms) and the wall time
    (ms) it ended at to ``report``; ``validate`` is the validation alone of features-fast."""
    import importlib

    from config import load_settings
    from jobs.features_fast import build_validation_only
    from jobs.launch import JOBS
    from jobs.runtime import create_env

    settings = load_settings()
    env = create_env(f"bench-{job}", settings)
    build = (build_validation_only if job == "validate"
             else importlib.import_module(JOBS[job]).build_job)
    build(env, settings, bounded=True)
    result = env.execute(f"bench-{job}")
    report.write_text(f"{result.get_net_runtime()} {time.time() * 1000}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--python-events", type=int, default=6_000, help="0: skip it")
    parser.add_argument("--rates", default="5000,10000,20000",
                        help="offered events/s of the whole path with the Feast writer")
    parser.add_argument("--rate-s", type=float, default=60.0)
    parser.add_argument("--warmup-s", type=float, default=60.0)
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
        records, timed = encoded(sample_events(base, args.events))
    runs = {}
    for name, job, n in [
            ("validation alone (features-fast, Java)", "validate", len(records)),
            ("whole path (features-fast, Java)", "features-fast", len(records)),
            ("today's features job (Python)", "features", args.python_events)]:
        if n == 0:
            continue
        with console.status(f"{name}: {n:,} events, bounded"):
            runs[name] = bounded_run(job, records[:n], base)
    rates = [float(r) for r in args.rates.split(",") if r]
    stepped = []
    if rates:
        with tempfile.TemporaryDirectory(prefix="bench-fast-steps-") as tmp:
            settings = fresh_settings(base, Path(tmp) / "run", REDIS_DB)
            try:
                stepped = steps(settings, JOB, records, timed, rates, args.rate_s,
                                warmup_s=args.warmup_s, keep_going=True, others=services(base))
            finally:
                delete_topics(settings, list(topic_specs(settings)))

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
    table = Table(title=title)
    for h in headers:
        table.add_column(h, justify="left" if h == "what" else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    console.print(ratio)
    if stepped:
        print_steps(JOB, stepped, args.out)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        lines = [f"# {title}", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        lines += ["", ratio, "", "Command: `.venv/bin/python bench/bench_features_fast.py "
                  f"--events {args.events} --python-events {args.python_events} "
                  f"--rates {args.rates} --rate-s {args.rate_s:.0f} "
                  f"--warmup-s {args.warmup_s:.0f} --out {args.out}`", ""]
        (args.out / "features_fast.md").write_text("\n".join(lines))
        console.print(f"wrote {args.out / 'features_fast.md'}")


if __name__ == "__main__":
    main()
