"""The report of a live-loop run (``simulate --report DIR``, ``make demo``): markdown + PNG.

Every figure comes from the :class:`~streamrank.simulate.Recorder` of the run that writes it:

* **freshness, hop by hop** (:func:`hops`): click → the user's row in Feast at or past it;
  impression → its training example on ``training.examples``; example → the first version
  published after it whose event-time watermark is past it; version published → served by every
  live scorer; and the whole loop, click → the first live ranking by a version whose watermark
  is past the click;
* CTR of the served rankings over time, live vs frozen, the drift marked (:func:`ctr_series`);
* the trainer's rolling AUC and log loss, events/s and consumer lag over time, delta sizes,
  scorer latency.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

from streamrank.simulate import Ranking, Recorder, write_rankings

HOPS = ("event → Feast", "impression → example", "example → learned", "published → served",
        "event → served by a learned version")


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank) of ``values``; NaN when empty.

    >>> percentile([1, 2, 3, 4], 50), percentile([1, 2, 3, 4], 99), percentile([], 50)
    (2, 4, nan)
    """
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def _first_after(times: Sequence[int], t: int) -> int:
    return bisect.bisect_left(times, t)


def learned_by(versions: dict[int, tuple[int, int, int]], event_ms: int,
               after_ms: int) -> int | None:
    """The first version seen at or after ``after_ms`` whose watermark is at or past
    ``event_ms`` (``versions``: version -> (watermark, seen ms, bytes)).

    >>> learned_by({1: (5, 100, 0), 2: (9, 200, 0), 3: (20, 300, 0)}, 8, 150)
    2
    >>> learned_by({1: (5, 100, 0)}, 8, 0) is None
    True
    """
    for version in sorted(versions):
        watermark, seen, _ = versions[version]
        if seen >= after_ms and watermark >= event_ms:
            return version
    return None


def served_everywhere(served: dict[tuple[str, int], int], urls: Iterable[str],
                      version: int) -> int | None:
    """When every scorer of ``urls`` was first seen serving ``version`` or a later one (ms);
    ``None`` if one never was.

    >>> served_everywhere({("a", 1): 10, ("a", 3): 30, ("b", 2): 25}, ["a", "b"], 2)
    30
    """
    last = 0
    for url in urls:
        times = [t for (u, v), t in served.items() if u == url and v >= version]
        if not times:
            return None
        last = max(last, min(times))
    return last


def first_learned_ranking(rankings: Sequence[Ranking], watermarks: dict[int, int],
                          event_ms: int) -> Ranking | None:
    """The first live ranking at or after ``event_ms`` made by a version whose watermark is at
    or past it (``rankings`` in time order)."""
    times = [r.t_ms for r in rankings]
    for r in rankings[_first_after(times, event_ms):]:
        if r.arm == "live" and watermarks.get(r.version, -1) >= event_ms:
            return r
    return None


def hops(rec: Recorder) -> dict[str, list[float]]:
    """Each hop's latencies in ms (module docstring), over what this run measured."""
    watermarks = {v: w for v, (w, _, _) in rec.versions.items()}
    rankings = sorted(rec.rankings, key=lambda r: r.t_ms)
    example_learned = []
    for event_ms, arrived, _ in rec.examples:
        version = learned_by(rec.versions, event_ms, arrived)
        if version is not None:
            example_learned.append(rec.versions[version][1] - arrived)
    urls = sorted({url for url, _ in rec.served})
    published = []
    for version, (_, seen, _) in rec.versions.items():
        if seen >= rec.started_ms and (everywhere := served_everywhere(rec.served, urls,
                                                                       version)) is not None:
            published.append(max(0, everywhere - seen))
    loop = []
    for clicked, _ in rec.clicks:
        ranking = first_learned_ranking(rankings, watermarks, clicked)
        if ranking is not None:
            loop.append(ranking.t_ms - clicked)
    return {HOPS[0]: list(rec.feast_ms),
            HOPS[1]: [arrived - t for t, arrived, _ in rec.examples],
            HOPS[2]: example_learned, HOPS[3]: published, HOPS[4]: loop}


