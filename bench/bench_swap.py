"""Forward passes during delta applies, in one scorer process: ``python bench/bench_swap.py``.

What a swap costs the requests in flight, without HTTP, Kafka or Redis around it: on an event
loop, a forward pass of 100 real candidates due every ``--every-ms`` (timed from when it was
due, as a request from its arrival); beside it, the scorer's
:class:`~models.scorer.reloader.Reloader` takes a delta of ``--per-delta`` real examples every
``--delta-every-s`` in its own thread, as in a scorer, with the scorer's process settings (one
torch thread, its interpreter switch interval). Twice, side by side: with ``swap_wait_ms``
0 (each delta applied as it comes) and with its default (applied once no pass is in flight,
waiting at most that long). Printed: the passes that overlapped an apply (p50 / max ms), p99
of the passes within ``--window-ms`` of an apply against the others, and the apply's own
time. The HTTP benchmark (``bench_scorer.py``) measures the same ratio with
the broker, the trainer and the load generator on the same cores; this one is the scorer's
own share.

Timings on shared machines are noisy: compare ratios of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from pydantic import SecretStr
from support import console, markdown_table, real_examples, table, write_report

from config import Settings, load_settings
from connectors.training_examples import TrainingExample
from models.ranker import Batch, encode_batch
from models.scorer.app import SWITCH_INTERVAL_S
from models.scorer.batcher import forward
from models.scorer.quiet import InFlight
from models.scorer.reloader import Reloader
from models.scorer.service import ModelService
from models.trainer import OnlineTrainer
from models.versions import VersionCutter


def messages(settings: Settings, examples: list[TrainingExample], per_delta: int,
             deltas: int) -> list[bytes]:
    """The snapshot and ``deltas`` deltas a trainer publishes, ``per_delta`` examples each."""
    trainer = OnlineTrainer(settings)
    cutter = VersionCutter(trainer, settings, None)
    out: list[bytes] = []
    for k in range(deltas + 1):
        trainer.learn_many(examples[k * per_delta:(k + 1) * per_delta])
        out += cutter.publish()
    return out


def run(settings: Settings, updates: list[bytes], batches: list[Batch], every_s: float,
        delta_every_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Passes as (due, end) and applies as (start, end), perf_counter seconds: a pass counts
    from when it was due, as a request from its arrival, so a late start counts too. Each
    pass is in flight for the reloader (``settings.swap_wait_ms``) as a request is."""
    service = ModelService(settings)
    service.apply(updates[0])
    in_flight = InFlight()
    reloader = Reloader(settings, service, wait_quiet=in_flight.wait_quiet)
    applies: list[tuple[float, float]] = []
    passes: list[tuple[float, float]] = []

    def follow() -> None:
        for update in updates[1:]:
            time.sleep(delta_every_s)
            reloader.wait_quiet(settings.swap_wait_ms / 1000.0)  # handle_quietly, timed apart
            t0 = time.perf_counter()
            reloader.handle(update)
            applies.append((t0, time.perf_counter()))

    async def serve() -> None:
        thread = threading.Thread(target=follow, name="model-reloader")
        thread.start()
        start, k = time.perf_counter(), 0
        while thread.is_alive():
            due = start + k * every_s
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            in_flight.enter()
            forward(service.current(), batches[k % len(batches)])
            in_flight.leave()
            passes.append((due, time.perf_counter()))
            k += 1
        thread.join()

    asyncio.run(serve())
    return np.asarray(passes), np.asarray(applies)


def summary(passes: np.ndarray, applies: np.ndarray, window_s: float) -> tuple[str, ...]:
    """Applies and their p50 / max, overlapping passes and theirs, p99 near vs others, as
    table cells."""
    ms = (passes[:, 1] - passes[:, 0]) * 1e3
    over = np.zeros(len(passes), bool)
    near = np.zeros(len(passes), bool)
    for a, b in applies:
        over |= (passes[:, 0] <= b) & (passes[:, 1] >= a)
        near |= (passes[:, 0] <= b + window_s) & (passes[:, 1] >= a - window_s)
    p99_near, p99_rest = np.percentile(ms[near], 99), np.percentile(ms[~near], 99)
    took = (applies[:, 1] - applies[:, 0]) * 1e3
    return (f"{len(applies)}", f"{np.median(took):.2f} / {took.max():.2f}",
            f"{over.sum()}", f"{np.median(ms[over]):.2f} / {ms[over].max():.2f}",
            f"{p99_near:.2f} / {p99_rest:.2f} ({p99_near / p99_rest:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", type=Path, default=None,
                        help="Taobao-format log (default: the shared sample)")
    parser.add_argument("--deltas", type=int, default=120)
    parser.add_argument("--per-delta", type=int, default=256, help="examples per delta")
    parser.add_argument("--delta-every-s", type=float, default=0.25)
    parser.add_argument("--every-ms", type=float, default=10.0, help="ms between passes")
    parser.add_argument("--window-ms", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=None, help="write bench_swap.md here")
    args = parser.parse_args()

    torch.set_num_threads(1)  # as a scorer process
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    settings = load_settings(delta_hmac_key=SecretStr("bench-key"), snapshot_every=1_000_000)
    examples = real_examples(settings, args.log or settings.sample_log,
                             (args.deltas + 1) * args.per_delta + 5_000)
    updates = messages(settings, examples, args.per_delta, args.deltas)
    tail = examples[-5_000:]
    batches = [encode_batch(tail[k:k + 100], settings.hash_buckets)
               for k in range(0, len(tail) - 99, 100)]
    console.print(f"{len(updates) - 1} deltas of {args.per_delta} real examples, "
                  f"{np.mean([len(u) for u in updates[1:]]) / 1e3:.0f} KB each")
    rows = []
    for wait_ms in (0.0, settings.swap_wait_ms):
        passes, applies = run(settings.model_copy(update={"swap_wait_ms": wait_ms}), updates,
                              batches, args.every_ms / 1e3, args.delta_every_s)
        rows.append((f"{wait_ms:.0f}", *summary(passes, applies, args.window_ms / 1e3)))
        console.print(f"swap_wait_ms {wait_ms:.0f}: {len(passes)} passes")
    columns = ("swap_wait_ms", "applies", "apply p50 / max ms", "passes overlapping",
               "their p50 / max ms", f"p99 ms within {args.window_ms:.0f} ms / others")
    title = (f"forward passes of 100 candidates every {args.every_ms:.0f} ms, "
             f"a delta every {args.delta_every_s} s")
    console.print(table(title, columns, rows))
    if args.out:
        write_report(args.out, "bench_swap.md",
                     ["# Swap benchmark", "", title, "", *markdown_table(columns, rows)])


if __name__ == "__main__":
    main()
