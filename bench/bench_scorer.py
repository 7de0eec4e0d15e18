"""Scorers end to end, today's against the code at ``--before``, side by side: ``/rank`` latency
at offered rates, CPU per request, the highest rate held, swaps and freshness.

In one run, on the configured (your) ports, bounded, stopping what it started:

1. the local stack (if not running); fresh topics, run directory and Redis database
   (:func:`support.fresh_settings`);
2. the head of the Taobao sample through the impression rule and the feature computation into
   Feast (real rows), and a trainer that learns its examples and publishes a snapshot;
3. ``streamrank serve`` processes on the same stack: ``before`` (the scorer of the tree at
   ``--before``, e.g. ``git archive HEAD | tar -x -C DIR`` of an earlier commit; skipped
   without it), ``x1`` (this tree, one process) and ``x2`` (this tree, ``--workers 2``);
4. the model alone and the in-process service time (features + encoding + forward pass);
5. open-loop load (latency from each request's scheduled send time, so a stall counts for
   every request it delays), the variants one after another at each point: 100 candidates at
   100 and 200 requests/s, 1,000 candidates at 20 requests/s; then rising rates to the highest
   whose p99 stays under ``--p99-ms`` (100 candidates) or ``--p99-ms-1000``;
6. 100 candidates at ``--swap-rate`` for ``--swap-seconds`` on each variant in turn, the
   others paused, while the trainer publishes deltas (learned ahead) every
   ``--delta-every-s``: p99 of requests in flight within ``--swap-window-ms`` of a swap vs
   the others, and model freshness (delta published -> served by every worker process)
   p50/p99;
7. each process's resident memory and item cache hits / misses over the run.

The load generator shares the machine's cores with the scorers, Kafka and Redis.

    .venv/bin/python bench/bench_scorer.py --before DIR [--rows 20000] [--seconds 6] [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import random
import signal
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path

import httpx
import numpy as np
import orjson
import redis
import torch
from prometheus_client.parser import text_string_to_metric_families
from support import (
    Run,
    console,
    fresh_settings,
    fresh_topics,
    open_loop,
    sample_events,
    table,
    time_passes,
    tree_cpu_s,
    write_report,
)

from config import Settings, load_settings
from connectors.model_updates import ModelUpdatePublisher
from connectors.snapshot_store import SnapshotStore
from connectors.training_examples import TrainingExample
from features.example_builder import ExampleBuilder
from features.rows import FeatureComputer
from features.store import apply_repo
from features.writer import Coalescer, FeastStoreWriter
from models.ranker import Ranker
from models.scorer.api import parse_rank
from models.scorer.app import Scorer
from models.scorer.batcher import forward
from models.scorer.candidates import encode_candidates
from models.trainer import OnlineTrainer
from models.versions import VersionCutter
from streamrank import stack
from streamrank.scorer_process import ScorerProcess, start_scorer

RATES = {100: [25, 50, 100, 150, 200, 300, 400], 1000: [5, 10, 20, 35, 50, 75]}
POINTS = ((100, 100), (100, 200), (1_000, 20))
"""(candidates, requests/s) of the side-by-side runs."""


@dataclass
class Workload:
    """Real users and items (with categories and a made-up price: the Taobao log has none) and
    the event time to read features at."""

    users: list[str]
    items: list[tuple[str, str | None]]
    as_of_ms: int
    rng: random.Random = field(default_factory=lambda: random.Random(1))

    def body(self, n: int) -> bytes:
        """A ``/rank`` body: a random user and ``n`` distinct random items."""
        picked = self.rng.sample(self.items, n)
        return orjson.dumps({"user_id": self.rng.choice(self.users), "as_of_ms": self.as_of_ms,
                             "items": [{"item_id": i, "category_id": c,
                                        "price": zlib.crc32(i.encode()) % 20_000 / 100.0}
                                       for i, c in picked]})


def _offer(scorer: ScorerProcess, bodies: Callable[[int], list[bytes]], rate: float,
           seconds: float, path: str) -> Run:
    """Offer ``rate`` requests/s of ``bodies(k)`` to ``path`` for ``seconds`` after a warm-up
    of half a second; the scorer's CPU over the measured run."""
    open_loop(scorer.url, bodies(int(rate * 0.5)), rate, path)
    measured = bodies(int(rate * seconds))
    cpu = tree_cpu_s(scorer.proc.pid)
    run = open_loop(scorer.url, measured, rate, path)
    run.cpu_s = tree_cpu_s(scorer.proc.pid) - cpu
    return run


