"""The live loop behind ``streamrank demo`` (and ``make demo``).

1. ``up``: the stack, the features job, the Feast writer, the training job and two scorers,
   all running at once, under the supervisor (:mod:`streamrank.live`);
2. the head of the shared Taobao sample (impressions added by the rule) replayed into
   ``events`` as fast as it can be produced, its event times shifted so that it ends as the
   live part starts: the features and the model start from that history;
3. once a scorer serves a model, simulated shoppers (:mod:`streamrank.simulate`) rank, click
   and buy for ``seconds``; their tastes rotate halfway; 30 % of them are ranked by a scorer
   pinned to the version served when they started (the frozen arm);
4. the report of the run (:mod:`streamrank.loop_report`) to ``out``; the ``curl`` that ranks
   for a shopper while ``streamrank up`` runs;
5. ``down``: everything stopped, by pid.

The loop runs with a shorter attribution window than the default (:data:`LIVE`), so that
impressions become examples within the run; an explicit ``STREAMRANK_*`` setting wins.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from config import Settings
from streamrank.simulate import Simulation, SimulationOptions

LIVE = {"attribution_window_ms": 15_000, "allowed_lateness_ms": 5_000,
        "max_out_of_orderness_ms": 2_000}
"""The demo loop's label-join timing: an impression is finished ~22 s after it was shown."""
SCORERS = 2
MODEL_WAIT_S = 300.0


def live_settings(settings: Settings) -> Settings:
    """``settings`` with :data:`LIVE` where the environment does not set them."""
    update = {k: v for k, v in LIVE.items() if f"STREAMRANK_{k.upper()}" not in os.environ}
    return settings.model_copy(update=update)


def _step(console: Console, n: int, text: str) -> float:
    console.rule(f"[bold]{n}. {text}")
    return time.perf_counter()


def backfill(settings: Settings, rows: int, out: Path, console: Console) -> int:
    """Replay the first ``rows`` rows of the sample, shifted to end now; events sent."""
    from connectors.logs import read_log
    from connectors.producer import EventProducer
    from connectors.replay import replay
    from features.impressions import with_impressions

    head = out / "sample-head.csv"
    with settings.sample_log.open() as src, head.open("w") as dst:
        dst.writelines(line for _, line in zip(range(rows), src))
    log, report = read_log(head, "taobao", settings=settings)
    events = sorted(with_impressions(log, settings), key=lambda e: e.event_time)
    console.print(report.summary())
    shift = time.time_ns() // 1_000_000 - 1_000 - events[-1].event_time
    with EventProducer(settings) as producer:
        stats = replay((e.model_copy(update={"event_time": e.event_time + shift}) for e in events),
                       producer)
    console.print(f"sent {stats.sent:,} events in {stats.seconds:.1f}s, times shifted by "
                  f"{shift / 86_400_000:.0f} days")
    return stats.sent


def wait_for_model(settings: Settings, urls: list[str], console: Console) -> None:
    """Until every scorer serves a version (the trainer has published one)."""
    import httpx

    deadline = time.monotonic() + MODEL_WAIT_S
    while True:
        versions = [int(httpx.get(f"{u}/status", timeout=5).json()["version"]) for u in urls]
        if min(versions) > 0:
            console.print(f"scorers serve versions {versions}")
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"no model served after {MODEL_WAIT_S:.0f} s; see "
                               f"{settings.path('logs', 'job-training.log')}")
        time.sleep(1)


def print_summary(facts: dict, console: Console) -> None:
    """The report's tables, readable without a terminal."""
    hops = Table("hop", "n", "p50 ms", "p99 ms", title="freshness, hop by hop")
    for hop, v in facts["hops_ms"].items():
        hops.add_row(hop, str(v["n"]), f"{v['p50']:,.0f}", f"{v['p99']:,.0f}")
    ctr = Table("arm", "CTR before drift", "CTR after drift", title="served rankings")
    for arm, phases in facts["ctr"].items():
        ctr.add_row(arm, *(f"{phases.get(p, float('nan')):.4f}"
                           for p in ("before drift", "after drift")))
    console.print(hops)
    console.print(ctr)


def curl(sim: Simulation, url: str) -> str:
    """A ``curl`` that ranks one simulated shopper's candidates."""
    import random

    user = sim.model.users[0]
    items = sim.model.candidates(user, random.Random(0))[:5]
    body = json.dumps({"user_id": user, "items": [
        {"item_id": i, "category_id": sim.model.item_category[i]} for i in items]})
    return f"curl -s -X POST {url}/rank -H 'content-type: application/json' -d '{body}'"


def run_demo(settings: Settings, out: Path, rows: int, seconds: float, console: Console) -> None:
    """The live loop, bounded (module docstring)."""
    from streamrank import live
    from streamrank.loop_report import write_report

    started = time.perf_counter()
    settings = live_settings(settings)
    out.mkdir(parents=True, exist_ok=True)
    _step(console, 1, "up: stack, features job, Feast writer, training job, scorers")
    try:
        for part, what in live.up(settings, SCORERS).items():
            console.print(f"{part}: {what}")
        urls = live.wait_for_scorers(settings, SCORERS)
        _step(console, 2, f"replay the first {rows:,} rows of {settings.sample_log.name}")
        backfill(settings, rows, out, console)
        wait_for_model(settings, urls, console)

        _step(console, 3, f"simulated shoppers for {seconds:.0f} s (drift at {seconds / 2:.0f} s)")
        sim = Simulation(settings, SimulationOptions(rate=10, duration_s=seconds,
                                                     drift_at_s=seconds / 2, frozen_share=0.3))
        last = [0.0]

        def progress(rec) -> None:  # noqa: ANN001 - streamrank.simulate.Recorder
            if time.monotonic() - last[0] >= 10:
                last[0] = time.monotonic()
                console.print(f"{len(rec.rankings):,} rankings, {rec.events_sent:,} events, "
                              f"newest version {max(rec.versions, default=0)}")

        rec = sim.run(on_tick=progress)

        _step(console, 4, "report")
        path = write_report(rec, out)
        print_summary(json.loads((out / "summary.json").read_text()), console)
        console.print(f"report: {path}")
        console.print("while `streamrank up` runs, rank for a shopper with:\n  " + curl(sim, urls[0]))
    finally:
        _step(console, 5, "down")
        for part, what in live.down(settings).items():
            console.print(f"{part}: {what}")
    console.print(f"demo took {time.perf_counter() - started:.0f}s")
