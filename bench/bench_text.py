"""The text path of search ranking: title embeddings per second, query embedding latency, the
query–item features of 100 candidates, and ``/rank`` latency with a query vs without one.

1. :func:`features.text.embed` over titles in batches of ``--batch``: the fixture catalog's
   titles (``tests/fixtures/search/catalog.jsonl``), each varied (two words of other titles and
   a model number appended) so that no two are the same, ``--titles`` of them;
2. in this process, one at a time: ``embed([q])`` of single distinct queries (p50/p99), and the
   query–item features of 100 random candidates from a :class:`models.catalog.Catalog` holding
   the fixture items and varied copies (``--items`` in all): ``Catalog.text_columns`` with the
   query embedded beforehand, and :class:`models.catalog.SearchText` for a new query (embedding
   + columns, what a ``/rank`` with an unseen query pays);
3. ``POST /rank`` of 100 candidates over HTTP to a ``streamrank serve`` child process
   (:func:`streamrank.scorer_process.start_scorer`) on a stack of its own: Kafka and Redis on
   free loopback ports in a temporary run directory (stopped by pid and removed at the end),
   the same items put on ``items`` by :class:`connectors.items.ItemProducer` and followed by
   the scorer, and a model that learned from searches over them published as version 1. The
   online store is empty (shoppers and items have no stored features): the figures are the
   text path's cost on top of a read that finds nothing. Open loop at ``--rate`` requests/s,
   latency from each request's scheduled send time; three variants side by side, alternating
   in ``--rounds`` blocks of ``--seconds / --rounds`` each: no query, a query from 20 repeated
   ones (the scorer's query cache answers) and a new query every request (embedded every
   time).

The load generator shares the machine's cores with the scorer, Kafka and Redis.

    .venv/bin/python bench/bench_text.py            # about 2 minutes
    .venv/bin/python bench/bench_text.py --quick    # under a minute
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
from rich import box
from rich.markup import escape
from support import console, open_loop, table, tree_cpu_s

from config import REPO_ROOT, Settings
from connectors.items import CatalogItem, ItemProducer, read_catalog
from connectors.model_updates import ModelUpdatePublisher
from connectors.snapshot_store import SnapshotStore
from connectors.training_examples import TrainingExample
from features.store import apply_repo
from features.text import embed, tokens
from models.catalog import Catalog, SearchText
from models.trainer import OnlineTrainer
from models.versions import VersionCutter
from streamrank import stack
from streamrank.scorer_process import ScorerProcess, free_port, start_scorer

CATALOG = REPO_ROOT / "tests" / "fixtures" / "search" / "catalog.jsonl"
CANDIDATES = 100
QUERIES = ("cordless drill", "bath towel", "running shoes", "chef knife", "garden hose",
           "impact driver", "claw hammer", "circular saw", "pillow", "electric kettle",
           "knife block", "earbuds", "usb charger", "lawn mower", "rain jacket", "hiking socks",
           "blender", "gaming keyboard", "skillet", "wireless headphones")

Row = tuple[str, ...]


def fixture_items() -> list[CatalogItem]:
    """The fixture catalog's items."""
    return [item for _, item in read_catalog(CATALOG.read_text(), "jsonl")
            if isinstance(item, CatalogItem)]


def varied_titles(items: Sequence[CatalogItem], n: int, seed: int = 0) -> list[str]:
    """``n`` distinct titles: the items' titles in turn, each with two words of the catalog's
    titles and a model number appended."""
    rng = random.Random(seed)
    words = sorted({w for item in items for w in item.title.split()})
    return [f"{items[k % len(items)].title} {rng.choice(words)} {rng.choice(words)} M{k}"
            for k in range(n)]


def catalog_items(items: Sequence[CatalogItem], n: int) -> list[CatalogItem]:
    """``items`` and varied copies of them (new IDs and titles), ``n`` in all."""
    extra = varied_titles(items, max(0, n - len(items)), seed=1)
    return list(items) + [items[k % len(items)].model_copy(update={
        "item_id": f"{items[k % len(items)].item_id}-v{k}", "title": title})
        for k, title in enumerate(extra)]