def load(scorer: ScorerProcess, work: Workload, n: int, rate: float, seconds: float) -> Run:
    """Offer ``rate`` requests/s of ``n`` candidates for ``seconds`` (plus a short warm-up)."""
    return _offer(scorer, lambda k: [work.body(n) for _ in range(k)], rate, seconds, "/rank")


def floor(scorer: ScorerProcess, rate: float, seconds: float) -> Run:
    """``GET /healthz`` at ``rate``: what the machine, HTTP and the load generator cost alone."""
    return _offer(scorer, lambda k: [b""] * k, rate, seconds, "/healthz")


STAGES = ("parse", "feature read", "encode", "forward")
"""The stages of a request timed in-process (:func:`service_times`)."""


def service_times(settings: Settings, work: Workload, n: int,
                  requests: int) -> dict[str, np.ndarray]:
    """Per request, in this process, one after another (no HTTP, no batching), with the
    scorer's reader and with the Feast SDK reader: seconds of each of :data:`STAGES`
    (``requests X 4``); their sum is the service time."""
    bodies = [work.body(n) for _ in range(requests)]
    out: dict[str, np.ndarray] = {}
    for name, reader in (("scorer", "redis"), ("Feast SDK", "sdk")):
        scorer = Scorer(settings.model_copy(update={"feature_reader": reader}), "cpu",
                        follow=False)
        scorer.service.bootstrap_from_store()
        times = []
        for body in bodies:
            t0 = time.perf_counter()
            req = parse_rank(body)
            t1 = time.perf_counter()
            inputs = scorer.reader.read(req.user_id, req.item_ids, req.category_ids,
                                        req.as_of_ms)
            t2 = time.perf_counter()
            batch = encode_candidates(req.user_id, req.item_ids, req.category_ids, req.prices,
                                      inputs, settings.hash_buckets)
            t3 = time.perf_counter()
            forward(scorer.service.current(), batch)
            times.append((t1 - t0, t2 - t1, t3 - t2, time.perf_counter() - t3))
        out[name] = np.asarray(times)
    return out


def prepare(settings: Settings, rows: int) -> tuple[Workload, list[TrainingExample]]:
    """Feast rows of the sample's head, the workload drawn from it, and its examples."""
    events = sample_events(settings, rows)
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


def stream_deltas(settings: Settings, examples: list[TrainingExample], every_s: float,
                  count: int, ready: Event, go: Event, halt: Event, out: Queue) -> None:
    """A trainer in its own process: publishes the version 1 snapshot at once, learns 256
    examples per delta and encodes ``count`` deltas ahead (then sets ``ready``), and between
    ``go`` and ``halt`` publishes one every ``every_s``; puts {version: publish wall ms} of
    those deltas.

    The deltas are learned before the load starts because on a small machine the trainer's
    learning would take the cores from the scorer right before each swap: the swap figures
    would measure the trainer's neighbourhood, not the scorer's swap (a trainer runs on other
    cores or hosts in production)."""
    torch.set_num_threads(1)
    trainer = OnlineTrainer(settings)
    publisher = VersionCutter(trainer, settings, SnapshotStore.from_settings(settings))
    published: dict[int, int] = {}
    with ModelUpdatePublisher(settings) as channel:
        at = 0

        def learn_one() -> tuple[int, list[bytes]]:
            nonlocal at
            batch = examples[at:at + 256] or examples[:256]
            at = (at + 256) % max(1, len(examples) - 256)
            trainer.learn_many(batch)
            return publisher.version + 1, publisher.publish()

        for message in learn_one()[1]:  # the snapshot, before the scorers start
            channel.publish(settings.model_id, message)
        channel.flush()
        publisher.store = None  # a scorer starting now must not load a snapshot cut ahead
        ahead = [learn_one() for _ in range(count)]
        ready.set()
        go.wait()
        next_at = time.monotonic()
        for version, messages in ahead:
            if halt.is_set():
                break
            published[version] = time.time_ns() // 1_000_000
            for m in messages:
                channel.publish(settings.model_id, m)
            channel.flush()
            next_at += every_s
            halt.wait(max(0.0, next_at - time.monotonic()))
        halt.wait()
    out.put(published)


