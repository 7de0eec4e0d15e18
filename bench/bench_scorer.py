"""Scorers end to end: ``/rank`` latency at offered rates, the Feast SDK path, swaps, freshness.

In one run, on the configured (your) ports, bounded, stopping what it started:

1. the local stack (if not running); a fresh ``model.deltas`` topic and run directory;
2. the head of the Taobao sample through the impression rule and the feature computation into
   Feast (real rows), and a trainer that learns its examples and publishes a snapshot;
3. three ``streamrank serve`` processes: A and B read features the scorer's way (one scripted
   read, item cache), C the plain Feast SDK way (``get_online_features``);
4. the model alone (candidates/s per pass of 100 and 1,000 candidates);
5. open-loop load at a fixed offered rate (latency from each request's scheduled send time, so
   a stall counts for every request it delays): 100 and 1,000 candidates at 100 requests/s on
   A and on C, then rising rates to the highest one whose p99 stays under 50 ms;
6. 100 candidates at 100 requests/s on A while the trainer publishes deltas every
   ``--delta-every-s``: p99 of requests in flight within ``--swap-window-ms`` of a swap vs the
   others, and model freshness (delta published -> served by A and by B) p50/p99.

The load generator shares the machine's cores with the scorers, Kafka and Redis.

    .venv/bin/python bench/bench_scorer.py [--rows 20000] [--seconds 6] [--out bench/out]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import sys
import time
import uuid
import zlib
from dataclasses import dataclass, field
from itertools import islice
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path

import httpx
import numpy as np
import orjson
import redis
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_ingest import tree_cpu_s  # noqa: E402
from bench.bench_model import measure  # noqa: E402
from config import Settings, load_settings  # noqa: E402
from connectors.admin import delete_topics, ensure_topics  # noqa: E402
from connectors.logs import read_log  # noqa: E402
from connectors.model_updates import ModelUpdatePublisher  # noqa: E402
from connectors.snapshot_store import SnapshotStore  # noqa: E402
from features.example_builder import ExampleBuilder  # noqa: E402
from features.impressions import with_impressions  # noqa: E402
from features.rows import FeatureComputer  # noqa: E402
from features.store import apply_repo  # noqa: E402
from features.writer import (
    Coalescer,  # noqa: E402
    FeastStoreWriter,  # noqa: E402
)
from models.ranker import Ranker  # noqa: E402
from models.trainer import OnlineTrainer  # noqa: E402
from models.versions import VersionCutter  # noqa: E402
from streamrank import stack  # noqa: E402
from streamrank.scorer_process import ScorerProcess, start_scorer  # noqa: E402

P99_LIMIT_MS = 50.0
RATES = {100: [10, 25, 50, 100, 150, 200, 300, 400], 1000: [5, 10, 20, 35, 50, 75, 100]}
MAX_IN_FLIGHT = 64
"""Requests the generator keeps in flight at most: past that, a scheduled request counts as
failed (the scorer is saturated), so an overloaded run ends on time."""
REQUEST_TIMEOUT_S = 5.0
console = Console()


@dataclass
class Workload:
    """Real users and items (with categories and a made-up price: the Taobao log has none) and
    the event time to read features at."""

    users: list[str]
    items: list[tuple[str, str | None]]
    as_of_ms: int
    rng: random.Random = field(default_factory=lambda: random.Random(1))

    def body(self, n: int) -> bytes:
        picked = self.rng.sample(self.items, n)
        return orjson.dumps({"user_id": self.rng.choice(self.users), "as_of_ms": self.as_of_ms,
                             "items": [{"item_id": i, "category_id": c,
                                        "price": zlib.crc32(i.encode()) % 20_000 / 100.0}
                                       for i, c in picked]})


@dataclass
class Run:
    """One open-loop run: per request (start, end, latency from schedule, version, ok)."""

    offered: float
    seconds: float
    starts: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    failures: int = 0
    cpu_s: float = float("nan")
    """CPU seconds the scorer's process used during the run."""

    def pct(self, q: float, mask: np.ndarray | None = None) -> float:
        lat = np.asarray(self.latencies)
        if mask is not None:
            lat = lat[mask]
        return float(np.percentile(lat, q) * 1e3) if len(lat) else float("nan")

    @property
    def achieved(self) -> float:
        return len(self.latencies) / self.seconds

    @property
    def cpu_ms_per_request(self) -> float:
        return self.cpu_s / max(1, len(self.latencies)) * 1e3