def ms(seconds: Sequence[float], q: float) -> float:
    """The ``q`` percentile of ``seconds``, in ms."""
    return float(np.percentile(seconds, q) * 1e3)


def timed(calls: int, call: Callable[[int], object]) -> list[float]:
    """Seconds each of ``call(0)`` .. ``call(calls - 1)`` took, after a warm-up
    ``call(calls)``."""
    call(calls)
    times = []
    for k in range(calls):
        started = time.perf_counter()
        call(k)
        times.append(time.perf_counter() - started)
    return times


def print_table(title: str, columns: Sequence[str], rows: Sequence[Row]) -> None:
    """:func:`support.table` in ASCII, readable in a log (the cells are text, not markup)."""
    out = table(escape(title), columns, [[escape(cell) for cell in row] for row in rows])
    out.box = box.ASCII
    console.print(out)


# --- 1 and 2: in this process ------------------------------------------------------------------


def title_throughput(items: Sequence[CatalogItem], n: int, batch: int) -> list[Row]:
    """The model's load time, then titles/s of ``embed`` in batches of ``batch``."""
    started = time.perf_counter()
    embed(["warm up"])
    load_s = time.perf_counter() - started
    titles = varied_titles(items, n)
    started = time.perf_counter()
    for k in range(0, n, batch):
        embed(titles[k:k + batch])
    elapsed = time.perf_counter() - started
    per_title = statistics.mean(len(tokens(t)) for t in titles)
    return [("model load (first embed)", f"{load_s:.2f} s"),
            (f"title embeddings, batches of {batch}",
             f"{n / elapsed:,.0f} titles/s ({n:,} titles, {per_title:.1f} tokens each, "
             f"{elapsed:.2f} s)")]


def query_costs(catalog: Catalog, ids: Sequence[str], calls: int) -> list[Row]:
    """p50/p99 of single-query embeddings and of the text features of 100 candidates."""
    rng = random.Random(2)
    words = sorted({w for i in ids if (e := catalog.get(i)) is not None for w in e.tokens})
    queries = [f"{rng.choice(words)} {rng.choice(words)} {k}" for k in range(calls + 1)]
    picks = [rng.sample(list(ids), CANDIDATES) for _ in range(calls + 1)]
    vector, words_q = embed(["cordless drill"])[0], tokens("cordless drill")
    text = SearchText(catalog, cache_size=0)
    rows: list[Row] = []
    for what, call in (
            ("embed([q]), one new query", lambda k: embed([queries[k]])),
            (f"Catalog.text_columns, {CANDIDATES} candidates, query embedded",
             lambda k: catalog.text_columns(vector, words_q, picks[k])),
            (f"SearchText.columns, {CANDIDATES} candidates, new query (embed + columns)",
             lambda k: text.columns(queries[k], picks[k]))):
        times = timed(calls, call)
        rows.append((what, f"{calls:,}", f"{ms(times, 50):.3f}", f"{ms(times, 99):.3f}"))
    return rows


# --- 3: /rank over HTTP -------------------------------------------------------------------------


@dataclass
class Variant:
    """One kind of ``/rank`` request and what its runs measured."""

    name: str
    query: Callable[[int], str | None]
    latencies: list[float] = field(default_factory=list)
    """Seconds from each answered request's scheduled send to its answer."""
    sent: int = 0
    failures: int = 0
    seconds: float = 0.0
    cpu_s: float = 0.0
    """The scorer's CPU seconds during the variant's runs."""


def rank_body(items: Sequence[CatalogItem], query: str | None, rng: random.Random) -> bytes:
    """A ``/rank`` body: a shopper, ``CANDIDATES`` random items with their categories and
    prices, and ``query`` when there is one."""
    picked = rng.sample(list(items), CANDIDATES)
    body: dict[str, object] = {
        "user_id": f"shopper-{rng.randrange(1_000)}",
        "items": [{"item_id": i.item_id, "category_id": i.category_id, "price": i.price}
                  for i in picked]}
    if query is not None:
        body["query"] = query
    return orjson.dumps(body)


