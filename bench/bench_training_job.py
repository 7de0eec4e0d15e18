"""Training job benchmark: examples/s through Kafka and Flink next to the trainer alone.

    .venv/bin/python bench/bench_training_job.py [--examples 60000] [--hash-buckets N] [--out DIR]

The examples are real: the shared Taobao sample through the same impression rule and feature
code as the jobs (``bench_trainer.real_examples``). Three rows, on the same examples:

* **trainer alone**: :meth:`~models.loop.TrainingLoop.progressive` on pre-decoded batches of
  ``batch_size`` (score, online metrics, learn), in this process;
* **trainer + decode + publisher**: what the job's task does, minus Flink and Kafka: decode each
  record and hand it to the same :class:`~models.loop.TrainingLoop` (de-duplication, batches,
  versions cut by :class:`~models.versions.VersionCutter` at the configured interval,
  encoded and signed; snapshots to a snapshot store in a temporary dir);
* **training job**: the examples preloaded into a fresh ``training.examples`` topic, then
  ``python -m jobs run training --bounded`` in a child process. "examples/s" runs from the
  first example the task received to the last (its stats file); "with start-up" divides by
  the process's wall time. "CPU µs/example" is the CPU time of the job's whole process tree
  (JVM, Python) between the first and the last example, per example (for the in-process rows,
  this process's CPU time): on a shared machine it varies less than wall time.

The ratio column divides each row by the trainer alone: what Flink, Kafka, decoding and
publishing cost. Timings on shared machines are noisy: compare the rows of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import torch
from bench_ingest import cpu_between, run_sampled
from bench_trainer import real_examples
from pydantic import SecretStr
from rich.console import Console
from rich.table import Table

from config import Settings, settings_env
from connectors.admin import delete_topics, ensure_topics
from connectors.snapshot_store import SnapshotStore
from connectors.training_examples import TrainingExample, decode_example, encode_example
from jobs.runtime import read_stats
from jobs.training_job import JOB, status_path
from models.loop import TrainingLoop
from models.trainer import OnlineTrainer
from models.versions import VersionCutter

console = Console(width=150)


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


def job_run(settings: Settings, records: Sequence[bytes]) -> dict[str, float]:
    """Preload a fresh examples topic, run the job bounded on it in a child process."""
    from confluent_kafka import Producer

    from connectors.kafka_config import producer_config

    tag = uuid.uuid4().hex[:8]
    run = settings.model_copy(update={
        "topic_examples": f"bench-examples-{tag}", "topic_dlq": f"bench-dlq-{tag}",
        "topic_deltas": f"bench-deltas-{tag}",
        "run_dir": Path(tempfile.mkdtemp(prefix="bench-training-"))})
    topics = {run.topic_examples: run.events_partitions, run.topic_dlq: 1, run.topic_deltas: 1}
    ensure_topics(run, topics)
    try:
        producer = Producer(producer_config(run))
        for record in records:
            while True:
                try:
                    producer.produce(run.topic_examples, record)
                    break
                except BufferError:
                    producer.poll(0.05)
        if producer.flush(60):
            raise RuntimeError("examples still unsent after 60 s")
        cmd = [sys.executable, "-m", "jobs", "run", JOB, "--bounded"]
        wall, samples = run_sampled(cmd, {**os.environ, **settings_env(run)})
        stats = read_stats(JOB, run)
        version = int(json.loads(status_path(run).read_text())["version"])
    finally:
        delete_topics(run, list(topics))
    n = stats["counts"].get("examples", 0)
    first, last = stats["first_ms"].get("examples", 0), stats["last_ms"].get("examples", 0)
    span = (last - first) / 1000
    return {"examples": n, "per_s": (n - 1) / span if span > 0 else 0.0, "wall_s": wall,
            "with_startup_per_s": n / wall,
            "cpu_us": cpu_between(samples, first, last) / n * 1e6 if n else 0.0,
            "versions": version}


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
    settings = Settings(**overrides)  # type: ignore[arg-type]
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
    table = Table(title=title)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    if job["examples"] != len(records):
        console.print(f"[red]the job counted {job['examples']:,} of {len(records):,} examples")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        lines = [f"# {title}", "", "| " + " | ".join(columns) + " |",
                 "| --- |" + " ---: |" * (len(columns) - 1)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines += ["", f"Command: `.venv/bin/python bench/bench_training_job.py --examples "
                  f"{args.examples}" + (f" --hash-buckets {args.hash_buckets}"
                                        if args.hash_buckets else "") + f" --out {args.out}`", ""]
        path = args.out / "bench_training_job.md"
        path.write_text("\n".join(lines))
        console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
