"""Learning quality on a suite of logs: the online model against River's FTRL and baselines.

The online model, FTRL, a frozen copy and most-popular, overall and over the first 10 % / 20 %
of each stream.

    .venv/bin/python bench/bench_learning.py LOG:FORMAT [LOG:FORMAT ...] [--out DIR]

e.g. ``data/taobao_user_behavior_sample.csv:taobao mind_small_5k.jsonl:jsonl`` (logs are passed
by path; none is assumed). Every log runs through ``evaluate`` (:func:`models.evaluate.evaluate_logs`)
with the same settings, the defaults of ``Settings()``: nothing is tuned per log. Prints one
table per log (AUC and log loss overall / first 10 % / first 20 %, wall time) and whether the
online model is at least as good as FTRL over the first 10 % and better overall; with
``--out``, writes ``bench_learning.md`` and each log's evaluation report there.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import cast

import torch
from support import console, markdown_table, table, write_report

from config import load_settings
from models.evaluate import SEGMENTS, LogSpec, evaluate_logs

MODELS = ("online", "ftrl", "frozen", "most_popular")


def parse_spec(text: str) -> LogSpec:
    """``PATH:FORMAT`` -> :class:`LogSpec`."""
    path, _, fmt = text.rpartition(":")
    if not path or fmt not in ("taobao", "jsonl", "csv"):
        raise argparse.ArgumentTypeError(f"expected PATH:taobao|jsonl|csv, got {text!r}")
    if fmt == "csv":
        raise argparse.ArgumentTypeError("csv logs need a mapping: use streamrank evaluate")
    return LogSpec(Path(path), fmt)  # type: ignore[arg-type]


def verdict(segments: dict[str, dict[str, dict[str, float | None]]]) -> str:
    """Whether online >= FTRL over the first 10 % (AUC and log loss) and > overall."""
    on, ftrl = segments["online"], segments["ftrl"]

    def better(seg: str, strict: bool) -> bool:
        figures = [on[seg][k] for k in ("click_auc", "click_logloss")]
        figures += [ftrl[seg][k] for k in ("click_auc", "click_logloss")]
        if any(v is None for v in figures):
            return False
        auc, ll, auc_ftrl, ll_ftrl = cast(list[float], figures)
        if strict:
            return auc > auc_ftrl and ll < ll_ftrl
        return auc >= auc_ftrl and ll <= ll_ftrl

    return (f"first 10 %: {'yes' if better('first_10%', False) else 'no'}, "
            f"overall: {'yes' if better('all', True) else 'no'}")


def figures(model: str, segments: dict[str, dict[str, float | None]]) -> list[str]:
    """A model's row: its AUC, then its log loss, per segment."""
    return [model, *(f"{segments[k]['click_auc']:.4f}" for k in SEGMENTS),
            *(f"{segments[k]['click_logloss']:.5f}" for k in SEGMENTS)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logs", nargs="+", type=parse_spec, help="PATH:FORMAT")
    parser.add_argument("--out", type=Path, default=None, help="write bench_learning.md here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = load_settings()
    started = time.perf_counter()
    results = evaluate_logs(args.logs, settings, out_dir=args.out, progress=True, models=MODELS)
    wall = time.perf_counter() - started
    lines = [f"# Learning quality ({len(results)} logs, default settings, {wall:.0f} s)", ""]
    columns = ["model", *(f"AUC {k}" for k in SEGMENTS), *(f"log loss {k}" for k in SEGMENTS)]
    for spec, result in results:
        title = (f"{spec.name}: {result.examples:,} examples, {result.seconds:.0f} s wall "
                 f"(examples {result.stage_seconds['examples']:.0f} s, models "
                 f"{result.stage_seconds['models']:.0f} s)")
        rows = [figures(name, result.models[name].segments) for name in MODELS]
        check = verdict({n: result.models[n].segments for n in ("online", "ftrl")})
        console.print(table(title, columns, rows), f"online vs FTRL: {check}")
        lines += [f"## {title}", "", *markdown_table(columns, rows), "",
                  f"Online vs FTRL: {check}.", ""]
    if args.out is not None:
        command = " ".join(f"{s.path}:{s.fmt}" for s, _ in results)
        write_report(args.out, "bench_learning.md", [
            *lines, f"Command: `.venv/bin/python bench/bench_learning.py {command} "
            f"--out {args.out}`"])


if __name__ == "__main__":
    main()