async def _load(url: str, bodies: list[bytes], rate: float, path: str = "/rank") -> Run:
    run = Run(rate, len(bodies) / rate)
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    in_flight = 0
    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_S,
                                 limits=limits) as client:
        loop = asyncio.get_running_loop()

        async def one(body: bytes, scheduled: float) -> None:
            nonlocal in_flight
            in_flight += 1
            started = time.perf_counter()
            try:
                if path == "/rank":
                    r = await client.post(path, content=body,
                                          headers={"content-type": "application/json"})
                else:
                    r = await client.get(path)
                ok = r.status_code == 200
                version = orjson.loads(r.content)["model_version"] if ok else -1
            except httpx.HTTPError:
                ok, version = False, -1
            end = time.perf_counter()
            in_flight -= 1
            if not ok:
                run.failures += 1
                return
            run.starts.append(started)
            run.ends.append(end)
            run.latencies.append(end - scheduled)
            run.versions.append(version)

        tasks = []
        t0 = time.perf_counter() + 0.05
        for k, body in enumerate(bodies):
            scheduled = t0 + k / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if in_flight >= MAX_IN_FLIGHT:
                run.failures += 1
                continue
            tasks.append(loop.create_task(one(body, scheduled)))
        await asyncio.gather(*tasks)
    return run


def load(scorer: ScorerProcess, work: Workload, n: int, rate: float, seconds: float) -> Run:
    """Offer ``rate`` requests/s of ``n`` candidates for ``seconds`` (plus a short warm-up)."""
    asyncio.run(_load(scorer.url, [work.body(n) for _ in range(int(rate * 0.5))], rate))
    bodies = [work.body(n) for _ in range(int(rate * seconds))]
    cpu = tree_cpu_s(scorer.proc.pid)
    run = asyncio.run(_load(scorer.url, bodies, rate))
    run.cpu_s = tree_cpu_s(scorer.proc.pid) - cpu
    return run


def floor(scorer: ScorerProcess, rate: float, seconds: float) -> Run:
    """``GET /healthz`` at ``rate``: what the machine, HTTP and the load generator cost alone."""
    asyncio.run(_load(scorer.url, [b""] * int(rate * 0.5), rate, "/healthz"))
    cpu = tree_cpu_s(scorer.proc.pid)
    run = asyncio.run(_load(scorer.url, [b""] * int(rate * seconds), rate, "/healthz"))
    run.cpu_s = tree_cpu_s(scorer.proc.pid) - cpu
    return run


def service_times(settings: Settings, work: Workload, n: int, requests: int) -> dict[str, list[float]]:
    """Per request, in this process, one after another (no HTTP, no batching): the scorer's
    feature read + encoding + forward pass, with its reader and with the Feast SDK reader."""
    from models.scorer.api import RankRequest
    from models.scorer.app import Scorer
    from models.scorer.batcher import forward

    bodies = [work.body(n) for _ in range(requests)]
    out: dict[str, list[float]] = {}
    for name, reader in (("scorer", "redis"), ("Feast SDK", "sdk")):
        scorer = Scorer(settings.model_copy(update={"feature_reader": reader}), "cpu",
                        follow=False)
        scorer.service.bootstrap_from_store()
        times = []
        for body in bodies:
            t0 = time.perf_counter()
            _, batch, _ = scorer.prepare(RankRequest.model_validate_json(body))
            forward(scorer.service.current(), batch)
            times.append(time.perf_counter() - t0)
        out[name] = times
    return out