def side_by_side(scorer: ScorerProcess, items: Sequence[CatalogItem], variants: list[Variant],
                 rate: float, seconds: float, rounds: int) -> None:
    """Each variant for ``seconds`` at ``rate``, alternating in ``rounds`` blocks, after half
    a second of warm-up each."""
    rng = random.Random(3)
    sent = 0

    def bodies(variant: Variant, n: int) -> list[bytes]:
        nonlocal sent
        sent += n
        return [rank_body(items, variant.query(sent - n + k), rng) for k in range(n)]

    for variant in variants:
        open_loop(scorer.url, bodies(variant, max(1, int(rate / 2))), rate)
    block = int(rate * seconds / rounds)
    for _ in range(rounds):
        for variant in variants:
            measured = bodies(variant, block)
            cpu, started = tree_cpu_s(scorer.proc.pid), time.perf_counter()
            run = open_loop(scorer.url, measured, rate)
            variant.seconds += time.perf_counter() - started
            variant.cpu_s += tree_cpu_s(scorer.proc.pid) - cpu
            variant.latencies += run.latencies
            variant.sent += block
            variant.failures += run.failures


def publish_model(settings: Settings, catalog: Catalog, items: Sequence[CatalogItem]) -> None:
    """Version 1 of a model that learned from searches for :data:`QUERIES` over 60 random
    items each (a title close to the query, cosine at least 0.45, is clicked)."""
    text = SearchText(catalog, cache_size=len(QUERIES))
    rng = random.Random(4)
    examples = []
    for q, query in enumerate(QUERIES):
        for j, item in enumerate(rng.sample(list(items), 60)):
            example = text.enrich(TrainingExample(
                example_id=f"{q}-{item.item_id}", request_id=f"r{q}", user_id=f"u{q}",
                item_id=item.item_id, category_id=item.category_id, position=j % 10,
                event_time=1_700_000_000_000 + q, click=0, purchase=0, features={},
                query=query, price=item.price))
            click = int(example.features["query_item_cosine"] >= 0.45)
            examples.append(example.model_copy(update={"click": click}))
    trainer = OnlineTrainer(settings)
    rng.shuffle(examples)
    for k in range(0, len(examples), 256):
        trainer.learn_many(examples[k:k + 256])
    with ModelUpdatePublisher(settings) as channel:
        for message in VersionCutter(trainer, settings,
                                     SnapshotStore.from_settings(settings)).publish():
            channel.publish(settings.model_id, message)


def load_items(settings: Settings, items: Sequence[CatalogItem]) -> None:
    """Put ``items`` on the ``items`` topic, as ``streamrank catalog load`` does."""
    with ItemProducer(settings) as producer:
        for item in items:
            producer.send(item)


def ready_scorer(settings: Settings, catalog: Catalog,
                 items: Sequence[CatalogItem]) -> ScorerProcess:
    """A scorer on the run's stack once it serves the published model and holds ``items``."""
    apply_repo(settings)
    publish_model(settings, catalog, items)
    load_items(settings, items)
    scorer = start_scorer(settings, settings.run_dir / "scorer.log")
    deadline = time.monotonic() + 90
    while not (scorer.version() == 1 and scorer.status()["catalog"]["items"] == len(items)):
        if time.monotonic() > deadline:
            scorer.stop()
            raise TimeoutError(f"the scorer did not load the model and catalog:\n"
                               f"{scorer.tail()}")
        time.sleep(0.2)
    return scorer