class DeltaStream:
    """:func:`stream_deltas` in a child process, and its signals."""

    def __init__(self, settings: Settings, examples: list[TrainingExample],
                 every_s: float, count: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._ready, self._go, self._halt = ctx.Event(), ctx.Event(), ctx.Event()
        self._out = ctx.Queue()
        self._proc = ctx.Process(target=stream_deltas, daemon=True, args=(
            settings, examples, every_s, count, self._ready, self._go, self._halt, self._out))
        self._proc.start()

    def wait_ready(self, timeout_s: float = 600.0) -> None:
        """Return once the deltas are learned and encoded."""
        if not self._ready.wait(timeout_s):
            raise TimeoutError("the deltas were not ready in time")

    def go(self) -> None:
        """Start the deltas."""
        self._go.set()

    def halt(self) -> dict[int, int]:
        """Stop the deltas; {version: publish wall ms} of those published."""
        self._halt.set()
        deltas: dict[int, int] = self._out.get(timeout=60)
        self._proc.join(30)
        return deltas

    def kill(self) -> None:
        """End the child if it still runs."""
        if self._proc.is_alive():
            self._proc.kill()


def wait_version(scorers: list[ScorerProcess], version: int, timeout_s: float = 120.0) -> None:
    """Return once every scorer serves ``version`` or a later one."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(s.version() >= version for s in scorers):
            return
        time.sleep(0.1)
    raise TimeoutError(f"scorers did not reach version {version}")


Rows = list[tuple[str, ...]]
"""Result rows: what was measured, then its figures (the markdown report's lines)."""


def model_alone(settings: Settings) -> dict[int, dict[str, float]]:
    """The model's forward pass alone over 100 and 1,000 candidates."""
    model = Ranker.from_settings(settings).eval().requires_grad_(False)
    return {n: time_passes(model, torch.device("cpu"), n, "fp32", 1.0, settings.hash_buckets)
            for n in (100, 1_000)}


def in_process(settings: Settings, work: Workload) -> Rows:
    """Sequential service times in this process, scorer reader and Feast SDK reader, with
    the p50 of each stage."""
    rows: Rows = []
    for n in (100, 1_000):
        for name, times in service_times(settings, work, n, 200 if n == 100 else 60).items():
            total = times.sum(axis=1) * 1e3
            stages = np.percentile(times, 50, axis=0) * 1e6
            rows.append((name, f"{n:,}", f"{np.percentile(total, 50):.2f}",
                         f"{np.percentile(total, 99):.2f}", *(f"{us:,.0f}" for us in stages)))
    console.print(table("service time per request in-process, sequential (no HTTP, no "
                        "batching)", ("path", "candidates", "p50 ms", "p99 ms",
                                      *(f"{stage} p50 us" for stage in STAGES)), rows))
    return [("service_time", *row) for row in rows]


def healthz_floor(a: ScorerProcess, seconds: float) -> Rows:
    """``GET /healthz`` at 100/s: what the machine, HTTP and the load generator cost alone."""
    r = floor(a, 100, seconds)
    console.print(f"floor: GET /healthz at 100/s: p50 {r.pct(50):.1f} ms, "
                  f"p99 {r.pct(99):.1f} ms, scorer CPU {r.cpu_ms_per_request:.2f} ms/request")
    return [("floor", "GET /healthz", "100/s", f"p50 {r.pct(50):.1f}", f"p99 {r.pct(99):.1f}",
             f"cpu {r.cpu_ms_per_request:.2f} ms/request")]


def steady(variants: dict[str, ScorerProcess], work: Workload, seconds: float) -> Rows:
    """Each of :data:`POINTS` on each variant, one after the other."""
    rows: Rows = []
    for n, rate in POINTS:
        for name, scorer in variants.items():
            r = load(scorer, work, n, rate, seconds)
            rows.append((name, f"{n:,}", str(rate), f"{r.achieved:.0f}", f"{r.pct(50):.1f}",
                         f"{r.pct(99):.1f}", f"{r.pct(99.9):.1f}", r.failed_text(),
                         f"{r.cpu_ms_per_request:.2f}"))
    console.print(table("/rank, features from Feast (open loop)",
                        ("scorer", "candidates", "offered/s", "achieved/s", "p50 ms", "p99 ms",
                         "p99.9 ms", "failed", "scorer CPU ms/request"), rows))
    return [("rank", *row) for row in rows]


def highest_rates(variants: dict[str, ScorerProcess], work: Workload, seconds: float,
                  limits_ms: dict[int, float]) -> Rows:
    """Rising rates on each variant until p99 reaches ``limits_ms[candidates]`` (or requests
    fail or fall behind): the highest rate that kept under it. Each rung offers at least 100
    requests, so that its p99 is not the slowest of a handful."""
    ladder: Rows = []
    results: Rows = []
    for n, rates in RATES.items():
        limit_ms = limits_ms[n]
        for name, scorer in variants.items():
            best = "none"
            for rate in rates:
                r = load(scorer, work, n, rate, max(min(seconds, 4.0), 100 / rate))
                ok = r.pct(99) < limit_ms and r.failures == 0 and r.achieved >= 0.9 * rate
                ladder.append((name, f"{n:,}", f"{limit_ms:.0f}", str(rate), f"{r.achieved:.0f}",
                               f"{r.pct(99):.1f}" + ("" if ok else " x"),
                               f"{r.cpu_ms_per_request:.2f}"))
                if not ok:
                    break
                best = str(rate)
            results.append(("max_rate", name, f"{n:,}", f"p99 < {limit_ms:.0f} ms", best))
    console.print(table("rising rates: the highest whose p99 stays under the limit",
                        ("scorer", "candidates", "p99 limit ms", "offered/s", "achieved/s",
                         "p99 ms", "CPU ms/request"), ladder))
    return results


def freshness_ms(deltas: dict[int, int], swaps: list[dict[int, int]]) -> list[int]:
    """Per delta served by every scorer: ms from its publication to the last scorer's swap.

    >>> freshness_ms({2: 1_000, 3: 2_000}, [{2: 1_050, 3: 2_010}, {2: 1_090}])
    [90]
    """
    served = [(t_pub, [s.get(v) for s in swaps]) for v, t_pub in deltas.items()]
    return [max(t for t in at if t is not None) - t_pub
            for t_pub, at in served if all(t is not None for t in at)]


def near_swaps(run: Run, swap_ms: list[int], window_ms: float) -> np.ndarray:
    """Which requests of ``run`` were in flight within ``window_ms`` of a swap (wall ms)."""
    offset = time.perf_counter() - time.time()  # wall clock -> perf_counter
    starts, ends = np.asarray(run.starts), np.asarray(run.ends)
    w = window_ms / 1000.0
    near = np.zeros(len(starts), dtype=bool)
    for t in (ms / 1000.0 + offset for ms in swap_ms):
        near |= (starts <= t + w) & (ends >= t - w)
    return near


def swapped(scorer: ScorerProcess) -> list[dict[int, int]]:
    """{version: wall ms it started serving} of each worker process of ``scorer``."""
    return [dict((v, ms) for v, ms in st["recent_swaps"]) for st in scorer.worker_status()]


@contextlib.contextmanager
def paused(scorers: list[ScorerProcess]) -> Iterator[None]:
    """The scorers' processes (supervisor and workers) stopped with SIGSTOP for the block and
    continued after it."""
    pids = sorted({pid for s in scorers
                   for pid in (s.proc.pid, *(int(st["pid"]) for st in s.worker_status()))})
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def swaps(variants: dict[str, ScorerProcess], work: Workload, stream: DeltaStream,
          args: argparse.Namespace) -> Rows:
    """100 candidates at ``--swap-rate`` on each variant in turn while deltas stream, the other
    variants paused (each follower applies every delta: on 2 cores, four of them applying
    them at once would measure the machine, not the variant): latency around swaps vs the
    others, freshness published -> served by every worker of the variant, of the deltas
    published during its run."""
    stream.go()
    runs: dict[str, tuple[Run, int, int]] = {}
    for name, scorer in variants.items():
        others = [s for other, s in variants.items() if other != name]
        with paused(others):
            started = time.time_ns() // 1_000_000
            run = load(scorer, work, 100, args.swap_rate, args.swap_seconds)
            runs[name] = (run, started, time.time_ns() // 1_000_000)
        wait_version(others, scorer.version(), 60.0)  # caught up before the next run
    published_at = stream.halt()
    scorers = list(variants.values())
    wait_version(scorers, max(published_at), 30.0)
    rows: Rows = [("deltas published", f"{len(published_at)} (every {args.delta_every_s}s)")]
    published = set(published_at) | {1}
    for name, scorer in variants.items():
        (run, started, ended), workers = runs[name], swapped(scorer)
        deltas = {v: t for v, t in published_at.items() if started <= t <= ended}
        fresh = freshness_ms(deltas, workers)
        near = near_swaps(run, sorted({ms for w in workers for v, ms in w.items()
                                       if v in deltas}), args.swap_window_ms)
        rows += [
            (name, "requests / failed / naming an unpublished version",
             f"{len(run.latencies)} / {run.failed_text()} / "
             f"{sum(v not in published for v in run.versions)}"),
            (name, f"p99 ms in flight within {args.swap_window_ms:.0f} ms of a swap "
                   f"({int(near.sum())} req) / the others ({int((~near).sum())} req)",
             f"{run.pct(99, near):.1f} / {run.pct(99, ~near):.1f} "
             f"({run.pct(99, near) / run.pct(99, ~near):.2f}x)"),
            (name, f"freshness published -> served by all {len(workers)} worker(s), "
                   f"p50 / p99 ms ({len(fresh)} deltas)",
             f"{np.percentile(fresh, 50):.0f} / {np.percentile(fresh, 99):.0f}"
             if fresh else "n/a"),
        ]
    console.print(table(f"swaps: deltas every {args.delta_every_s}s during "
                        f"{args.swap_rate:.0f} requests/s of 100 candidates",
                        ("scorer", "measure", "value"), rows[1:]))
    console.print(f"deltas published: {rows[0][1]}")
    return [("swap", *row) for row in rows]


def memory_mb(scorer: ScorerProcess) -> str:
    """Resident memory of each worker process, MB."""
    out = []
    for st in scorer.worker_status():
        status = Path(f"/proc/{st.get('pid', scorer.proc.pid)}/status").read_text()
        kb = next(int(line.split()[1]) for line in status.splitlines()
                  if line.startswith("VmRSS:"))
        out.append(f"{kb / 1024:.0f}")
    return " + ".join(out)


def item_cache(scorer: ScorerProcess) -> str:
    """Item cache hits / misses over the run of each worker process, from its ``/metrics``."""
    out = []
    for url in scorer.worker_urls():
        samples = {s.name: s.value for family in text_string_to_metric_families(
            httpx.get(f"{url}/metrics").text) for s in family.samples}
        hits = samples.get("streamrank_item_cache_hits_total", 0.0)
        misses = samples.get("streamrank_item_cache_misses_total", 0.0)
        out.append(f"{hits:,.0f} / {misses:,.0f} ({hits / max(1.0, hits + misses):.0%})")
    return " + ".join(out)


def measure(settings: Settings, args: argparse.Namespace) -> Rows:
    """Steps 2 to 7 of the module docstring on a stack with the run's topics."""
    work, examples = prepare(settings, args.rows)
    per_run_s = args.swap_seconds + 5.0  # a swap run, its warm-up and catching up
    stream = DeltaStream(settings, examples, args.delta_every_s,
                         count=int(3 * per_run_s / args.delta_every_s))
    variants: dict[str, ScorerProcess] = {}
    try:
        logs = settings.run_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        if args.before:
            variants["before"] = start_scorer(settings, logs / "before.log",
                                              env={"PYTHONPATH": str(args.before.resolve())})
        variants["x1"] = start_scorer(settings, logs / "x1.log")
        variants["x2"] = start_scorer(settings, logs / "x2.log", workers=2)
        wait_version(list(variants.values()), 1)  # the stream's first version: the snapshot
        stream.wait_ready()
        console.print("scorers: " + ", ".join(
            f"{name} {s.url} (RSS MB {memory_mb(s)})" for name, s in variants.items()))
        alone = model_alone(settings)
        results: Rows = [("model_alone", f"{n:,}", f"p50 {a['p50_ms']:.2f} ms",
                          f"{a['cand_per_s']:,.0f} candidates/s") for n, a in alone.items()]
        results += in_process(settings, work) + healthz_floor(variants["x1"], args.seconds)
        results += steady(variants, work, args.seconds)
        if not args.no_ladder:
            results += highest_rates(variants, work, args.seconds,
                                     {100: args.p99_ms, 1_000: args.p99_ms_1000})
        results += swaps(variants, work, stream, args)
        results += [("memory", name, f"RSS MB {memory_mb(s)}") for name, s in variants.items()]
        caches = [(name, item_cache(s)) for name, s in variants.items()]
        console.print(table("item cache over the run, per process",
                            ("scorer", "hits / misses (hit rate)"), caches))
        return results + [("item_cache", *row) for row in caches]
    finally:
        for scorer in variants.values():
            scorer.stop()
        stream.kill()


def parse_args() -> argparse.Namespace:
    """The command line (module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000, help="rows of the sample into Feast")
    parser.add_argument("--seconds", type=float, default=6.0, help="seconds per load run")
    parser.add_argument("--delta-every-s", type=float, default=0.25)
    parser.add_argument("--swap-rate", type=float, default=100.0,
                        help="requests/s (100 candidates) while deltas stream")
    parser.add_argument("--swap-window-ms", type=float, default=20.0)
    parser.add_argument("--swap-seconds", type=float, default=20.0,
                        help="seconds of load per variant while deltas stream (about 18 "
                             "requests per second of it are near a swap: at 20 s, the p99 "
                             "near a swap is not the slowest one or two)")
    parser.add_argument("--p99-ms", type=float, default=20.0,
                        help="the p99 the highest rate of 100 candidates must hold")
    parser.add_argument("--p99-ms-1000", type=float, default=40.0,
                        help="the p99 the highest rate of 1,000 candidates must hold")
    parser.add_argument("--before", type=Path, default=None,
                        help="a copy of an earlier tree whose scorer runs side by side")
    parser.add_argument("--no-ladder", action="store_true", help="skip the highest-rate search")
    parser.add_argument("--out", type=Path, default=None, help="write scorer.md here")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    base = load_settings()
    run_dir = (base.run_dir / "bench-scorer" / uuid.uuid4().hex[:8]).resolve()
    settings = fresh_settings(base, run_dir, redis_db=11, snapshot_every=1_000_000)
    started = stack.up(settings)  # creates the run's topics too
    try:
        with fresh_topics(settings):
            redis.Redis.from_url(settings.redis_url).flushdb()  # the benchmark's own database
            results = measure(settings, args)
    finally:
        if any(state == "started" for state in started.values()):
            stack.down(settings)
    if args.out:
        write_report(args.out, "scorer.md", [
            "# Scorer benchmark", "", "| what | columns |", "| --- | --- |",
            *(f"| {r[0]} | {' | '.join(r[1:])} |" for r in results)])


if __name__ == "__main__":
    main()
