"""Progressive validation of the rankers on a shopper log (``streamrank evaluate``).

The log is read (:mod:`connectors.logs`), given impressions where it has none
(:mod:`features.impressions`) and turned into training examples with the features as of each
impression (:mod:`features.example_builder`) — the same code paths ``replay`` and the streaming jobs
use. One pass builds the examples into a temporary spool file (bounded memory; it also counts
them, which fixes the freeze point); they are then read back in event-time order in mini-batches
of ``settings.batch_size``: every model scores a batch before any model learns from it. Models:

* ``online`` — :class:`models.trainer.OnlineTrainer`, learning all along;
* ``frozen`` — the same model frozen (``OnlineTrainer.frozen_copy``) at the first batch boundary
  at or after :data:`FREEZE_FRACTION` of the examples (before that it *is* the online model);
* ``ftrl`` — River's FTRL-Proximal logistic regression (:mod:`models.baselines`);
* ``most_popular`` — recent item popularity (:mod:`models.baselines`).

The online model runs through :class:`models.loop.TrainingLoop`, the loop the training job
runs (without the trainer's own online metrics: the scores are measured here). Each batch is
scored by every model before any model learns from it: the baselines predict, the loop scores
and learns, then the baselines learn. Where there are two cores, the baselines and the frozen
model's scores after the freeze point run in a second process
(:func:`progressive_in_parallel`); everything runs with one torch thread and without cyclic
garbage collection (:func:`lean_runtime`).

Metrics per model and head (click; purchase where a model has that head): exact AUC and mean
log loss over the whole stream and over its first 10 % and first 20 % (:data:`SEGMENTS`: how
fast a model learns, when most users and items are new), and per window of time
(:data:`WINDOWS` consecutive slices of equal example counts, event-time order); plus the
curves along the stream: cumulative AUC (binned, :class:`models.trainer.BinnedAUC`), cumulative
log loss and the exact AUC over the last ``ROLLING_WINDOW`` examples. The purchase label is the
example's ``purchase`` (bought within the attribution window). :func:`evaluate_logs` runs
several logs in one go and writes the per-log table.
"""

from __future__ import annotations

import gc
import io
import itertools
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from scipy.stats import rankdata

from config import Settings
from connectors.events import Event
from connectors.logs import CsvMapping, LogFormat, ParseReport, read_log
from connectors.training_examples import TrainingExample, decode_example, encode_example
from features.example_builder import ExampleBuilder
from features.impressions import with_impressions
from models.base import OnlineRanker
from models.baselines import MostPopular, RiverFtrlBaseline
from models.loop import TrainingLoop
from models.ranker import Ranker
from models.trainer import ROLLING_WINDOW, BinnedAUC, FrozenRanker, OnlineTrainer, log_loss

FREEZE_FRACTION = 0.2
"""The frozen model stops learning after this share of the examples."""
CURVE_POINTS = 100
"""About this many points per curve."""
MODELS = ("online", "frozen", "ftrl", "most_popular")
SEGMENTS = {"all": 1.0, "first_10%": 0.1, "first_20%": 0.2}
"""Leading shares of the stream every metric is also given over."""
WINDOWS = 20
"""Consecutive windows of time (equal example counts) the windowed metrics use."""


def exact_auc(y: np.ndarray, p: np.ndarray) -> float | None:
    """ROC AUC by ranks (ties count half); None without both classes.

    >>> exact_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    0.75
    """
    pos = y > 0
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(p)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def head_figures(y: np.ndarray, p: np.ndarray) -> dict[str, float | None]:
    """``auc`` and ``logloss`` of labels ``y`` and probabilities ``p`` (NaN scores left out)."""
    ok = np.isfinite(p)
    if not ok.any():
        return {"auc": None, "logloss": None}
    return {"auc": exact_auc(y[ok], p[ok]), "logloss": float(log_loss(y[ok], p[ok]).mean())}


@dataclass
class ModelResult:
    """One model's figures over the whole stream (``None`` where it has no purchase head)."""

    auc: float
    logloss: float
    examples: int
    positives: int
    purchase_auc: float | None
    purchase_logloss: float | None
    purchases: int
    curves: dict[str, list[float]]
    """``x`` (examples seen), ``auc`` and ``logloss`` (cumulative), ``window_auc``."""
    segments: dict[str, dict[str, float | None]] = field(default_factory=dict)
    """Per :data:`SEGMENTS` name: ``click_auc``, ``click_logloss``, ``purchase_auc``,
    ``purchase_logloss`` (None where a model has no such head)."""
    windows: dict[str, list[Any]] = field(default_factory=dict)
    """Per window of time: ``start``, ``end`` (example indices), ``t_start_ms``, ``t_end_ms``,
    ``auc`` and ``logloss`` (click)."""