def ctr_series(rankings: Sequence[Ranking], start_ms: int, window_s: float = 10.0,
               min_shown: int = 1) -> dict[str, list[tuple[float, float]]]:
    """Per arm, (window start in s from ``start_ms``, clicks / impressions shown) per window
    that showed at least ``min_shown`` impressions.

    >>> r = [Ranking(0, "u", "live", 1, 10, 2, 0, 1.0), Ranking(11_000, "u", "live", 1, 10, 0, 0, 1)]
    >>> ctr_series(r, 0)
    {'live': [(0.0, 0.2), (10.0, 0.0)]}
    """
    sums: dict[str, dict[int, list[int]]] = {}
    for r in rankings:
        window = int((r.t_ms - start_ms) / 1000 // window_s)
        cell = sums.setdefault(r.arm, {}).setdefault(window, [0, 0])
        cell[0] += r.clicks
        cell[1] += r.shown
    return {arm: [(w * window_s, c / n) for w, (c, n) in sorted(cells.items())
                  if n and n >= min_shown]
            for arm, cells in sorted(sums.items())}


def ctr_by_phase(rec: Recorder) -> dict[str, dict[str, float]]:
    """CTR per arm before and after the drift (whole run as ``before`` without one)."""
    out: dict[str, dict[str, list[int]]] = {}
    for r in rec.rankings:
        phase = "after drift" if rec.drift_ms is not None and r.t_ms >= rec.drift_ms else "before drift"
        cell = out.setdefault(r.arm, {}).setdefault(phase, [0, 0])
        cell[0] += r.clicks
        cell[1] += r.shown
    return {arm: {phase: c / n for phase, (c, n) in phases.items() if n}
            for arm, phases in sorted(out.items())}


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def summary(rec: Recorder) -> dict[str, object]:
    """The run's headline figures (also written as ``summary.json``)."""
    seconds = max((max((r.t_ms for r in rec.rankings), default=rec.started_ms)
                   - rec.started_ms) / 1000, 1e-9)
    latencies = [r.latency_ms for r in rec.rankings]
    events = [s["events"] for s in rec.samples]
    return {
        "seconds": round(seconds, 1), "rankings": len(rec.rankings),
        "simulated_events": rec.events_sent, "simulated_events_per_s": rec.events_sent / seconds,
        "events_per_s_through_loop": ((events[-1] - events[0]) /
                                      max((rec.samples[-1]["t_ms"] - rec.samples[0]["t_ms"]) / 1000,
                                          1e-9) if len(events) > 1 else math.nan),
        "versions_published": len([v for v in rec.versions.values() if v[1] >= rec.started_ms]),
        "served_versions": sorted({r.version for r in rec.rankings if r.arm == "live"}),
        "rank_latency_ms": {"p50": percentile(latencies, 50), "p99": percentile(latencies, 99)},
        "hops_ms": {hop: {"n": len(v), "p50": percentile(v, 50), "p99": percentile(v, 99)}
                    for hop, v in hops(rec).items()},
        "ctr": ctr_by_phase(rec), "errors": rec.errors[:20], "error_count": len(rec.errors),
    }


def _plots(rec: Recorder, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = rec.started_ms
    names = []
    fig, (ax_ctr, ax_auc) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    for arm, points in ctr_series(rec.rankings, start, min_shown=100).items():
        ax_ctr.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=arm)
    ax_ctr.set_ylabel("CTR of served rankings (10 s windows)")
    samples = [s for s in rec.samples if s.get("metrics")]
    for key in sorted({k for s in samples for k in s["metrics"]
                       if k.startswith("click") and ("auc" in k or "loss" in k)}):
        ax_auc.plot([(s["t_ms"] - start) / 1000 for s in samples],
                    [s["metrics"].get(key, math.nan) for s in samples], label=key)
    ax_auc.set_ylabel("trainer, rolling")
    ax_auc.set_xlabel("seconds since the simulation started")
    for ax in (ax_ctr, ax_auc):
        if rec.drift_ms is not None:
            ax.axvline((rec.drift_ms - start) / 1000, color="red", linestyle="--", label="drift")
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "ctr.png", dpi=100)
    names.append("ctr.png")
    plt.close(fig)

    measured = {hop: v for hop, v in hops(rec).items() if v}
    fig, axes = plt.subplots(1, max(1, len(measured)), figsize=(4 * max(1, len(measured)), 3.2))
    for ax, (hop, values) in zip(axes if len(measured) > 1 else [axes], measured.items()):
        ax.hist([v / 1000 for v in values], bins=30)
        ax.set_title(hop, fontsize=9)
        ax.set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(out / "freshness.png", dpi=100)
    names.append("freshness.png")
    plt.close(fig)

    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    ts = [(s["t_ms"] - start) / 1000 for s in rec.samples]
    rates = [0.0] * bool(ts) + [(b["events"] - a["events"]) / max((b["t_ms"] - a["t_ms"]) / 1000, 1e-9)
                                for a, b in zip(rec.samples, rec.samples[1:])]
    axes[0].plot(ts, rates, label="events/s on `events`")
    for key in ("lag_features", "lag_training"):
        axes[0].plot(ts, [s.get(key) or 0 for s in rec.samples], label=key)
    axes[0].legend(fontsize=8)
    axes[1].plot([(r.t_ms - start) / 1000 for r in rec.rankings],
                 [r.latency_ms for r in rec.rankings], ".", markersize=2)
    axes[1].set_ylabel("/rank latency, ms")
    seen = sorted((s, b) for _, s, b in rec.versions.values() if s >= start)
    axes[2].plot([(s - start) / 1000 for s, _ in seen], [b / 1024 for _, b in seen], ".")
    axes[2].set_ylabel("update size, KiB")
    axes[2].set_xlabel("seconds since the simulation started")
    fig.tight_layout()
    fig.savefig(out / "loop.png", dpi=100)
    names.append("loop.png")
    plt.close(fig)
    return names


