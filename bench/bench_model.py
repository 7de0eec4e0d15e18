"""The ranking model alone: candidates/s and latency per batch size, per device and dtype.

No Kafka, Redis or Feast: random IDs, dense inputs (features and price) and recent clicks (a
random 0 to 10 per candidate), all at the serving position; the default model shape of the config
(``hash_buckets``, ``embedding_dim``), a forward pass plus the two heads exactly as the scorer
runs it (:func:`models.scorer.batcher.forward`, inputs moved to the device inside). ``bf16``
runs the same pass under ``torch.autocast`` (CUDA; on a CPU only where torch supports it).

    .venv/bin/python bench/bench_model.py --device cpu
    .venv/bin/python bench/bench_model.py --device cuda --dtypes fp32,bf16 --out bench/out
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from config import load_settings
from models.ranker import DENSE_INPUTS, RECENT, SERVING_POSITION, WIDE_FIELDS, Batch, Ranker
from models.scorer.batcher import forward

SIZES = [1, 8, 64, 512, 4_096, 32_768, 131_072]


def _inputs(n: int, buckets: int, generator: torch.Generator) -> Batch:
    """``n`` random encoded candidates (what :func:`models.ranker.encode_batch` returns)."""
    sparse = torch.randint(0, buckets, (n, 3), generator=generator)
    dense = torch.rand((n, len(DENSE_INPUTS)), generator=generator) * 10
    wide = torch.randint(0, buckets, (n, len(WIDE_FIELDS)), generator=generator)
    position = torch.full((n,), SERVING_POSITION, dtype=torch.int64)
    kept = torch.randint(0, RECENT + 1, (n, 1), generator=generator)
    none = torch.arange(RECENT).expand(n, RECENT) >= kept
    recent = [torch.randint(0, buckets, (n, RECENT), generator=generator).masked_fill(none, -1)
              for _ in range(2)]
    return Batch(sparse, dense, wide, position, *recent)


def measure(model: Ranker, device: torch.device, n: int, dtype: str, budget_s: float,
            buckets: int) -> dict[str, float]:
    """Latency (ms, p50/p99) and candidates/s of passes over ``n`` candidates."""
    g = torch.Generator().manual_seed(n)
    batch = _inputs(n, buckets, g)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bf16"
                else contextlib.nullcontext())
    served = (1, model)
    times: list[float] = []
    with autocast:
        forward(served, batch)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        deadline = time.perf_counter() + budget_s
        while time.perf_counter() < deadline or len(times) < 5:
            t0 = time.perf_counter()
            forward(served, batch)  # returns host numpy: synchronised
            times.append(time.perf_counter() - t0)
            if len(times) >= 2_000:
                break
    times.sort()
    p50 = statistics.median(times)
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    return {"n": n, "passes": len(times), "p50_ms": p50 * 1e3, "p99_ms": p99 * 1e3,
            "cand_per_s": n / p50}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--dtypes", default="fp32,bf16", help="comma-separated: fp32, bf16")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    parser.add_argument("--budget-s", type=float, default=1.0, help="seconds per measurement")
    parser.add_argument("--max-size", type=int, default=SIZES[-1])
    parser.add_argument("--out", type=Path, default=None, help="write model.md here")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch sees no CUDA device")
    torch.set_num_threads(args.threads)
    settings = load_settings()
    device = torch.device(args.device)
    model = Ranker.from_settings(settings).to(device).eval().requires_grad_(False)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    console = Console()
    rows = []
    for dtype in [d.strip() for d in args.dtypes.split(",") if d.strip()]:
        for n in [s for s in SIZES if s <= args.max_size]:
            try:
                r = measure(model, device, n, dtype, args.budget_s, settings.hash_buckets)
            except RuntimeError as err:  # e.g. bf16 unsupported on this device
                console.print(f"[yellow]{dtype} n={n}: {err}[/yellow]")
                break
            rows.append({"dtype": dtype} | r)
    table = Table("dtype", "candidates", "passes", "p50 ms", "p99 ms", "candidates/s",
                  title=f"model alone on {name} ({args.threads} thread(s)), "
                        f"{settings.hash_buckets:,} buckets x {settings.embedding_dim}")
    for r in rows:
        table.add_row(r["dtype"], f"{r['n']:,}", str(r["passes"]), f"{r['p50_ms']:.3f}",
                      f"{r['p99_ms']:.3f}", f"{r['cand_per_s']:,.0f}")
    console.print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        lines = [f"# Model alone on {name}", "", "| dtype | candidates | p50 ms | p99 ms | "
                 "candidates/s |", "| --- | ---: | ---: | ---: | ---: |"]
        lines += [f"| {r['dtype']} | {r['n']:,} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | "
                  f"{r['cand_per_s']:,.0f} |" for r in rows]
        (args.out / f"model-{args.device}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