@dataclass
class EvaluationResult:
    """Everything :func:`evaluate` measured."""

    log: ParseReport
    counters: dict[str, int]
    """What building the examples did (see :class:`features.example_builder.ExampleBuilder`)."""
    examples: int
    frozen_at: int
    """Examples seen when the frozen model stopped learning."""
    seconds: float
    stage_seconds: dict[str, float]
    """Wall times of ``examples`` (read, impressions, features, labels), ``models``, ``metrics``."""
    models: dict[str, ModelResult]
    rules: dict[str, object]
    predictions: dict[str, np.ndarray] = field(repr=False)
    """``N X 2`` (p_click, p_purchase) per model, in example order, each made before learning."""
    labels: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 2)))
    """``N X 2`` (click, purchase), in example order."""

    def to_json(self) -> dict[str, object]:
        """The ``results.json`` document."""
        return {
            "log": {"path": self.log.path, "format": self.log.fmt, "lines": self.log.lines,
                    "events": self.log.events, "bad": self.log.bad,
                    "bad_reasons": dict(self.log.reasons), "out_of_order": self.log.out_of_order},
            "rules": self.rules,
            "counters": self.counters,
            "examples": self.examples,
            "frozen_at": self.frozen_at,
            "seconds": round(self.seconds, 2),
            "stage_seconds": {k: round(v, 2) for k, v in self.stage_seconds.items()},
            "models": {name: asdict(m) for name, m in self.models.items()},
        }


def rules(settings: Settings) -> dict[str, object]:
    """The impression and label rules in force, as reported with the results."""
    k = settings.impressions_per_request
    return {
        "impressions": (
            f"each click without a request_id becomes a request of {k} impressions at its time "
            f"minus 1 ms: the clicked item plus up to {k - 1} distinct other items drawn uniformly "
            f"from the items of the next {settings.popularity_window} clicks (popularity around "
            f"that time), positions shuffled, seed {settings.sampling_seed}; "
            "logs with impressions keep theirs"),
        "attribution_window_ms": settings.attribution_window_ms,
        "max_out_of_orderness_ms": settings.max_out_of_orderness_ms,
        "allowed_lateness_ms": settings.allowed_lateness_ms,
        "batch_size": settings.batch_size,
        "freeze_fraction": FREEZE_FRACTION,
        "window_auc_examples": ROLLING_WINDOW,
    }


@contextmanager
def lean_runtime() -> Iterator[None]:
    """One torch thread and no cyclic garbage collection inside, both restored after.

    One thread: the model is small, and a second intra-op thread contends with the baselines'
    process (and any other work) for the cores. No cycle collection: building the examples and
    learning make next to no reference cycles (reference counting frees everything), while every
    full collection walks all the long-lived feature state: on the Taobao sample, nearly half
    of the examples' build time.
    """
    threads, collecting = torch.get_num_threads(), gc.isenabled()
    torch.set_num_threads(1)
    gc.disable()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if collecting:
            gc.enable()


def _counted(
    events: Iterable[Event], tick: Callable[[int], None], every: int = 4096
) -> Iterator[Event]:
    n = 0
    for n, event in enumerate(events, start=1):
        if n % every == 0:
            tick(every)
        yield event
    tick(n % every)


def spooled_batches(path: str, size: int, skip: int = 0) -> Iterator[list[TrainingExample]]:
    """The examples of a spool file in order after the first ``skip``, ``size`` at a time."""
    with open(path, "rb") as f:
        for _ in itertools.islice(f, skip):
            pass
        while batch := [decode_example(line) for line in itertools.islice(f, size)]:
            yield batch


