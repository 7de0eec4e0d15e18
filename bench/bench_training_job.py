"""Training job benchmark: examples/s through Kafka and Flink next to the trainer alone.

    .venv/bin/python bench/bench_training_job.py [--examples 60000] [--hash-buckets N] [--out DIR]

The examples are real: the shared Taobao sample through the same impression rule and feature
code as the jobs (:func:`support.real_examples`). Three rows, on the same examples:

* **trainer alone**: :meth:`~models.loop.TrainingLoop.progressive` on pre-decoded batches of
  ``batch_size`` (score, online metrics, learn), in this process;
* **trainer + decode + publisher**: what the job's task does, minus Flink and Kafka: decode each
  record and hand it to the same :class:`~models.loop.TrainingLoop` (de-duplication, batches,
  versions cut by :class:`~models.versions.VersionCutter` at the configured interval,
  encoded and signed; snapshots to a snapshot store in a temporary dir);
* **training job**: the examples preloaded into a fresh ``training.examples`` topic, then
  ``python -m jobs run training --bounded`` in a child process. "examples/s" is over the
  trainer's busy time: from its first report of examples learned to its last before it had
  learned them all (its status file, rewritten every ``min(1 s, delta_interval_s)``, read
  every 0.25 s); "with start-up" divides every example by the process's wall time.
  "CPU µs/example" is the CPU time of the job's whole process tree (JVM, Python) over the same
  busy time, per example learned in it (for the in-process rows, this process's CPU time): on
  a shared machine it varies less than wall time.

The ratio column divides each row by the trainer alone: what Flink, Kafka, decoding and
publishing cost. Timings on shared machines are noisy: compare the rows of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import SecretStr
from support import (
    console,
    fresh_settings,
    fresh_topics,
    job_command,
    markdown_table,
    preload,
    real_examples,
    run_sampled,
    table,
    write_report,
)

from config import Settings, load_settings
from connectors.snapshot_store import SnapshotStore
from connectors.training_examples import TrainingExample, decode_example, encode_example
from jobs.training import JOB, status_path
from models.loop import TrainingLoop
from models.trainer import OnlineTrainer
from models.versions import VersionCutter


def trainer_alone(settings: Settings, examples: Sequence[TrainingExample]) -> dict[str, float]:
    """Examples/s and CPU µs/example of the training loop's ``progressive`` on batches of
    ``batch_size`` (no publisher)."""
    loop = TrainingLoop(OnlineTrainer(settings), settings)
    t0, c0 = time.perf_counter(), time.process_time()
    for start in range(0, len(examples), settings.batch_size):
        loop.progressive(examples[start:start + settings.batch_size])
    return {"per_s": len(examples) / (time.perf_counter() - t0),
            "cpu_us": (time.process_time() - c0) / len(examples) * 1e6}


def trainer_with_publisher(settings: Settings, records: Sequence[bytes]) -> dict[str, float]:
    """Examples/s and CPU µs/example of decode + the training loop with its publisher
    (de-duplication, batches, versions to a temporary snapshot store), record by record as
    the job's task does."""
    trainer = OnlineTrainer(settings)
    with tempfile.TemporaryDirectory(prefix="bench-training-store-") as store_dir:
        publisher = VersionCutter(trainer, settings, SnapshotStore(store_dir))
        loop = TrainingLoop(trainer, settings, publisher)
        t0, c0 = time.perf_counter(), time.process_time()
        for record in records:
            loop.add((decode_example(record),))
        loop.close()
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"per_s": len(records) / elapsed, "cpu_us": cpu / len(records) * 1e6,
            "versions": publisher.version}


Report = tuple[int, int]
"""A status report of the trainer: its wall time in ms, the examples it had learned."""


def busy_span(reports: list[Report]) -> tuple[Report, Report] | None:
    """The first and the last of ``reports`` (in time order) taken while the trainer had
    learned some but not yet all of its examples, a span it was busy throughout (``None``:
    fewer than two such reports).

    >>> busy_span([(1000, 0), (2000, 256), (3000, 5120), (4000, 9984), (4100, 10000)])
    ((2000, 256), (4000, 9984))
    >>> busy_span([(1000, 0), (2000, 256), (2100, 300)]) is None
    True
    """
    busy = [(ms, n) for ms, n in reports if 0 < n < reports[-1][1]]
    return (busy[0], busy[-1]) if len(busy) >= 2 and busy[-1][1] > busy[0][1] else None