def rank_latency(items: Sequence[CatalogItem], catalog: Catalog,
                 args: argparse.Namespace) -> list[Row]:
    """Step 3 of the module docstring, in a run directory removed at the end: rows per
    variant."""
    variants = [Variant("no query", lambda k: None),
                Variant(f"query, {len(QUERIES)} repeated (cached)",
                        lambda k: QUERIES[k % len(QUERIES)]),
                Variant("query, new every request (embedded)",
                        lambda k: f"{QUERIES[k % len(QUERIES)]} size {k}")]
    with tempfile.TemporaryDirectory(prefix="bench-text-") as tmp:
        settings = Settings(run_dir=Path(tmp) / "run", kafka_bootstrap=f"127.0.0.1:{free_port()}",
                            kafka_controller_port=free_port(),
                            redis_url=f"redis://127.0.0.1:{free_port()}/0")
        started = time.perf_counter()
        try:
            stack.up(settings)
            scorer = ready_scorer(settings, catalog, items)
            try:
                console.print(f"stack, model and scorer ready in "
                              f"{time.perf_counter() - started:.1f} s: scorer {scorer.url}, "
                              f"{len(items)} catalog items")
                side_by_side(scorer, items, variants, args.rate, args.seconds, args.rounds)
            finally:
                scorer.stop()
        finally:
            stack.down(settings)
    return [(v.name, f"{v.sent:,}", f"{len(v.latencies) / v.seconds:.1f}",
             f"{ms(v.latencies, 50):.2f}", f"{ms(v.latencies, 99):.2f}", str(v.failures),
             f"{v.cpu_s / max(1, len(v.latencies)) * 1e3:.2f}") for v in variants]


QUICK = {"titles": 4_096, "queries": 300, "seconds": 6.0, "rounds": 2}
"""The defaults under ``--quick`` (an option given explicitly still wins)."""


def parse_args() -> argparse.Namespace:
    """The command line (module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a short run: 4,096 titles, 300 queries, 6 s per variant")
    parser.add_argument("--titles", type=int, default=20_480)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--queries", type=int, default=2_000,
                        help="calls per in-process latency figure")
    parser.add_argument("--items", type=int, default=300, help="catalog items (>= 100)")
    parser.add_argument("--rate", type=float, default=50.0, help="/rank requests/s")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds per variant")
    parser.add_argument("--rounds", type=int, default=4,
                        help="blocks the variants alternate in")
    if parser.parse_known_args()[0].quick:
        parser.set_defaults(**QUICK)
    args = parser.parse_args()
    if args.items < CANDIDATES:
        parser.error(f"--items must be at least {CANDIDATES}")
    return args


def main() -> None:
    args = parse_args()
    for name in ("httpx", "feast"):  # not a line per request or registry refresh
        logging.getLogger(name).setLevel(logging.WARNING)
    console.print(f"bench_text: {os.cpu_count()} CPUs; titles {args.titles:,}, queries "
                  f"{args.queries:,}, /rank {args.rate:g}/s x {args.seconds:g} s per variant "
                  f"in {args.rounds} round(s)")
    fixture = fixture_items()
    items = catalog_items(fixture, args.items)
    print_table("1. title embeddings (features.text.embed)", ("measure", "value"),
                title_throughput(fixture, args.titles, args.batch))
    catalog = Catalog()
    catalog.apply([(item.item_id, item) for item in items])
    print_table(f"2. query text in-process, one call at a time ({len(items)} items)",
                ("measure", "calls", "p50 ms", "p99 ms"),
                query_costs(catalog, [item.item_id for item in items], args.queries))
    console.print(f"3. POST /rank of {CANDIDATES} candidates at {args.rate:g}/s (open loop) over "
                  "HTTP to a `streamrank serve` child process,\n   own Kafka + Redis, empty "
                  "online store; latency from each request's scheduled send time")
    rows = rank_latency(items, catalog, args)
    print_table(f"3. /rank with a query vs without ({args.seconds:g} s each, {args.rounds} "
                "alternating rounds)",
                ("variant", "sent", "answered/s", "p50 ms", "p99 ms", "failed",
                 "scorer CPU ms/req"), rows)


if __name__ == "__main__":
    main()