def prepare(settings: Settings, rows: int, tmp: Path) -> tuple[Workload, list]:
    """Feast rows of the sample's head, the workload drawn from it, and its examples."""
    head = tmp / "head.csv"
    with settings.sample_log.open() as src:
        head.write_text("".join(islice(src, rows)))
    raw, _ = read_log(head, "taobao", settings=settings)
    events = list(with_impressions(raw, settings))
    store = apply_repo(settings)
    writer, computer, pending = FeastStoreWriter(store, settings), FeatureComputer(), Coalescer()
    for e in events:
        for row in computer.apply(e):
            pending.add(row)
    for batch in pending.rows().values():
        for row in batch:
            writer.add(row.view, row.key, row.values, row.event_time_ms)
    writer.flush()
    items = {e.item_id: e.category_id for e in events}
    users = sorted({e.user_id for e in events})
    examples = list(ExampleBuilder(settings).run(events))
    work = Workload(users, sorted(items.items()), max(e.event_time for e in events))
    console.print(f"Feast: {writer.stats.total_written:,} rows of {len(users):,} users, "
                  f"{len(items):,} items; {len(examples):,} training examples")
    return work, examples


def stream_deltas(settings: Settings, examples: list, every_s: float, go: Event, halt: Event,
                  out: Queue) -> None:
    """A trainer in its own process (so that its work does not stall the load generator):
    publishes the version 1 snapshot at once, then, between ``go`` and ``halt``, learns 256
    examples and publishes a delta every ``every_s``; puts {version: publish wall ms} of
    those deltas."""
    torch.set_num_threads(1)
    trainer = OnlineTrainer(settings)
    publisher = VersionCutter(trainer, settings, SnapshotStore.from_settings(settings))
    published: dict[int, int] = {}
    with ModelUpdatePublisher(settings) as channel:
        at = 0

        def publish_one() -> None:
            nonlocal at
            batch = examples[at:at + 256] or examples[:256]
            at = (at + 256) % max(1, len(examples) - 256)
            trainer.learn_many(batch)
            messages = publisher.publish()
            t_pub = time.time_ns() // 1_000_000
            for m in messages:
                channel.publish(settings.model_id, m)
            channel.flush()
            if go.is_set():  # not the first snapshot: published before the scorers start
                published[publisher.version] = t_pub

        publish_one()
        go.wait()
        next_at = time.monotonic()
        while not halt.is_set():
            publish_one()
            next_at += every_s
            halt.wait(max(0.0, next_at - time.monotonic()))
    out.put(published)


