"""Progressive validation on graded relevance judgments (``streamrank evaluate --format judgments``).

Input: a CSV with a header naming at least a query, a title and a grade column; other columns
are ignored. Accepted names (first found wins): query ``query``; title ``title``,
``product_title``; grade ``grade``, ``median_relevance``; item ``item_id`` (optional: without
it an item's ID is ``t-`` and the first 16 hex digits of the SHA-1 of its title).

How the judgments become a stream of searches:

* **Catalog first.** Every distinct title is embedded (:func:`features.text.embed`) and added to
  BM25's statistics (:class:`features.lexical.Bm25`) before the stream: catalog items exist
  before anyone searches them, and neither uses a grade.
* **One search per query**, queries in the order of their first row in the file; search ``k``
  happens at event time ``k`` seconds, by an anonymous shopper (user ``anonymous``, no history,
  no category or price).
* **Shown order:** a query's judged items sorted by the CRC-32 of ``query + "\\x1f" + item_id``:
  a fixed shuffle, independent of the grades and of the file's order. Positions follow it.
* **Clicks:** an item is clicked when its grade is at least the threshold: ``--relevant-grade``,
  by default the upper third of the file's grades, ``min + 2/3 * (max - min)`` (3 on 1-4).
* **Progressive validation:** every model scores a search's whole list before any model
  learns from it; the learners then learn the list (impressions at their shown positions).

Models: ``online`` (:class:`models.trainer.OnlineTrainer` with the query–item text features),
``online_no_text`` (the same model built without them), ``bm25`` (BM25 of the title, not
learned) and ``shown_order`` (the shown order itself: the reference of a ranker that knows
nothing). Figures per model: ``ndcg@10`` — per query, gains ``2^(grade - min grade) - 1`` (the
file's lowest grade gains 0), discount ``1 / log2(rank + 1)``, over the top 10 of the list
ranked by score (ties kept in shown order), divided by the ideal order's; the mean over queries
with any gain — and click AUC and log loss over all items (log loss only for models that give
probabilities).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from config import Settings
from connectors.training_examples import TrainingExample
from features.lexical import Bm25
from features.query_item import QUERY_ITEM_FEATURES, query_item_features
from features.text import MODEL_NAME, embed, tokens
from models.evaluate import exact_auc, fmt_figure, lean_runtime, new_figure, results_table
from models.trainer import OnlineTrainer, log_loss

COLUMNS: dict[str, tuple[str, ...]] = {
    "query": ("query",), "title": ("title", "product_title"),
    "grade": ("grade", "median_relevance"), "item_id": ("item_id",)}
"""Accepted header names per column, first found wins (``item_id`` is optional)."""
JUDGMENT_MODELS = ("online", "online_no_text", "bm25", "shown_order")
CUTOFF = 10
"""NDCG's cutoff."""
USER = "anonymous"
"""The shopper of every search."""
SEARCH_INTERVAL_MS = 1_000
"""Event time between consecutive searches."""


@dataclass(frozen=True)
class Judgment:
    """One judged (query, item) pair."""

    query: str
    item_id: str
    title: str
    grade: float


def title_id(title: str) -> str:
    """The stable ID of an item known only by its title.

    >>> title_id("Cordless Drill")
    't-f6b346d8bbe57a3a'
    """
    return "t-" + hashlib.sha1(title.encode()).hexdigest()[:16]


def read_judgments(path: str | Path) -> list[Judgment]:
    """The file's judgments in file order (see the module docstring for the columns); a
    missing column or a grade that is not a number raises ``ValueError``."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        names = {key: next((n for n in aliases if n in header), None)
                 for key, aliases in COLUMNS.items()}
        missing = [k for k, n in names.items() if n is None and k != "item_id"]
        if missing:
            raise ValueError(f"{path}: no column for {', '.join(missing)} (accepted: "
                             + "; ".join(f"{k}: {'/'.join(COLUMNS[k])}" for k in missing) + ")")
        out = []
        for line, row in enumerate(reader, start=2):
            try:
                grade = float(row[names["grade"]])  # type: ignore[index]
            except ValueError:
                raise ValueError(f"{path}: row {line}: grade {row[names['grade']]!r} "  # type: ignore[index]
                                 "is not a number") from None
            title = row[names["title"]] or ""  # type: ignore[index]
            item = row[names["item_id"]] if names["item_id"] else title_id(title)
            out.append(Judgment(row[names["query"]], item, title, grade))  # type: ignore[index]
    return out


def default_threshold(grades: Sequence[float]) -> float:
    """The upper third of the grades' range: ``min + 2/3 * (max - min)``.

    >>> default_threshold([1, 4, 2]), default_threshold([1.0, 2.33, 3.0])
    (3.0, 2.333...)
    """
    lo, hi = min(grades), max(grades)
    return lo + 2.0 * (hi - lo) / 3.0


def searches(judgments: Sequence[Judgment]) -> list[tuple[str, list[Judgment]]]:
    """One search per query (order of first appearance), its items in shown order."""
    by_query: dict[str, list[Judgment]] = {}
    for j in judgments:
        by_query.setdefault(j.query, []).append(j)
    return [(q, sorted(items, key=lambda j: zlib.crc32(f"{q}\x1f{j.item_id}".encode())))
            for q, items in by_query.items()]


def ndcg(grades: np.ndarray, scores: np.ndarray, min_grade: float, k: int = CUTOFF) -> float | None:
    """NDCG@k of one list (``grades`` in shown order, ranked by ``scores``, ties in shown
    order); None when no item has a gain.

    >>> ndcg(np.array([1.0, 4.0, 2.0]), np.array([0.1, 0.9, 0.5]), 1.0)
    1.0
    >>> round(ndcg(np.array([1.0, 4.0, 2.0]), np.zeros(3), 1.0), 4)
    0.6443
    """
    gains = np.exp2(grades - min_grade) - 1.0
    if not gains.any():
        return None
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    ranked = gains[np.argsort(-scores, kind="stable")][:k]
    ideal = np.sort(gains)[::-1][:k]
    return float(ranked @ discount[:len(ranked)] / (ideal @ discount[:len(ideal)]))


@dataclass
class JudgedModel:
    """One model's figures."""

    ndcg_at_10: float
    auc: float | None
    logloss: float | None
    curve: list[float] = field(repr=False)
    """Mean NDCG@10 of the queries so far, after each query with any gain."""
    scores: np.ndarray = field(repr=False)
    """Each judged item's score, in stream order (searches, then shown order)."""