def job_run(settings: Settings, records: Sequence[bytes]) -> dict[str, float]:
    """Preload a fresh examples topic, run the job bounded on it in a child process, time it
    by the trainer's status reports (module docstring)."""
    statuses: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        run = fresh_settings(settings, Path(tmp))

        def read_status() -> None:
            try:
                body = json.loads(status_path(run).read_text())
            except (OSError, ValueError):
                return  # not written yet
            statuses[body["updated_ms"]] = body

        with fresh_topics(run):
            preload(run, run.topic_examples, [(record, None, 0) for record in records])
            child = run_sampled(job_command(JOB), run, read_status)
            read_status()  # the last, written as the task closed
    final = statuses[max(statuses)]
    span = busy_span(sorted((ms, body["examples"]) for ms, body in statuses.items()))
    per_s = cpu_us = float("nan")
    if span is not None:
        (first_ms, first), (last_ms, last) = span
        per_s = (last - first) / ((last_ms - first_ms) / 1000)
        cpu_us = child.cpu_between(first_ms, last_ms) / (last - first) * 1e6
    return {"examples": final["examples"], "per_s": per_s, "cpu_us": cpu_us,
            "wall_s": child.wall_s, "with_startup_per_s": final["examples"] / child.wall_s,
            "versions": final["version"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=60_000, help="real examples to use")
    parser.add_argument("--log", type=Path, default=None,
                        help="Taobao-format log (default: the shared sample)")
    parser.add_argument("--hash-buckets", type=int, default=None,
                        help="rows per embedding table (default: the config's)")
    parser.add_argument("--out", type=Path, default=None,
                        help="write bench_training_job.md here")
    args = parser.parse_args()

    torch.set_num_threads(1)
    overrides: dict[str, object] = {"delta_hmac_key": SecretStr("bench-key")}
    if args.hash_buckets:
        overrides["hash_buckets"] = args.hash_buckets
    settings = load_settings(**overrides)
    log = args.log or settings.sample_log
    with console.status(f"building {args.examples:,} examples from {log.name}"):
        examples = real_examples(settings, log, args.examples)
        records = [encode_example(x) for x in examples]
    with console.status("trainer alone"):
        alone = trainer_alone(settings, examples)
    with console.status("trainer + decode + publisher"):
        published = trainer_with_publisher(settings, records)
    with console.status(f"training job: preloading {len(records):,} examples and running"):
        job = job_run(settings, records)

    title = (f"training throughput, {len(records):,} real examples (hash_buckets="
             f"{settings.hash_buckets:,}, batch_size={settings.batch_size}, a version every "
             f"{settings.delta_interval_s:g} s or {settings.delta_interval_examples:,} examples, "
             f"snapshot every {settings.snapshot_every}; parallelism 1, {os.cpu_count()} cores)")
    columns = ["what", "examples/s", "ratio", "with start-up", "wall s", "CPU µs/example",
               "versions"]
    rows = [
        ("trainer alone (progressive, in-process)", f"{alone['per_s']:,.0f}", "1.00", "", "",
         f"{alone['cpu_us']:.0f}", ""),
        ("trainer + decode + publisher (in-process, no Kafka)", f"{published['per_s']:,.0f}",
         f"{published['per_s'] / alone['per_s']:.2f}", "", "", f"{published['cpu_us']:.0f}",
         f"{published['versions']}"),
        ("training job (Kafka -> Flink -> trainer -> Kafka)", f"{job['per_s']:,.0f}",
         f"{job['per_s'] / alone['per_s']:.2f}", f"{job['with_startup_per_s']:,.0f}",
         f"{job['wall_s']:.1f}", f"{job['cpu_us']:.0f}", f"{job['versions']}"),
    ]
    console.print(table(title, columns, rows))
    if job["examples"] != len(records):
        console.print(f"[red]the trainer learned {job['examples']:,} of {len(records):,} examples")
    if args.out is not None:
        buckets = f" --hash-buckets {args.hash_buckets}" if args.hash_buckets else ""
        write_report(args.out, "bench_training_job.md", [
            f"# {title}", "", *markdown_table(columns, rows), "",
            "Command: `.venv/bin/python bench/bench_training_job.py --examples "
            f"{args.examples}{buckets} --out {args.out}`"])


if __name__ == "__main__":
    main()