def _ms(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:,.0f}"


def write_report(rec: Recorder, out: Path) -> Path:
    """Write ``report.md``, ``summary.json``, ``rankings.csv`` and the plots to ``out``."""
    import json

    out.mkdir(parents=True, exist_ok=True)
    facts = summary(rec)
    (out / "summary.json").write_text(json.dumps(facts, indent=2, default=str))
    write_rankings(rec, out / "rankings.csv")
    plots = _plots(rec, out)
    hop_rows = [(hop, str(v["n"]), _ms(v["p50"]), _ms(v["p99"]))
                for hop, v in facts["hops_ms"].items()]  # type: ignore[union-attr]
    ctr_rows = [(arm, *(f"{phases.get(p, math.nan):.4f}" for p in ("before drift", "after drift")))
                for arm, phases in facts["ctr"].items()]  # type: ignore[union-attr]
    latency = facts["rank_latency_ms"]
    text = "\n\n".join([
        "# The live loop",
        f"{facts['rankings']:,} rankings in {facts['seconds']} s; {facts['simulated_events']:,} "
        f"simulated events ({facts['simulated_events_per_s']:.0f}/s); "
        f"{facts['events_per_s_through_loop']:.0f} events/s on `events` in all; "
        f"{facts['versions_published']} versions published; live rankings served by versions "
        f"{facts['served_versions'][:1]}…{facts['served_versions'][-1:]}; /rank p50 "
        f"{latency['p50']:.1f} ms, p99 {latency['p99']:.1f} ms (as the shoppers saw it).",  # type: ignore[index]
        "## Freshness, hop by hop (ms)",
        _table(("hop", "n", "p50", "p99"), hop_rows),
        "## CTR of served rankings",
        _table(("arm", "before drift", "after drift"), ctr_rows),
        *(f"![{name}]({name})" for name in plots),
        f"Errors: {facts['error_count']}" + "".join(f"\n- {e}" for e in facts["errors"]),  # type: ignore[union-attr]
    ])
    path = out / "report.md"
    path.write_text(text + "\n")
    return path