@dataclass
class JudgmentResult:
    """Everything :func:`evaluate_judgments` measured."""

    path: str
    queries: int
    ndcg_queries: int
    """Queries with any gain (those NDCG is averaged over)."""
    examples: int
    clicks: int
    threshold: float
    grades: tuple[float, float]
    seconds: float
    stage_seconds: dict[str, float]
    models: dict[str, JudgedModel]

    def to_json(self) -> dict[str, object]:
        """The ``results.json`` document."""
        return {
            "log": {"path": self.path, "format": "judgments"},
            "rules": rules(self.threshold, self.grades),
            "queries": self.queries, "ndcg_queries": self.ndcg_queries,
            "examples": self.examples, "clicks": self.clicks,
            "seconds": round(self.seconds, 2),
            "stage_seconds": {k: round(v, 2) for k, v in self.stage_seconds.items()},
            "models": {name: {"ndcg@10": m.ndcg_at_10, "auc": m.auc, "logloss": m.logloss,
                              "examples": self.examples, "positives": self.clicks,
                              "curves": {"ndcg@10": m.curve}}
                       for name, m in self.models.items()},
        }


def rules(threshold: float, grades: tuple[float, float]) -> dict[str, object]:
    """The rules in force, as reported with the results."""
    return {
        "searches": "one per query, in the order of its first row; search k at event time "
                    f"k * {SEARCH_INTERVAL_MS} ms by user {USER!r}",
        "shown_order": "crc32(query + '\\x1f' + item_id) ascending; positions follow it",
        "click": f"grade >= {threshold:g} (file grades {grades[0]:g}..{grades[1]:g})",
        "ndcg": f"@{CUTOFF}, gain 2^(grade - {grades[0]:g}) - 1, discount 1/log2(rank + 1), "
                "ties in shown order, mean over queries with any gain",
        "progressive": "every model scores a query's whole list before any model learns it",
        "text_model": MODEL_NAME,
        "text_features": list(QUERY_ITEM_FEATURES),
    }


def _examples(index: int, query: str, items: Sequence[Judgment], columns: np.ndarray,
              threshold: float) -> list[TrainingExample]:
    return [TrainingExample(
        example_id=f"q{index}-{k}", request_id=f"q{index}", user_id=USER, item_id=j.item_id,
        position=k, event_time=index * SEARCH_INTERVAL_MS, click=int(j.grade >= threshold),
        purchase=0, query=query, features=dict(zip(QUERY_ITEM_FEATURES, map(float, row))))
        for k, (j, row) in enumerate(zip(items, columns))]


