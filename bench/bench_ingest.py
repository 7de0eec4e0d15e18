"""Ingest benchmark: events/s into Kafka from one Python process, and the ingest job's rate.

    .venv/bin/python bench/bench_ingest.py [--events N] [--modes thread,process] [--out bench/out]

For each Flink run it preloads ``--events`` Taobao-shaped events (the shared sample's users,
items, categories and behaviours, re-timed to now) into a fresh topic with
:class:`~connectors.producer.EventProducer` (timed: the producer figure), then runs a bounded
job on it in a fresh process and reports the validated events/s from the first record to the
last, and with start-up included (process start to exit). Where the time goes: decoding alone
in Python, a Flink job whose only Python function counts the raw records (``noop``: source,
JVM-Python crossing, counting), and the full ingest job in thread and process mode. "CPU
µs/event" is the CPU time of the job's whole process tree (JVM, Python) between its first and
last record divided by the events: on a shared machine it varies less than wall time. "CPU s"
is the run's total, start-up included. Timings are noisy: compare the rows of one run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from rich.console import Console
from rich.table import Table

from config import Settings, settings_env
from connectors.admin import delete_topics, ensure_topics
from connectors.events import Event, decoder, encode_event
from connectors.logs import read_log
from connectors.producer import EventProducer, UnknownTopic
from jobs.runtime import read_stats

ROOT = Path(__file__).resolve().parents[1]
Record = tuple[bytes, bytes, int]
"""A pre-encoded event: value, key (user), event time in ms (its Kafka timestamp)."""


def record(event: Event) -> Record:
    """``event`` as :class:`connectors.producer.EventProducer` sends it."""
    return encode_event(event), event.user_id.encode(), event.event_time


def taobao_records(n: int, settings: Settings) -> list[Record]:
    """``n`` pre-encoded events cycling over the Taobao sample's (``settings.sample_log``),
    re-timed from now on, 100 per ms, with unique IDs."""
    events, _ = read_log(settings.sample_log, "taobao", settings=settings)
    sample = list(events)
    start = int(time.time() * 1000)
    out = []
    for i in range(n):
        event = sample[i % len(sample)].model_copy(
            update={"event_id": f"bench-{i}", "event_time": start + i // 100})
        out.append(record(event))
    return out


def produce(settings: Settings, records: list[Record]) -> float:
    """Send the records to ``settings.topic_events`` and wait for every ack; events/s."""
    for _ in range(50):  # a topic created a moment ago may not be in the metadata yet
        try:
            producer = EventProducer(settings)
            break
        except UnknownTopic:
            time.sleep(0.2)
    t0 = time.perf_counter()
    with producer:
        for value, key, event_time in records:
            producer.send_raw(value, key, event_time)
    return len(records) / (time.perf_counter() - t0)


def decode_rate(settings: Settings, records: list[Record]) -> tuple[float, float]:
    """Events/s (wall) and CPU µs/event of :func:`connectors.events.decoder` alone, here."""
    decode = decoder(settings)
    t0, c0 = time.perf_counter(), time.process_time()
    for value, _, _ in records:
        decode(value)
    cpu = time.process_time() - c0
    return len(records) / (time.perf_counter() - t0), cpu / len(records) * 1e6


def noop_job(mode: str) -> None:
    """The ``noop`` run (in a child process): the Kafka source and one Python function that
    only counts the raw records (as ``valid``)."""
    from pyflink.common import WatermarkStrategy
    from pyflink.datastream import ProcessFunction

    from jobs.runtime import StatsFile, create_env, discarding_sink, kafka_source, stats_dir

    class Count(ProcessFunction):
        def __init__(self, settings: Settings) -> None:
            self._settings = settings

        def open(self, runtime_context: object) -> None:
            self._stats = StatsFile(stats_dir("noop", self._settings), "noop", 0)

        def process_element(self, raw: bytes, ctx: ProcessFunction.Context) -> None:
            self._stats.add("valid")

        def close(self) -> None:
            self._stats.close()

    settings = Settings()
    env = create_env("noop", settings, mode=mode)  # type: ignore[arg-type]
    source = kafka_source(settings, settings.topic_events, "bench-noop", bounded=True)
    env.from_source(source, WatermarkStrategy.no_watermarks(), "events") \
        .process(Count(settings)).sink_to(discarding_sink())
    env.execute("bench-noop")


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid`` and its live descendants."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        p = int(stat.parent.name)
        parents[p] = int(fields[1])
        cpu[p] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += cpu.get(p, 0.0)
        todo += [c for c, parent in parents.items() if parent == p]
    return total


def run_sampled(cmd: list[str], env: dict[str, str]) -> tuple[float, list[tuple[float, float]]]:
    """Run ``cmd``; its wall seconds and (wall ms, CPU s of its process tree) every 0.25 s."""
    samples: list[tuple[float, float]] = []
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    while proc.poll() is None:
        samples.append((time.time() * 1000, tree_cpu_s(proc.pid)))
        time.sleep(0.25)
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    return time.perf_counter() - t0, samples


def cpu_between(samples: list[tuple[float, float]], start_ms: float, end_ms: float) -> float:
    """CPU seconds the sampled tree used between two wall times (nearest samples)."""
    def at(t: float) -> float:
        return min(samples, key=lambda s: abs(s[0] - t))[1]
    return at(end_ms) - at(start_ms)


def flink_run(job: str, mode: str, records: list[Record],
              settings: Settings) -> dict[str, float]:
    """Preload a fresh topic, run ``job`` bounded on it in a child process, read its stats."""
    tag = uuid.uuid4().hex[:8]
    run = settings.model_copy(update={
        "topic_events": f"bench-ingest-events-{tag}", "topic_dlq": f"bench-ingest-dlq-{tag}",
        "run_dir": Path(tempfile.mkdtemp(prefix=f"bench-{job}-"))})
    ensure_topics(run, {run.topic_events: run.events_partitions, run.topic_dlq: 1})
    try:
        produced = produce(run, records)
        if job == "noop":
            cmd = [sys.executable, __file__, "--child-noop", "--modes", mode]
        else:
            cmd = [sys.executable, "-m", "jobs", "run", job, "--bounded", "--mode", mode]
        wall, samples = run_sampled(cmd, {**os.environ, **settings_env(run)})
        stats = read_stats(job, run)
    finally:
        delete_topics(run, [run.topic_events, run.topic_dlq])
        shutil.rmtree(run.run_dir, ignore_errors=True)
    valid = stats["counts"].get("valid", 0)
    first, last = stats["first_ms"].get("valid", 0), stats["last_ms"].get("valid", 0)
    span = (last - first) / 1000
    cpu = cpu_between(samples, first, last) if valid else 0.0
    return {"produced_per_s": produced, "valid": valid,
            "invalid": stats["counts"].get("invalid", 0),
            "per_s": valid / span if span > 0 else 0.0, "wall_s": wall,
            "with_startup_per_s": valid / wall, "cpu_us": cpu / valid * 1e6 if valid else 0.0,
            "cpu_s": max((cpu for _, cpu in samples), default=0.0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--modes", default="thread,process", help="Python execution modes")
    parser.add_argument("--out", type=Path, help="directory for ingest.md")
    parser.add_argument("--child-noop", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_noop:
        noop_job(args.modes)
        return
    settings = Settings()
    modes = args.modes.split(",")
    console = Console(width=150)
    load_before = os.getloadavg()[0]
    records = taobao_records(args.events, settings)
    decoded, decode_us = decode_rate(settings, records)
    runs = [("noop", modes[0])] + [("ingest", m) for m in modes]
    results = {}
    for job, mode in runs:
        with console.status(f"{job} ({mode}): preloading {args.events:,} events and running"):
            results[(job, mode)] = flink_run(job, mode, records, settings)
    producer = statistics.median(r["produced_per_s"] for r in results.values())

    title = (f"ingest, {args.events:,} events, parallelism {settings.job_parallelism}, "
             f"{os.cpu_count()} cores, load average {load_before:.1f} before, "
             f"{os.getloadavg()[0]:.1f} after")
    headers = ("what", "events/s", "with start-up", "wall s", "CPU µs/event", "CPU s", "note")
    rows = [("producer (EventProducer, 1 process)", f"{producer:,.0f}", "", "", "", "",
             f"median of {len(results)} preloads, acked"),
            ("decode alone (Python)", f"{decoded:,.0f}", "", "", f"{decode_us:.1f}", "",
             "in the benchmark's process")]
    for (job, mode), r in results.items():
        what = ("Flink noop: source + count" if job == "noop" else "ingest job") + f" ({mode})"
        rows.append((what, f"{r['per_s']:,.0f}", f"{r['with_startup_per_s']:,.0f}",
                     f"{r['wall_s']:.1f}", f"{r['cpu_us']:.1f}", f"{r['cpu_s']:.1f}",
                     f"{r['valid']:,} counted, {r['invalid']:,} dead-lettered"))
    table = Table(title=title)
    for header in headers:
        table.add_column(header, justify="left" if header in ("what", "note") else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    noop, full = results[("noop", modes[0])]["cpu_us"], results[("ingest", modes[0])]["cpu_us"]
    split = (f"Where the CPU goes per event ({modes[0]} mode): {noop:.1f} µs source, JVM-Python "
             f"hand-over and counting (noop); {decode_us:.1f} µs decoding and validating "
             f"in Python; {full - noop - decode_us:.1f} µs the rest of the ingest job "
             "(handing the valid tuple back to the JVM, watermark lookup, stats, DLQ sink).")
    console.print(split)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        lines = [f"# {title}", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines += ["", split, "", "Command: `.venv/bin/python bench/bench_ingest.py "
                  f"--events {args.events} --modes {args.modes} --out {args.out}`", ""]
        (args.out / "ingest.md").write_text("\n".join(lines))
        console.print(f"wrote {args.out / 'ingest.md'}")


if __name__ == "__main__":
    main()
