"""``/search`` on a stack of its own (Kafka and Redis on free ports): ``streamrank catalog
load`` puts the fixture catalog on ``items``, a ``streamrank serve`` process follows it, and a
model that learned from searches (clicks on titles close to the query) ranks the recall.

Stated expectations on ``tests/fixtures/search/catalog.jsonl`` (k = 3, recall 10):
"cordless drill" -> t01 (the cordless drill driver) first, and only drills or drivers
(t01, t03, t07) in the top 3 — t02, the hammer drill, is blocked by ``search_blocked_items``;
"bath towel" -> h01; "running shoes" -> a01 and a10 in the top 3; "chef knife" -> k03 and k10;
"garden hose" -> no garden item (``search_blocked_categories``). A new item loaded after
the scorer started is found by its query without any rebuild, and a retitled item by its new
title, each embedded once.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from config import Settings, settings_env
from connectors.admin import ensure_topics
from connectors.items import read_catalog
from connectors.model_updates import ModelUpdatePublisher
from connectors.snapshot_store import SnapshotStore
from connectors.training_examples import TrainingExample
from features.lexical import Bm25
from features.query_item import QUERY_ITEM_FEATURES, query_item_features
from features.store import apply_repo
from features.text import embed, tokens
from models.trainer import OnlineTrainer
from models.versions import VersionCutter
from streamrank import stack
from streamrank.scorer_process import ScorerProcess, start_scorer
from tests.integration.test_stack import free_ports

pytestmark = pytest.mark.integration

CATALOG = Path(__file__).parents[1] / "fixtures" / "search" / "catalog.jsonl"
TRAINING_QUERIES = ("impact driver", "claw hammer", "circular saw", "towel set", "pillow",
                    "electric kettle", "knife block", "earbuds", "usb charger", "lawn mower",
                    "hedge trimmer", "rain jacket", "hiking socks", "blender", "monitor",
                    "gaming keyboard", "skillet", "curtains", "duvet", "watering can")


def wait_until(what: str, check, timeout_s: float = 60.0):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def catalog_load(settings: Settings, path: Path) -> subprocess.CompletedProcess[str]:
    cli = Path(sys.executable).with_name("streamrank")
    return subprocess.run([str(cli), "catalog", "load", str(path)], capture_output=True,
                          text=True, timeout=120, env=os.environ | settings_env(settings))


def searches(titles: dict[str, str]) -> list[TrainingExample]:
    """Shown lists of every catalog item for each training query; a title close to the query
    (cosine at least 0.45) is clicked."""
    bm25 = Bm25()
    for item_id, title in titles.items():
        bm25.add(item_id, tokens(title))
    ids = list(titles)
    vectors = embed([titles[i] for i in ids])
    words = [tokens(titles[i]) for i in ids]
    examples = []
    for q, query in enumerate(TRAINING_QUERIES):
        columns = query_item_features(query, vectors, words, bm25)
        for j, item_id in enumerate(ids):
            features = dict(zip(QUERY_ITEM_FEATURES, map(float, columns[j])))
            examples.append(TrainingExample(
                example_id=f"{q}-{item_id}", request_id=f"r{q}", user_id=f"u{q % 7}",
                item_id=item_id, position=j % 10, event_time=1_700_000_000_000 + q,
                click=int(columns[j, 0] >= 0.45), purchase=0, features=features, query=query))
    return examples


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    kafka, controller, redis = free_ports(3)
    s = Settings(run_dir=tmp_path_factory.mktemp("search-run"),
                 kafka_bootstrap=f"127.0.0.1:{kafka}", kafka_controller_port=controller,
                 redis_url=f"redis://127.0.0.1:{redis}/0", hash_buckets=10_007,
                 embedding_dim=8, snapshot_every=1, search_recall=10,
                 search_blocked_items=["t02"], search_blocked_categories=["garden"])
    stack.up(s)
    try:
        apply_repo(s)
        yield s
    finally:
        stack.down(s)


@pytest.fixture(scope="module")
def scorer(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScorerProcess]:
    titles = {item.item_id: item.title for _, item in read_catalog(CATALOG.read_text(), "jsonl")}
    trainer = OnlineTrainer(settings)
    examples = searches(titles)
    rng = random.Random(0)
    for _ in range(4):
        rng.shuffle(examples)
        for k in range(0, len(examples), 256):
            trainer.learn_many(examples[k:k + 256])
    with ModelUpdatePublisher(settings) as channel:
        for message in VersionCutter(trainer, settings, SnapshotStore.from_settings(settings)
                                     ).publish():
            channel.publish(settings.model_id, message)
    loaded = catalog_load(settings, CATALOG)
    assert loaded.returncode == 0, loaded.stderr
    assert "sent 60 item(s) to items, rejected 0" in loaded.stderr
    process = start_scorer(settings, tmp_path_factory.mktemp("search-logs") / "scorer.log")
    try:
        wait_until("the model and the catalog", lambda: process.version() == 1
                   and process.status()["catalog"]["items"] == 60)
        yield process
    finally:
        process.stop()


def search(scorer: ScorerProcess, query: str, k: int = 3, **extra: object) -> dict:
    response = httpx.post(f"{scorer.url}/search",
                          json={"user_id": "shopper", "query": query, "k": k} | extra, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def ids(answer: dict) -> list[str]:
    return [item["item_id"] for item in answer["items"]]


def test_catalog_load_reports_bad_rows_by_line(settings: Settings, tmp_path: Path) -> None:
    own = settings.model_copy(update={"topic_items": "items-bad-rows"})
    ensure_topics(own, {own.topic_items: 1})
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"item_id": "z1", "title": "Spare item"}\n{"item_id": "z2", "price": 3}\n')
    result = catalog_load(own, bad)
    said = "".join(result.stderr.split())
    assert result.returncode == 1
    assert f"{bad}:2rejected:invalid_field:title:Fieldrequired" in said, result.stderr
    assert "sent1item(s)toitems-bad-rows,rejected1" in said


def test_search_finds_relevant_items_filtered_and_ranked(scorer: ScorerProcess) -> None:
    answer = search(scorer, "cordless drill")
    assert answer["model_version"] == 1 and len(answer["request_id"]) == 32
    # of the 10 recalled, t02 and the cordless garden tools (g04, g09, ...) are blocked
    assert 0 < answer["recalled"] <= 8
    top = ids(answer)
    assert top[0] == "t01" and set(top) <= {"t01", "t03", "t07"}, answer
    assert answer["items"][0]["title"].startswith("Cordless Drill")
    assert "t02" not in ids(search(scorer, "hammer drill", k=10))
    assert ids(search(scorer, "bath towel"))[0] == "h01"
    assert {"a01", "a10"} <= set(ids(search(scorer, "running shoes")))
    assert {"k03", "k10"} <= set(ids(search(scorer, "chef knife")))
    assert not [i for i in search(scorer, "garden hose", k=10)["items"]
                if i["category_id"] == "garden"]
    scores = [i["score"] for i in answer["items"]]
    assert scores == sorted(scores, reverse=True)


def test_search_ranks_as_rank_does_and_the_query_counts(scorer: ScorerProcess) -> None:
    answer = search(scorer, "wireless headphones", k=5)
    body = {"user_id": "shopper", "query": "wireless headphones", "items": [
        {"item_id": i["item_id"], "category_id": i["category_id"], "price": i["price"]}
        for i in answer["items"]]}
    ranked = httpx.post(f"{scorer.url}/rank", json=body, timeout=10).json()["items"]
    assert [r["item_id"] for r in ranked] == ids(answer)
    for r, s in zip(ranked, answer["items"]):
        assert r["p_click"] == pytest.approx(s["p_click"], abs=1e-6)
    plain = httpx.post(f"{scorer.url}/rank", json={k: v for k, v in body.items() if k != "query"},
                       timeout=10).json()["items"]
    by_id = {r["item_id"]: r["p_click"] for r in plain}
    assert max(abs(by_id[r["item_id"]] - r["p_click"]) for r in ranked) > 1e-3


def test_bad_searches_are_4xx(scorer: ScorerProcess) -> None:
    url = f"{scorer.url}/search"
    assert httpx.post(url, json={"user_id": "u", "query": "  ", "k": 3}).status_code == 422
    assert httpx.post(url, json={"user_id": "u", "query": "drill", "k": 101}).status_code == 422
    assert httpx.post(url, json={"user_id": "u", "k": 3}).status_code == 422


def test_new_and_retitled_items_are_findable_without_rebuild(
        settings: Settings, scorer: ScorerProcess, tmp_path: Path) -> None:
    before = scorer.status()["catalog"]
    assert "n01" not in ids(search(scorer, "robot vacuum cleaner"))
    update = tmp_path / "update.jsonl"
    update.write_text("\n".join(json.dumps(r) for r in [
        {"item_id": "n01", "title": "Robot Vacuum Cleaner with Self-Emptying Station",
         "category_id": "home", "price": 299.0},
        {"item_id": "t09", "title": "Laser Distance Meter 40 m", "category_id": "tools"},
        {"item_id": "h05", "title": "Wool Throw Blanket 150 x 200 cm", "category_id": "home",
         "price": 29.0}]) + "\n")
    assert catalog_load(settings, update).returncode == 0
    after = wait_until("the new item", lambda: (st := scorer.status()["catalog"])["items"] == 61
                       and st)
    # n01 new and t09 retitled: two embeddings; h05's new price: none
    assert after["embedded"] == before["embedded"] + 2 and after["indexed"] == 61
    assert ids(search(scorer, "robot vacuum cleaner"))[0] == "n01"
    laser = search(scorer, "laser distance meter")["items"][0]
    assert (laser["item_id"], laser["title"]) == ("t09", "Laser Distance Meter 40 m")
    blanket = [i for i in search(scorer, "wool blanket")["items"] if i["item_id"] == "h05"]
    assert blanket and blanket[0]["price"] == 29.0