class ExampleSpool:
    """Examples written once to a temporary file, then read back in batches (by any process:
    :attr:`path`).

    Memory stays bounded by a batch whatever the log's size; the labels (``N X 2`` click,
    purchase) and event times are kept since every metric needs them.
    """

    def __init__(self, examples: Iterable[TrainingExample]) -> None:
        self._file = tempfile.NamedTemporaryFile(prefix="streamrank-examples-")
        self.path = self._file.name
        labels: list[tuple[int, int]] = []
        times: list[int] = []
        for x in examples:
            self._file.write(encode_example(x) + b"\n")
            labels.append((x.click, x.purchase))
            times.append(x.event_time)
        self.labels = np.array(labels, dtype=np.float64).reshape(len(labels), 2)
        self.times = np.array(times, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def flush(self) -> None:
        """Make every example readable through :attr:`path`."""
        self._file.flush()

    def batches(self, size: int) -> Iterator[list[TrainingExample]]:
        """The examples in order, ``size`` at a time."""
        self.flush()
        yield from spooled_batches(self.path, size)

    def close(self) -> None:
        """Remove the temporary file."""
        self._file.close()


def spool_examples(
    path: str | Path, fmt: LogFormat, settings: Settings, mapping: CsvMapping | None = None,
    on_events: Callable[[int], None] = lambda n: None,
) -> tuple[ExampleSpool, ParseReport, dict[str, int]]:
    """The log's training examples (impression-time order) spooled, the read's report and the
    builder's counters; ``on_events(n)`` is told as the log's events are consumed."""
    events, report = read_log(path, fmt, mapping, settings=settings)
    builder = ExampleBuilder(settings)
    spool = ExampleSpool(builder.run(with_impressions(_counted(events, on_events), settings)))
    return spool, report, builder.counters()


def _check(models: Sequence[str]) -> tuple[str, ...]:
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        raise ValueError(f"models must be some of {', '.join(MODELS)}; "
                         + (f"unknown: {', '.join(map(repr, unknown))}" if unknown else "none given"))
    return tuple(m for m in MODELS if m in models)


def progressive(
    batches: Iterable[Sequence[TrainingExample]], n: int, settings: Settings,
    on_batch: Callable[[int], None] = lambda n: None, models: Sequence[str] = MODELS,
    on_freeze: Callable[[FrozenRanker, int], None] | None = None,
) -> tuple[dict[str, np.ndarray], int]:
    """The ``models``' ``N X 2`` predictions over ``n`` examples given in batches (of
    ``settings.batch_size``), each batch scored before any model learns from it, and the number
    of examples the frozen model learned from.

    ``on_freeze(frozen, at)``, where given, takes the frozen model at the freeze point (``at``:
    the examples it learned) to score the rest elsewhere; its predictions from there on are
    left NaN here.
    """
    names = _check(models)
    learners: dict[str, OnlineRanker] = {}
    online = loop = None
    if "online" in names or "frozen" in names:  # the frozen model is the online one, stopped
        online = OnlineTrainer(settings, online_metrics=False)  # measured here, from the scores
        loop = TrainingLoop(online, settings)
    if "ftrl" in names:
        learners["ftrl"] = RiverFtrlBaseline()
    if "most_popular" in names:
        learners["most_popular"] = MostPopular()
    freeze_at = math.ceil(n * FREEZE_FRACTION)
    frozen: FrozenRanker | None = None
    frozen_at = n
    out = {name: np.full((n, 2), np.nan) for name in set(names) | {"online"}}
    start = 0
    for batch in batches:
        end = start + len(batch)
        if "frozen" in names and online is not None and frozen_at == n and start >= freeze_at:
            frozen, frozen_at = online.frozen_copy(), start
            if on_freeze is not None:
                on_freeze(frozen, start)
                frozen = None
            if "online" not in names:  # nothing needs the online model any more
                online = loop = None
        for name, model in learners.items():
            out[name][start:end] = model.predict_many(batch)
        if frozen is not None:
            out["frozen"][start:end] = frozen.predict_many(batch)
        if loop is not None:
            out["online"][start:end] = loop.progressive(batch)[0]
            if "frozen" in names and frozen_at == n:  # not frozen yet: the online model
                out["frozen"][start:end] = out["online"][start:end]
        for model in learners.values():
            model.learn_many(batch)
        on_batch(len(batch))
        start = end
    if start != n:
        raise ValueError(f"expected {n} examples, got {start}")
    return {name: out[name] for name in names}, frozen_at


BASELINES = ("ftrl", "most_popular")
"""The models :func:`progressive_in_parallel` runs in a second process (with the frozen
model's scores after the freeze point)."""
PARALLEL_MIN_EXAMPLES = 50_000
"""Below this many examples a second process costs more (its start, imports) than it saves."""


def _baselines_of_file(path: str, n: int, settings: Settings,
                       models: Sequence[str]) -> dict[str, np.ndarray]:
    with lean_runtime():
        return progressive(spooled_batches(path, settings.batch_size), n, settings,
                           models=models)[0]


def _frozen_of_file(path: str, settings: Settings, weights: bytes, start: int) -> np.ndarray:
    """The ``N X 2`` scores of a frozen model (its ``torch.save``'d state) of a spool file's
    examples from ``start`` on, in the batches :func:`progressive` would give it."""
    with lean_runtime():
        model = Ranker.from_settings(settings)
        model.load_state_dict(torch.load(io.BytesIO(weights), weights_only=True))
        frozen = FrozenRanker(model)
        scores = [frozen.predict_many(batch)
                  for batch in spooled_batches(path, settings.batch_size, skip=start)]
    return np.concatenate(scores) if scores else np.zeros((0, 2))


def _saved(frozen: FrozenRanker) -> bytes:
    buffer = io.BytesIO()
    torch.save(frozen.model.state_dict(), buffer)
    return buffer.getvalue()


def progressive_in_parallel(
    spool: ExampleSpool, settings: Settings, on_batch: Callable[[int], None] = lambda n: None,
    models: Sequence[str] = MODELS, min_examples: int = PARALLEL_MIN_EXAMPLES,
) -> tuple[dict[str, np.ndarray], int]:
    """:func:`progressive` over ``spool`` in two processes where there are two cores or more,
    the spool holds at least ``min_examples`` and both have work: here the torch models (the
    frozen one until the freeze point), in a second process the baselines (:data:`BASELINES`)
    and the frozen model's scores from the freeze point on (its weights handed over then).

    The models never see one another's learning, so each one's predictions are those of the
    single-process run: every example is still scored by every model before any learns it.
    """
    names = _check(models)
    here = [m for m in names if m not in BASELINES]
    baselines = [m for m in names if m in BASELINES]
    if (not here or not (baselines or "frozen" in here) or (os.cpu_count() or 1) < 2
            or len(spool) < min_examples):
        return progressive(spool.batches(settings.batch_size), len(spool), settings,
                           on_batch=on_batch, models=names)
    spool.flush()
    n = len(spool)
    pool = ProcessPoolExecutor(1, mp_context=get_context("spawn"))
    try:
        others = (pool.submit(_baselines_of_file, spool.path, n, settings, baselines)
                  if baselines else None)
        frozen: list[Future[np.ndarray]] = []

        def hand_over(model: FrozenRanker, at: int) -> None:
            frozen.append(pool.submit(_frozen_of_file, spool.path, settings, _saved(model), at))

        predictions, frozen_at = progressive(spool.batches(settings.batch_size), n, settings,
                                             on_batch=on_batch, models=here,
                                             on_freeze=hand_over)
        if others is not None:
            predictions |= others.result()
        if frozen:
            predictions["frozen"][frozen_at:] = frozen[0].result()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # the worker's exit (a second) overlaps
    return {name: predictions[name] for name in names}, frozen_at


def segments(y: np.ndarray, p: np.ndarray) -> dict[str, dict[str, float | None]]:
    """Both heads' figures over each of :data:`SEGMENTS` (``N X 2`` labels and scores)."""
    out: dict[str, dict[str, float | None]] = {}
    for name, share in SEGMENTS.items():
        k = max(1, math.ceil(len(y) * share))
        out[name] = {f"{head}_{key}": value
                     for col, head in enumerate(("click", "purchase"))
                     for key, value in head_figures(y[:k, col], p[:k, col]).items()}
    return out


def windows(y: np.ndarray, p: np.ndarray, times: np.ndarray,
            count: int = WINDOWS) -> dict[str, list[Any]]:
    """Click AUC and log loss per window of time: ``count`` consecutive slices of equal size."""
    edges = np.linspace(0, len(y), min(count, len(y)) + 1).astype(int)
    out: dict[str, list[Any]] = {k: [] for k in (
        "start", "end", "t_start_ms", "t_end_ms", "auc", "logloss")}
    for a, b in zip(edges[:-1], edges[1:]):
        figures = head_figures(y[a:b, 0], p[a:b, 0])
        for key, value in (("start", a), ("end", b), ("t_start_ms", times[a]),
                           ("t_end_ms", times[b - 1]), ("auc", figures["auc"]),
                           ("logloss", figures["logloss"])):
            out[key].append(None if value is None else (
                round(float(value), 5) if key in ("auc", "logloss") else int(value)))
    return out


def score(y: np.ndarray, p: np.ndarray, step: int, every: int,
          times: np.ndarray | None = None) -> ModelResult:
    """Metrics of ``N X 2`` predictions ``p`` against ``N X 2`` labels ``y`` (click, purchase),
    fed in slices of ``step`` in order; curve points about every ``every`` examples; windows of
    time by the examples' event ``times`` (ms; default: their indices)."""
    has_purchase = bool(np.isfinite(p[:, 1]).any())
    cols = (0, 1) if has_purchase else (0,)
    aucs = {col: BinnedAUC() for col in cols}
    loss_sum = dict.fromkeys(cols, 0.0)
    loss_n = dict.fromkeys(cols, 0)
    curves: dict[str, list[float]] = {"x": [], "auc": [], "logloss": [], "window_auc": []}
    n, next_point = len(y), every
    for start in range(0, n, step):
        end = min(start + step, n)
        for col in cols:
            ok = np.isfinite(p[start:end, col])
            yy, pp = y[start:end, col][ok], p[start:end, col][ok]
            aucs[col].update(yy, pp)
            loss_sum[col] += float(log_loss(yy, pp).sum())
            loss_n[col] += len(yy)
        if end >= next_point or end == n:
            recent = slice(max(0, end - ROLLING_WINDOW), end)
            window_auc = head_figures(y[recent, 0], p[recent, 0])["auc"]
            curves["x"].append(end)
            curves["auc"].append(round(aucs[0].get(), 5))
            curves["logloss"].append(round(loss_sum[0] / max(loss_n[0], 1), 5))
            curves["window_auc"].append(round(window_auc or 0.0, 5))
            next_point = end + every
    mean_loss = {col: loss_sum[col] / max(loss_n[col], 1) for col in cols}
    return ModelResult(
        auc=aucs[0].get(), logloss=mean_loss[0], examples=n,
        positives=int(y[:, 0].sum()), purchase_auc=aucs[1].get() if has_purchase else None,
        purchase_logloss=mean_loss[1] if has_purchase else None, purchases=int(y[:, 1].sum()),
        curves=curves, segments=segments(y, p),
        windows=windows(y, p, np.arange(n) if times is None else times))


def evaluate(
    path: str | Path,
    fmt: LogFormat,
    settings: Settings,
    mapping: CsvMapping | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    models: Sequence[str] = MODELS,
) -> EvaluationResult:
    """Progressive validation of ``models`` (default: all of :data:`MODELS`) on the log at
    ``path`` (see the module docstring).

    Prints the table (and, with ``progress``, a progress bar); with ``out_dir``, writes
    ``results.json``, ``report.md``, ``auc.png`` and ``logloss.png`` there. Raises
    ``ValueError`` for an unknown model or a log that yields no examples.
    """
    names = _check(models)
    started = time.perf_counter()
    console = Console()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with (lean_runtime(),
          Progress(*columns, console=console, disable=not progress, transient=True) as bar):
        read = bar.add_task("building examples (events)", total=None)
        spool, report, counters = spool_examples(
            path, fmt, settings, mapping, on_events=lambda k: bar.advance(read, k))
        built = time.perf_counter()
        try:
            if not len(spool):
                raise ValueError(f"{path}: no training examples ({report.summary()})")
            learn = bar.add_task("progressive validation", total=len(spool))
            predictions, frozen_at = progressive_in_parallel(
                spool, settings, on_batch=lambda k: bar.advance(learn, k), models=names)
        finally:
            spool.close()
    learned = time.perf_counter()
    every = max(settings.batch_size, len(spool) // CURVE_POINTS)
    scores = {name: score(spool.labels, p, settings.batch_size, every, spool.times)
              for name, p in predictions.items()}
    done = time.perf_counter()
    result = EvaluationResult(
        log=report, counters=counters, examples=len(spool), frozen_at=frozen_at,
        seconds=done - started, models=scores, rules=rules(settings), predictions=predictions, labels=spool.labels,
        stage_seconds={"examples": built - started, "models": learned - built,
                       "metrics": done - learned})
    console.print(table(result))
    if out_dir is not None:
        write_report(result, Path(out_dir))
    return result


def fmt_figure(value: float | None) -> str:
    """A figure as the tables print it (``—`` for none)."""
    return "—" if value is None else f"{value:.4f}"


_HEADER = ["model", "click AUC", "AUC first 10 %", "AUC first 20 %", "click log loss",
           "log loss first 10 %", "log loss first 20 %", "purchase AUC", "purchase log loss",
           "examples", "clicks", "purchases"]


def _rows(result: EvaluationResult) -> list[list[str]]:
    rows = []
    for name, m in result.models.items():
        seg = m.segments
        rows.append([name, *(fmt_figure(seg[k]["click_auc"]) for k in SEGMENTS),
                     *(fmt_figure(seg[k]["click_logloss"]) for k in SEGMENTS),
                     fmt_figure(seg["all"]["purchase_auc"]),
                     fmt_figure(seg["all"]["purchase_logloss"]),
                     f"{m.examples:,}", f"{m.positives:,}", f"{m.purchases:,}"])
    return rows


def table(result: EvaluationResult) -> Table:
    """The results as a rich table."""
    return results_table(
        f"progressive validation: {result.log.path} ({result.examples:,} examples, "
        f"frozen after {result.frozen_at:,}, {result.seconds:.0f} s)", _HEADER, _rows(result))


def results_table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> Table:
    """A rich table of figures: the first column left-aligned, the others right-aligned."""
    t = Table(title=title)
    for i, name in enumerate(header):
        t.add_column(name, justify="left" if i == 0 else "right")
    for row in rows:
        t.add_row(*row)
    return t


def new_figure():  # type: ignore[no-untyped-def]
    """A matplotlib figure of the reports' size (Agg canvas, no pyplot state)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(8, 4.5), layout="constrained")


def _plot(result: EvaluationResult, key: str, ylabel: str, path: Path) -> None:
    fig = new_figure()
    ax = fig.add_subplot()
    for name, m in result.models.items():
        line, = ax.plot(m.curves["x"], m.curves[key], label=f"{name} (cumulative)")
        if key == "auc":
            ax.plot(m.curves["x"], m.curves["window_auc"], linestyle=":", color=line.get_color(),
                    label=f"{name} (last {ROLLING_WINDOW:,})")
    ax.axvline(result.frozen_at, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xlabel("examples seen (event-time order)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncols=2)
    fig.savefig(path, dpi=110)


def _plot_windows(result: EvaluationResult, key: str, ylabel: str, path: Path) -> None:
    fig = new_figure()
    ax = fig.add_subplot()
    t0 = min(m.windows["t_start_ms"][0] for m in result.models.values())
    for name, m in result.models.items():
        w = m.windows
        mid = [((a + b) / 2 - t0) / 3_600_000 for a, b in zip(w["t_start_ms"], w["t_end_ms"])]
        ax.plot(mid, [np.nan if v is None else v for v in w[key]], marker="o", markersize=3,
                label=name)
    ax.set_xlabel(f"event time, hours since the first example (windows of "
                  f"{result.examples // WINDOWS:,} examples)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=110)


def write_report(result: EvaluationResult, out_dir: Path) -> None:
    """``results.json``, ``report.md`` and the plots (``auc.png``, ``logloss.png``,
    ``auc_windows.png``, ``logloss_windows.png``) in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    _plot(result, "auc", "click AUC", out_dir / "auc.png")
    _plot(result, "logloss", "click log loss", out_dir / "logloss.png")
    _plot_windows(result, "auc", "click AUC per window", out_dir / "auc_windows.png")
    _plot_windows(result, "logloss", "click log loss per window", out_dir / "logloss_windows.png")
    r = result.rules
    lines = [
        "# Progressive validation", "",
        f"Log: {result.log.summary()}.", "",
        f"{result.examples:,} examples in event-time order, mini-batches of {r['batch_size']}; "
        "each batch is scored by every model before any model learns from it. "
        f"The frozen model stopped learning after {result.frozen_at:,} examples "
        f"({FREEZE_FRACTION:.0%}, at a batch boundary). Built in {result.seconds:.1f} s.", "",
        "| " + " | ".join(_HEADER) + " |",
        "|" + "---|" * len(_HEADER),
        *("| " + " | ".join(row) + " |" for row in _rows(result)), "",
        "AUC (exact) and log loss over the whole stream and over its first 10 % and 20 %; the "
        "purchase label is a purchase of the item by the user within the attribution window "
        "(— : the model has no purchase head).", "",
        "## Rules", "",
        f"- Impressions: {r['impressions']}.",
        f"- Labels: a click or purchase counts for an impression within "
        f"{cast(int, r['attribution_window_ms']) / 60_000:g} min after it (clicks by request_id, else "
        "the latest impression of the user and item); an impression without a click by then is a "
        f"negative. Watermark: max event time - {r['max_out_of_orderness_ms']} ms; events older "
        f"than the watermark - {r['allowed_lateness_ms']} ms are dropped as late.",
        "- Features: as of the impression (read before it is applied, at its event time).",
        "- Scores: every model scores at a fixed position (the online model learns at the "
        "impression's own position).",
        "- Counters: " + ", ".join(f"{k} {v:,}" for k, v in result.counters.items()) + ".", "",
        "## Over the stream", "",
        "![AUC](auc.png)", "",
        f"Dotted: AUC over the last {ROLLING_WINDOW:,} examples. Dashed: the freeze point.", "",
        "![log loss](logloss.png)", "",
        f"## Per window of time ({WINDOWS} windows of equal example counts)", "",
        "![AUC per window](auc_windows.png)", "",
        "![log loss per window](logloss_windows.png)", "",
    ]
    (out_dir / "report.md").write_text("\n".join(lines))


@dataclass(frozen=True)
class LogSpec:
    """One log of a multi-log evaluation."""

    path: Path
    fmt: LogFormat
    mapping: CsvMapping | None = None

    @property
    def name(self) -> str:
        """A short name for tables and directories (the file's stem)."""
        return self.path.stem


def suite_rows(results: Sequence[tuple[LogSpec, EvaluationResult]]) -> list[list[str]]:
    """One row per log and model: AUC and log loss overall / first 10 % / first 20 %."""
    rows = []
    for spec, result in results:
        for name, m in result.models.items():
            seg = m.segments
            rows.append([spec.name, name, *(fmt_figure(seg[k]["click_auc"]) for k in SEGMENTS),
                         *(fmt_figure(seg[k]["click_logloss"]) for k in SEGMENTS),
                         f"{result.examples:,}", f"{result.seconds:.0f}"])
    return rows


SUITE_HEADER = ["log", "model", "AUC", "AUC 10 %", "AUC 20 %", "log loss", "log loss 10 %",
                "log loss 20 %", "examples", "s"]


def evaluate_logs(
    logs: Sequence[LogSpec], settings: Settings, out_dir: str | Path | None = None,
    progress: bool = True, models: Sequence[str] = MODELS,
) -> list[tuple[LogSpec, EvaluationResult]]:
    """:func:`evaluate` on each log (same settings: nothing is tuned per log), then the per-log
    table; with ``out_dir``, each log's report in ``out_dir/<name>/`` and the table in
    ``out_dir/suite.md`` and ``suite.json``."""
    results = []
    for spec in logs:
        sub = None if out_dir is None else Path(out_dir) / spec.name
        results.append((spec, evaluate(spec.path, spec.fmt, settings, spec.mapping, sub,
                                       progress, models)))
    if len(results) > 1:
        t = Table(title=f"progressive validation over {len(results)} logs")
        for i, col in enumerate(SUITE_HEADER):
            t.add_column(col, justify="left" if i < 2 else "right")
        for row in suite_rows(results):
            t.add_row(*row)
        Console().print(t)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        lines = ["# Progressive validation over several logs", "",
                 "| " + " | ".join(SUITE_HEADER) + " |", "|" + "---|" * len(SUITE_HEADER),
                 *("| " + " | ".join(r) + " |" for r in suite_rows(results)), ""]
        (out / "suite.md").write_text("\n".join(lines))
        (out / "suite.json").write_text(json.dumps(
            {spec.name: {"path": str(spec.path), "format": spec.fmt,
                         "examples": result.examples, "seconds": round(result.seconds, 2),
                         "models": {n: m.segments for n, m in result.models.items()}}
             for spec, result in results}, indent=2) + "\n")
    return results
