"""The end-to-end run behind ``streamrank demo`` (and ``make demo``).

1. start the local stack (Kafka, Redis) and register the Feast repo;
2. replay the head of the shared Taobao sample into ``events`` (impressions added by the rule);
3. run the ``features`` job bounded (validation, feature rows, training examples), then the
   Feast writer bounded (the rows into Feast's online store and offline log);
4. run the ``training`` job bounded: online trainer, deltas and snapshots on ``model.deltas``;
5. follow ``model.deltas`` like a scorer would, and rank candidates for one shopper with the
   followed model and the features read back through Feast;
6. evaluate the models on the same slice of the log (progressive validation), report to ``out``;
7. stop whatever this run started.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from streamrank.config import Settings


def _step(console: Console, n: int, text: str) -> float:
    console.rule(f"[bold]{n}. {text}")
    return time.perf_counter()


def follow_and_rank(settings: Settings, console: Console) -> int:
    """Catch up with ``model.deltas`` as a new scorer would; rank one request; return the version."""
    from connectors.events import Event
    from connectors.examples import TrainingExample
    from connectors.model_updates import ModelUpdateSubscriber
    from connectors.snapshot_store import SnapshotStore
    from features.online import read_features
    from features.store import open_store
    from models.delta import hmac_key
    from models.follower import ModelFollower
    from models.ranker import Ranker

    store = SnapshotStore.from_settings(settings)
    latest = store.latest()
    if latest is None:
        raise RuntimeError("the training job published no snapshot")
    follower = ModelFollower(Ranker.from_settings(settings), hmac_key(settings))
    follower.bootstrap(latest[1])
    subscriber = ModelUpdateSubscriber(settings, group_id=f"demo-{time.time_ns()}")
    idle = 0
    while idle < 3:
        messages = subscriber.poll(1.0)
        idle = 0 if messages else idle + 1
        for message in messages:
            follower.apply(message)
    console.print(f"follower serves version {follower.version} "
                  f"(bootstrapped from snapshot {latest[0]})")

    from connectors.logs import read_log

    events, _ = read_log(settings.sample_log, "taobao", settings=settings)
    clicks: list[Event] = [e for _, e in zip(range(2_000), events) if e.event_type == "click"]
    user = clicks[-1].user_id
    candidates = list(dict.fromkeys(e.item_id for e in clicks[-20:]))
    categories = {e.item_id: e.category_id for e in clicks}
    t = clicks[-1].event_time
    dense = read_features(open_store(settings), user, candidates,
                          [categories[i] for i in candidates], t_ms=t)
    examples = [TrainingExample(example_id=f"demo-{i}", user_id=user, item_id=item,
                                category_id=categories[item], event_time=t, click=0, purchase=0,
                                features=f) for i, (item, f) in enumerate(zip(candidates, dense))]
    version, model = follower.served()
    import torch

    from models.ranker import encode_batch

    with torch.no_grad():
        probs = Ranker.probabilities(model(*encode_batch(examples, settings.hash_buckets))).numpy()
    table = Table("rank", "item_id", "p_click", "p_purchase", title=f"user {user}, model v{version}")
    order = probs[:, 0].argsort()[::-1]
    for rank, i in enumerate(order[:10], 1):
        table.add_row(str(rank), candidates[i], f"{probs[i, 0]:.4f}", f"{probs[i, 1]:.5f}")
    console.print(table)
    return version


def run_demo(settings: Settings, out: Path, rows: int, console: Console) -> None:
    """Run the whole pipeline on the first ``rows`` rows of the shared sample (module docstring)."""
    from connectors.logs import read_log
    from connectors.producer import EventProducer
    from connectors.replay import replay
    from features.impressions import with_impressions
    from features.store import apply_repo
    from jobs.launch import run_job
    from jobs.runtime import read_stats
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
        run_job("features", settings, bounded=True)
        run_job("writer", settings, bounded=True)  # its rows into Feast
        console.print(read_stats("features", settings))
        console.print(f"{time.perf_counter() - t:.0f}s")

        t = _step(console, 4, "training job (bounded): online trainer + deltas")
        run_job("training", settings, bounded=True)
        console.print(read_stats("training", settings))
        console.print(f"{time.perf_counter() - t:.0f}s")

        _step(console, 5, "follow model.deltas and rank")
        follow_and_rank(settings, console)
    finally:
        if any(v == "started" for v in state.values()):
            _step(console, 7, "stop the stack this run started")
            console.print(stack.down(settings))
    _step(console, 6, "evaluate (progressive validation) on the same rows")
    evaluate(head, "taobao", settings, out_dir=out)
    console.print(f"report in {out}; demo took {time.perf_counter() - started:.0f}s")
