"""Benchmark of ``streamrank evaluate`` on a whole log (default: the shared Taobao sample).

Prints wall time per stage, examples/s and peak memory; writes the evaluation report to
``bench/out/evaluate/``. Timings on shared machines are noisy: compare runs made together.

    .venv/bin/python bench/bench_evaluate.py [--log FILE] [--format taobao] [--out DIR]
        [--mapping MAP.yaml] [--models online,frozen,...] [--threads N] [--tracemalloc]
"""

from __future__ import annotations

import argparse
import os
import resource
import time
import tracemalloc
from pathlib import Path

import torch

from config import load_settings
from connectors.logs import CsvMapping
from models.evaluate import MODELS, evaluate


def main() -> None:
    settings = load_settings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", type=Path, default=settings.sample_log)
    parser.add_argument("--format", default="taobao", choices=["taobao", "csv", "jsonl"])
    parser.add_argument("--mapping", type=Path, help="csv: the column mapping (YAML)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "evaluate")
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated, some of {','.join(MODELS)}")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--tracemalloc", action="store_true",
                        help="also trace the Python heap's peak (slows the run down)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.tracemalloc:
        tracemalloc.start()
    started = time.perf_counter()
    mapping = CsvMapping.from_yaml(args.mapping) if args.mapping else None
    result = evaluate(args.log, args.format, settings, mapping, out_dir=args.out, progress=True,
                      models=args.models.split(","))
    wall = time.perf_counter() - started
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in result.stage_seconds.items())
    print(f"log: {args.log} ({result.log.events:,} events, {result.log.bad} bad rows)")
    print(f"examples: {result.examples:,}  wall: {wall:.1f} s ({stages})")
    print(f"throughput: {result.examples / wall:,.0f} examples/s end to end, "
          f"{result.examples / result.stage_seconds['models']:,.0f} examples/s through the "
          f"{len(result.models)} models")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB"
          + (f", Python heap peak: {tracemalloc.get_traced_memory()[1] / 2**20:,.0f} MiB"
             if args.tracemalloc else ""))
    print(f"cpus: {os.cpu_count()}, torch threads: {torch.get_num_threads()}; report: {args.out}")


if __name__ == "__main__":
    main()
