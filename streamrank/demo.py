"""The end-to-end run behind ``streamrank demo`` (and ``make demo``).

1. start the local stack (Kafka, Redis) and register the Feast repo;
2. replay the head of the shared Taobao sample into ``events`` (impressions added by the rule);
3. run the ``features`` job bounded (validation, feature rows, training examples; Java
   Flink functions, equal to the reference in ``features/``), then the Feast writer bounded
   (the rows into Feast's online store and offline log);
4. run the ``training`` job bounded: online trainer, deltas and snapshots on ``model.deltas``;
5. start a scorer (``streamrank serve``), which bootstraps from the snapshot store and follows
   ``model.deltas``, and rank one shopper's candidates through ``POST /rank`` (features read
   from Feast by the scorer);
6. evaluate the models on the same slice of the log (progressive validation), report to ``out``;
7. stop whatever this run started.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from config import Settings


def _step(console: Console, n: int, text: str) -> float:
    console.rule(f"[bold]{n}. {text}")
    return time.perf_counter()


def serve_and_rank(settings: Settings, console: Console, out: Path) -> int:
    """Start a scorer (``streamrank serve``), let it catch up with the published model, rank
    one shopper's candidates through ``POST /rank``; return the version that ranked them."""
    import httpx

    from connectors.events import Event
    from connectors.logs import read_log
    from connectors.snapshot_store import SnapshotStore
    from streamrank.scorer_process import port_free, start_scorer

    events, _ = read_log(settings.sample_log, "taobao", settings=settings)
    clicks: list[Event] = [e for _, e in zip(range(2_000), events) if e.event_type == "click"]
    user = clicks[-1].user_id
    categories = {e.item_id: e.category_id for e in clicks}
    candidates = list(dict.fromkeys(e.item_id for e in clicks[-20:]))
    published = SnapshotStore.from_settings(settings).published_version()
    if published == 0:
        raise RuntimeError("the training job published no model version")
    port = settings.scorer_port if port_free(settings.scorer_port) else None  # else a free one
    scorer = start_scorer(settings, out / "scorer.log", port=port)
    try:
        deadline = time.monotonic() + 120
        while scorer.version() < published and time.monotonic() < deadline:
            time.sleep(0.2)
        status = scorer.status()
        console.print(f"scorer {scorer.url} serves version {status['version']} "
                      f"(published: {published})")
        answer = httpx.post(f"{scorer.url}/rank", timeout=30, json={
            "user_id": user, "as_of_ms": clicks[-1].event_time,
            "items": [{"item_id": i, "category_id": categories[i]} for i in candidates]}).json()
    finally:
        scorer.stop()
    version = answer["model_version"]
    table = Table("rank", "item_id", "p_click", "p_purchase", "score",
                  title=f"POST /rank: user {user}, model v{version}")
    for rank, item in enumerate(answer["items"][:10], 1):
        table.add_row(str(rank), item["item_id"], f"{item['p_click']:.4f}",
                      f"{item['p_purchase']:.5f}", f"{item['score']:.4f}")
    console.print(table)
    return version


def run_demo(settings: Settings, out: Path, rows: int, console: Console) -> None:
    """Run the whole pipeline on the first ``rows`` rows of the shared sample (module docstring)."""
    from connectors.admin import end_offsets
    from connectors.logs import read_log
    from connectors.producer import EventProducer
    from connectors.replay import replay
    from features.impressions import with_impressions
    from features.store import apply_repo
    from jobs.launch import run_job
    from jobs.training import status_path
    from models.evaluate import evaluate
    from streamrank import stack

    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    head = out / "sample-head.csv"
    with settings.sample_log.open() as src, head.open("w") as dst:
        dst.writelines(line for _, line in zip(range(rows), src))
    _step(console, 1, "local stack")
    state = stack.up(settings)
    apply_repo(settings)
    console.print(state)
    try:
        _step(console, 2, f"replay the first {rows:,} rows of {settings.sample_log.name}")
        log, report = read_log(head, "taobao", settings=settings)
        console.print(report.summary())
        with EventProducer(settings) as producer:
            stats = replay(with_impressions(log, settings), producer)
        console.print(f"sent {stats.sent:,} events in {stats.seconds:.1f}s")

        t = _step(console, 3, "features job (bounded): Feast features + training examples")
        outputs = {"feature rows": settings.topic_feature_rows,
                   "training examples": settings.topic_examples, "dead letters": settings.topic_dlq}
        before = {name: sum(end_offsets(settings, topic).values())
                  for name, topic in outputs.items()}
        run_job("features", settings, bounded=True)
        run_job("writer", settings, bounded=True)  # its rows into Feast
        console.print({name: sum(end_offsets(settings, topic).values()) - before[name]
                       for name, topic in outputs.items()})
        console.print(f"{time.perf_counter() - t:.0f}s")

        t = _step(console, 4, "training job (bounded): online trainer + deltas")
        run_job("training", settings, bounded=True)
        trained = json.loads(status_path(settings).read_text())
        console.print({k: trained[k] for k in ("examples", "duplicates", "version",
                                               "watermark_ms")})
        console.print(f"{time.perf_counter() - t:.0f}s")

        _step(console, 5, "a scorer follows model.deltas; rank through POST /rank")
        serve_and_rank(settings, console, out)

        _step(console, 6, "evaluate (progressive validation) on the same rows")
        evaluate(head, "taobao", settings, out_dir=out)
    finally:
        if any(v == "started" for v in state.values()):
            _step(console, 7, "stop the stack this run started")
            console.print(stack.down(settings))
    console.print(f"report in {out}; demo took {time.perf_counter() - started:.0f}s")