def wait_version(scorers: list[ScorerProcess], version: int, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(s.version() >= version for s in scorers):
            return
        time.sleep(0.1)
    raise TimeoutError(f"scorers did not reach version {version}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000, help="rows of the sample into Feast")
    parser.add_argument("--seconds", type=float, default=6.0, help="seconds per load run")
    parser.add_argument("--delta-every-s", type=float, default=0.25)
    parser.add_argument("--swap-rate", type=float, default=100.0,
                        help="requests/s (100 candidates) while deltas stream")
    parser.add_argument("--swap-window-ms", type=float, default=20.0)
    parser.add_argument("--no-ladder", action="store_true", help="skip the highest-rate search")
    parser.add_argument("--out", type=Path, default=None, help="write scorer.md here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = load_settings()
    tag = uuid.uuid4().hex[:8]
    run_dir = (base.run_dir / "bench-scorer" / tag).resolve()
    settings = base.model_copy(update={
        "run_dir": run_dir, "topic_deltas": f"model.deltas-bench-{tag}",
        "redis_url": base.redis_url.rsplit("/", 1)[0] + "/11", "snapshot_every": 1_000_000})
    started = stack.up(settings)
    ensure_topics(settings)
    redis.Redis.from_url(settings.redis_url).flushdb()  # the benchmark's own database
    procs: list[ScorerProcess] = []
    stream = None
    results: list[tuple[str, ...]] = []
    try:
        work, examples = prepare(settings, args.rows, run_dir)
        ctx = multiprocessing.get_context("spawn")
        go, halt, out = ctx.Event(), ctx.Event(), ctx.Queue()
        stream = ctx.Process(target=stream_deltas, daemon=True,
                             args=(settings, examples, args.delta_every_s, go, halt, out))
        stream.start()
        logs = run_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        a = start_scorer(settings, logs / "a.log")
        b = start_scorer(settings, logs / "b.log")
        c = start_scorer(settings.model_copy(update={"feature_reader": "sdk"}), logs / "c.log")
        procs = [a, b, c]
        wait_version(procs, 1)  # the stream's first version: the snapshot
        console.print(f"scorers A {a.url}, B {b.url} (one scripted read, item cache), "
                      f"C {c.url} (Feast SDK)")

        model = Ranker.from_settings(settings).eval().requires_grad_(False)
        alone = {n: measure(model, torch.device("cpu"), n, "fp32", 1.0, settings.hash_buckets)
                 for n in (100, 1_000)}
        inproc = Table("path", "candidates", "p50 ms", "p99 ms", title=(
            "service time per request in-process, sequential (features + encode + forward)"))
        for n in (100, 1_000):
            for name, times in service_times(settings, work, n, 200 if n == 100 else 60).items():
                ms = np.asarray(times) * 1e3
                row = (name, f"{n:,}", f"{np.percentile(ms, 50):.2f}", f"{np.percentile(ms, 99):.2f}")
                inproc.add_row(*row)
                results.append(("service_time",) + row)
        console.print(inproc)
        steady: dict[int, Run] = {}
        r = floor(a, 100, args.seconds)
        results.append(("floor", "GET /healthz (A)", "100/s", f"p50 {r.pct(50):.1f}",
                        f"p99 {r.pct(99):.1f}", f"p99.9 {r.pct(99.9):.1f}",
                        f"cpu {r.cpu_ms_per_request:.2f} ms/request"))
        console.print(f"floor: GET /healthz at 100/s on A: p50 {r.pct(50):.1f} ms, "
                      f"p99 {r.pct(99):.1f} ms, p99.9 {r.pct(99.9):.1f} ms, "
                      f"scorer CPU {r.cpu_ms_per_request:.2f} ms/request")
        table = Table("path", "candidates", "offered/s", "achieved/s", "p50 ms", "p99 ms",
                      "p99.9 ms", "failed", "scorer CPU ms/request",
                      title="/rank, features included (open loop)")
        for name, scorer in (("scorer (A)", a), ("Feast SDK (C)", c)):
            for n in (100, 1_000):
                r = load(scorer, work, n, 100, args.seconds)
                if scorer is a:
                    steady[n] = r
                row = (name, f"{n:,}", "100", f"{r.achieved:.0f}", f"{r.pct(50):.1f}",
                       f"{r.pct(99):.1f}", f"{r.pct(99.9):.1f}", str(r.failures),
                       f"{r.cpu_ms_per_request:.2f}")
                table.add_row(*row)
                results.append(("rank",) + row)
        console.print(table)

        if not args.no_ladder:
            ladder = Table("path", "candidates", "offered/s", "achieved/s", "p99 ms",
                           title=f"rising rates: the highest with p99 < {P99_LIMIT_MS:.0f} ms")
            for name, scorer in (("scorer (A)", a), ("Feast SDK (C)", c)):
                for n, rates in RATES.items():
                    best = "none"
                    for rate in rates:
                        r = load(scorer, work, n, rate, min(args.seconds, 4.0))
                        ok = (r.pct(99) < P99_LIMIT_MS and r.failures == 0
                              and r.achieved >= 0.9 * rate)
                        ladder.add_row(name, f"{n:,}", str(rate), f"{r.achieved:.0f}",
                                       f"{r.pct(99):.1f}" + ("" if ok else " x"))
                        if not ok:
                            break
                        best = str(rate)
                    results.append(("max_rate", name, f"{n:,}", best))
            console.print(ladder)

        # swaps and freshness
        go.set()
        swap_run = load(a, work, 100, args.swap_rate, max(args.seconds, 8.0))
        halt.set()
        deltas: dict[int, int] = out.get(timeout=60)
        stream.join(30)
        wait_version([a, b], max(deltas), 30.0)
        swaps_at = {s.url: dict((v, ms) for v, ms in s.status()["recent_swaps"]) for s in (a, b)}
        fresh = []
        for v, t_pub in deltas.items():
            served = [swaps_at[s.url].get(v) for s in (a, b)]
            if all(x is not None for x in served):
                fresh.append(max(served) - t_pub)  # type: ignore[type-var]
        # requests in flight within the window of a swap on A (wall ms -> perf_counter)
        offset = time.perf_counter() - time.time()
        swap_t = np.array([ms / 1000.0 + offset for v, ms in swaps_at[a.url].items()
                           if v in deltas])
        starts, ends = np.asarray(swap_run.starts), np.asarray(swap_run.ends)
        w = args.swap_window_ms / 1000.0
        near = np.zeros(len(starts), dtype=bool)
        for t in swap_t:
            near |= (starts <= t + w) & (ends >= t - w)
        published = set(deltas) | {1}
        swap_table = Table("measure", "value", title=(
            f"swaps: deltas every {args.delta_every_s}s during {args.swap_rate:.0f} requests/s "
            "of 100 candidates on A"))
        rows = [
            ("deltas published (rate/s)", f"{len(deltas)} "
             f"({len(deltas) / swap_run.seconds:.1f}/s)"),
            ("requests / failed", f"{len(swap_run.latencies)} / {swap_run.failures}"),
            ("responses naming an unpublished version",
             str(sum(v not in published for v in swap_run.versions))),
            ("distinct versions served", str(len(set(swap_run.versions)))),
            (f"p99 ms, in flight within {args.swap_window_ms:.0f} ms of a swap "
             f"({int(near.sum())} req)", f"{swap_run.pct(99, near):.1f}"),
            (f"p99 ms, the others ({int((~near).sum())} req)", f"{swap_run.pct(99, ~near):.1f}"),
            ("p99 ms, steady run at 100/s without deltas", f"{steady[100].pct(99):.1f}"),
            ("p99 around swaps / p99 of the others",
             f"{swap_run.pct(99, near) / swap_run.pct(99, ~near):.2f}x"),
            ("freshness published -> served by A and B, p50 ms",
             f"{np.percentile(fresh, 50):.0f}" if fresh else "n/a"),
            ("freshness p99 ms", f"{np.percentile(fresh, 99):.0f}" if fresh else "n/a"),
            ("model alone, 100 candidates: p50 ms / candidates/s",
             f"{alone[100]['p50_ms']:.2f} / {alone[100]['cand_per_s']:,.0f}"),
            ("model alone, 1,000 candidates: p50 ms / candidates/s",
             f"{alone[1000]['p50_ms']:.2f} / {alone[1000]['cand_per_s']:,.0f}"),
        ]
        for row in rows:
            swap_table.add_row(*row)
            results.append(("swap",) + row)
        console.print(swap_table)
        metrics = httpx.get(f"{a.url}/metrics").text.splitlines()
        hits = [m for m in metrics if m.startswith("streamrank_item_cache_")
                and m.split()[0].endswith("_total")]
        console.print("scorer A: " + "; ".join(hits))
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            lines = ["# Scorer benchmark", "", "| what | columns |", "| --- | --- |"]
            lines += [f"| {r[0]} | {' | '.join(r[1:])} |" for r in results]
            (args.out / "scorer.md").write_text("\n".join(lines) + "\n")
    finally:
        for p in procs:
            p.stop()
        if stream is not None and stream.is_alive():
            stream.kill()
        delete_topics(settings, [settings.topic_deltas])
        if any(state == "started" for state in started.values()):
            stack.down(settings)


if __name__ == "__main__":
    main()
