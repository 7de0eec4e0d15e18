"""The ranking model alone: candidates/s and latency per batch size, per device and dtype.

No Kafka, Redis or Feast: random IDs, dense inputs (features and price) and recent clicks (a
random 0 to 10 per candidate), all at the serving position; the default model shape of the config
(``hash_buckets``, ``embedding_dim``), a forward pass plus the two heads exactly as the scorer
runs it (:func:`support.time_passes`: :func:`models.scorer.batcher.forward`, inputs moved to the
device inside). ``bf16`` runs the same pass under ``torch.autocast`` (CUDA; on a CPU only where
torch supports it).

    .venv/bin/python bench/bench_model.py --device cpu
    .venv/bin/python bench/bench_model.py --device cuda --dtypes fp32,bf16 --out bench/out
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from support import console, markdown_table, table, time_passes, write_report

from config import load_settings
from models.ranker import Ranker

SIZES = [1, 8, 64, 512, 4_096, 32_768, 131_072]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--dtypes", default="fp32,bf16", help="comma-separated: fp32, bf16")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    parser.add_argument("--budget-s", type=float, default=1.0, help="seconds per measurement")
    parser.add_argument("--max-size", type=int, default=SIZES[-1])
    parser.add_argument("--out", type=Path, default=None, help="write model-<device>.md here")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch sees no CUDA device")
    torch.set_num_threads(args.threads)
    settings = load_settings()
    device = torch.device(args.device)
    model = Ranker.from_settings(settings).to(device).eval().requires_grad_(False)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    rows = []
    for dtype in [d.strip() for d in args.dtypes.split(",") if d.strip()]:
        for n in [s for s in SIZES if s <= args.max_size]:
            try:
                r = time_passes(model, device, n, dtype, args.budget_s, settings.hash_buckets)
            except RuntimeError as err:  # e.g. bf16 unsupported on this device
                console.print(f"[yellow]{dtype} n={n}: {err}[/yellow]")
                break
            rows.append((dtype, f"{n:,}", str(r["passes"]), f"{r['p50_ms']:.3f}",
                         f"{r['p99_ms']:.3f}", f"{r['cand_per_s']:,.0f}"))
    columns = ("dtype", "candidates", "passes", "p50 ms", "p99 ms", "candidates/s")
    console.print(table(f"model alone on {name} ({args.threads} thread(s)), "
                        f"{settings.hash_buckets:,} buckets x {settings.embedding_dim}",
                        columns, rows))
    if args.out:
        write_report(args.out, f"model-{args.device}.md",
                     [f"# Model alone on {name}", "", *markdown_table(columns, rows)])


if __name__ == "__main__":
    main()