def evaluate_judgments(path: str | Path, settings: Settings, out_dir: str | Path | None = None,
                       relevant_grade: float | None = None, progress: bool = True,
                       models: Sequence[str] = JUDGMENT_MODELS) -> JudgmentResult:
    """Progressive validation of ``models`` on the judgments at ``path`` (see the module
    docstring); prints the table and, with ``out_dir``, writes ``results.json``, ``report.md``
    and ``ndcg.png`` there. Raises ``ValueError`` for an unknown model or an empty file."""
    unknown = [m for m in models if m not in JUDGMENT_MODELS]
    if unknown or not models:
        raise ValueError(f"models must be some of {', '.join(JUDGMENT_MODELS)}")
    names = tuple(m for m in JUDGMENT_MODELS if m in models)
    started = time.perf_counter()
    judgments = read_judgments(path)
    if not judgments:
        raise ValueError(f"{path}: no judgments")
    grades = np.array([j.grade for j in judgments])
    lo, hi = float(grades.min()), float(grades.max())
    threshold = default_threshold([lo, hi]) if relevant_grade is None else relevant_grade
    stream = searches(judgments)
    console = Console()
    with lean_runtime():
        titles = {j.item_id: j.title for j in judgments}
        row_of = {item: k for k, item in enumerate(titles)}
        words = [tokens(t) for t in titles.values()]
        bm25 = Bm25()
        for item, w in zip(titles, words):
            bm25.add(item, w)
        vectors = embed(list(titles.values()))
        catalog = time.perf_counter()
        learners = {name: OnlineTrainer(settings.model_copy(update={
            "text_features": name == "online"}), online_metrics=False)
            for name in names if name.startswith("online")}
        scores: dict[str, list[np.ndarray]] = {name: [] for name in names}
        labels, per_query = [], {name: [] for name in names}
        columns = (TextColumn("judged searches"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn())
        with Progress(*columns, console=console, disable=not progress, transient=True) as bar:
            task = bar.add_task("searches", total=len(stream))
            for index, (query, items) in enumerate(stream):
                rows = [row_of[j.item_id] for j in items]
                cols = query_item_features(query, vectors[rows], [words[r] for r in rows], bm25)
                batch = _examples(index, query, items, cols, threshold)
                shown = {"bm25": cols[:, QUERY_ITEM_FEATURES.index("query_item_bm25")],
                         "shown_order": -np.arange(len(items), dtype=np.float64)}
                for name in names:
                    s = (learners[name].predict_many(batch)[:, 0] if name in learners
                         else np.asarray(shown[name], dtype=np.float64))
                    scores[name].append(s)
                    per_query[name].append(ndcg(np.array([j.grade for j in items]), s, lo))
                for learner in learners.values():
                    learner.learn_many(batch)
                labels.append(np.array([x.click for x in batch], dtype=np.float64))
                bar.advance(task)
    learned = time.perf_counter()
    y = np.concatenate(labels)
    result = JudgmentResult(
        path=str(path), queries=len(stream),
        ndcg_queries=sum(v is not None for v in per_query[names[0]]), examples=len(y),
        clicks=int(y.sum()), threshold=threshold, grades=(lo, hi),
        seconds=learned - started,
        stage_seconds={"catalog": catalog - started, "searches": learned - catalog},
        models={name: _figures(y, np.concatenate(scores[name]), per_query[name],
                               probabilities=name in learners) for name in names})
    console.print(table(result))
    if out_dir is not None:
        write_report(result, Path(out_dir))
    return result


def _figures(y: np.ndarray, p: np.ndarray, per_query: list[float | None],
             probabilities: bool) -> JudgedModel:
    values = [v for v in per_query if v is not None]
    curve = list(np.round(np.cumsum(values) / np.arange(1, len(values) + 1), 5))
    return JudgedModel(
        ndcg_at_10=float(np.mean(values)) if values else math.nan, auc=exact_auc(y, p),
        logloss=float(log_loss(y, p).mean()) if probabilities else None,
        curve=[float(v) for v in curve], scores=p)


_HEADER = ["model", "NDCG@10", "click AUC", "click log loss"]


def _rows(result: JudgmentResult) -> list[list[str]]:
    return [[name, fmt_figure(m.ndcg_at_10), fmt_figure(m.auc), fmt_figure(m.logloss)]
            for name, m in result.models.items()]


def table(result: JudgmentResult) -> Table:
    """The results as a rich table."""
    return results_table(
        f"graded relevance: {result.path} ({result.queries:,} queries, {result.examples:,} "
        f"judged items, clicks: grade >= {result.threshold:g}, {result.seconds:.0f} s)",
        _HEADER, _rows(result))


def write_report(result: JudgmentResult, out_dir: Path) -> None:
    """``results.json``, ``report.md`` and ``ndcg.png`` (cumulative NDCG@10 along the stream)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    fig = new_figure()
    ax = fig.add_subplot()
    for name, m in result.models.items():
        ax.plot(np.arange(1, len(m.curve) + 1), m.curve, label=name)
    ax.set_xlabel("queries seen (stream order)")
    ax.set_ylabel(f"mean NDCG@{CUTOFF} so far")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(out_dir / "ndcg.png", dpi=110)
    r = rules(result.threshold, result.grades)
    lines = [
        "# Progressive validation on graded relevance", "",
        f"Judgments: {result.path}: {result.queries:,} queries, {result.examples:,} judged items, "
        f"{result.clicks:,} clicks; NDCG over {result.ndcg_queries:,} queries with any gain. "
        f"Run in {result.seconds:.1f} s.", "",
        "| " + " | ".join(_HEADER) + " |", "|" + "---|" * len(_HEADER),
        *("| " + " | ".join(row) + " |" for row in _rows(result)), "",
        "## Rules", "", *(f"- {k}: {v}" for k, v in r.items()), "",
        "![NDCG@10](ndcg.png)", ""]
    (out_dir / "report.md").write_text("\n".join(lines))
