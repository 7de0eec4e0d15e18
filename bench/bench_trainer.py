"""Trainer throughput and delta size: ``python bench/bench_trainer.py [--examples N] [--out DIR]``.

Examples are the real ones: the shared Taobao sample (or ``--log``) through the same impression
rule and feature code as the jobs (:func:`support.real_examples`).
Measured, with the default model (``Settings()``: hash_buckets, embedding_dim, batch_size):

* trainer throughput: ``learn_many`` and the training loop's ``progressive`` (score + online
  metrics + learn, :class:`models.loop.TrainingLoop`),
  examples/s on ``--threads`` torch threads;
* delta size per interval at ``--rate`` examples/s (``rate * delta_interval_s`` examples per
  version) against the full snapshot, with dense tensors in every version and in every
  ``--dense-every``-th; encode (checksum and HMAC included) and follower-apply times.

Timings on shared machines are noisy: compare ratios from one run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from pydantic import SecretStr
from support import console, markdown_table, real_examples, table, write_report

from config import Settings, load_settings
from connectors.training_examples import TrainingExample
from models.delta import ROWS_SUFFIX, decode_message, hmac_key
from models.follower import ModelFollower
from models.loop import TrainingLoop
from models.ranker import Ranker
from models.trainer import OnlineTrainer
from models.versions import VersionCutter


def throughput(settings: Settings, examples: Sequence[TrainingExample]) -> dict[str, float]:
    """Examples/s of learn_many (first half) and progressive (second half) on one trainer."""
    trainer = OnlineTrainer(settings)
    warm = settings.batch_size * 4
    trainer.learn_many(examples[:warm])
    half = (len(examples) + warm) // 2
    t0 = time.perf_counter()
    trainer.learn_many(examples[warm:half])
    t1 = time.perf_counter()
    loop = TrainingLoop(trainer, settings)
    for start in range(half, len(examples), settings.batch_size):
        loop.progressive(examples[start:start + settings.batch_size])
    t2 = time.perf_counter()
    return {"learn_many": (half - warm) / (t1 - t0),
            "progressive": (len(examples) - half) / (t2 - t1),
            "auc": trainer.metrics()["click_auc"]}


def delta_sizes(settings: Settings, examples: Sequence[TrainingExample],
                per_version: int) -> dict[str, float]:
    """A version every ``per_version`` examples: sizes and times of deltas and the snapshot."""
    trainer = OnlineTrainer(settings)
    publisher = VersionCutter(trainer, settings)
    follower = ModelFollower(Ranker.from_settings(settings), hmac_key(settings))
    rows: dict[str, list[float]] = {"bytes": [], "encode_ms": [], "apply_ms": [], "rows": []}
    snapshot: dict[str, float] = {}
    for start in range(0, len(examples) - per_version + 1, per_version):
        trainer.learn_many(examples[start:start + per_version])
        t0 = time.perf_counter()
        (message,) = publisher.publish()
        t1 = time.perf_counter()
        follower.apply(message)
        t2 = time.perf_counter()
        update = decode_message(message, hmac_key(settings))
        touched = sum(len(t) for n, t in update.tensors.items() if n.endswith(ROWS_SUFFIX))
        if update.kind == "snapshot":
            snapshot = {"bytes": len(message), "encode_ms": 1e3 * (t1 - t0),
                        "apply_ms": 1e3 * (t2 - t1)}
            continue
        for key, value in (("bytes", len(message)), ("encode_ms", 1e3 * (t1 - t0)),
                           ("apply_ms", 1e3 * (t2 - t1)), ("rows", touched)):
            rows[key].append(value)
    assert follower.version == publisher.version, "the follower fell behind"
    return {"snapshot_bytes": snapshot["bytes"], "snapshot_encode_ms": snapshot["encode_ms"],
            "snapshot_apply_ms": snapshot["apply_ms"], "deltas": len(rows["bytes"]),
            **{f"delta_{k}": statistics.mean(v) for k, v in rows.items()},
            "delta_bytes_max": max(rows["bytes"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=60_000, help="real examples to use")
    parser.add_argument("--log", type=Path, default=None,
                        help="Taobao-format log (default: the shared sample)")
    parser.add_argument("--rate", type=int, default=5_000,
                        help="examples/s for the delta-size part")
    parser.add_argument("--dense-every", type=int, default=10,
                        help="the sparser dense cadence compared with every version")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", type=Path, default=None, help="write bench_trainer.md here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    settings = load_settings(delta_hmac_key=SecretStr("bench-key"), snapshot_every=1_000_000)
    log = args.log or settings.sample_log
    t0 = time.perf_counter()
    examples = real_examples(settings, log, args.examples)
    console.print(f"{len(examples):,} real examples from {log} in {time.perf_counter() - t0:.0f} s")

    speed = throughput(settings, examples)
    per_version = int(args.rate * settings.delta_interval_s)
    sizes = {n: delta_sizes(settings.model_copy(update={"dense_every": n}), examples, per_version)
             for n in (1, args.dense_every)}

    model = (f"hash_buckets={settings.hash_buckets:,}, embedding_dim={settings.embedding_dim}, "
             f"batch_size={settings.batch_size}, torch threads={args.threads}")
    speed_rows = [("learn_many", f"{speed['learn_many']:,.0f}"),
                  ("progressive (score + online metrics + learn)", f"{speed['progressive']:,.0f}")]
    size_rows = [
        ("deltas measured", *(f"{s['deltas']}" for s in sizes.values())),
        ("rows per delta", *(f"{s['delta_rows']:,.0f}" for s in sizes.values())),
        ("delta bytes, mean", *(f"{s['delta_bytes']:,.0f}" for s in sizes.values())),
        ("delta bytes, max", *(f"{s['delta_bytes_max']:,.0f}" for s in sizes.values())),
        ("snapshot bytes", *(f"{s['snapshot_bytes']:,.0f}" for s in sizes.values())),
        ("delta / snapshot",
         *(f"{s['delta_bytes'] / s['snapshot_bytes']:.2%}" for s in sizes.values())),
        ("encode ms, delta", *(f"{s['delta_encode_ms']:.1f}" for s in sizes.values())),
        ("apply ms, delta", *(f"{s['delta_apply_ms']:.1f}" for s in sizes.values())),
        ("encode ms, snapshot", *(f"{s['snapshot_encode_ms']:.0f}" for s in sizes.values())),
        ("apply ms, snapshot", *(f"{s['snapshot_apply_ms']:.0f}" for s in sizes.values())),
    ]
    dense_cols = ["dense every version" if n == 1 else f"dense every {n}th" for n in sizes]
    speed_title = f"trainer throughput, examples/s ({model})"
    size_title = (f"delta vs snapshot: {per_version:,} examples per version ({args.rate:,}/s x "
                  f"{settings.delta_interval_s:g} s), HMAC signing on")
    speed_columns, size_columns = ["path", "examples/s"], ["", *dense_cols]
    console.print(table(speed_title, speed_columns, speed_rows),
                  table(size_title, size_columns, size_rows))
    if args.out is not None:
        write_report(args.out, "bench_trainer.md", [
            "# Trainer benchmark", "", f"{len(examples):,} real examples from `{log.name}`.", "",
            f"**{speed_title}**", "", *markdown_table(speed_columns, speed_rows), "",
            f"**{size_title}**", "", *markdown_table(size_columns, size_rows)])


if __name__ == "__main__":
    main()
