"""``streamrank serve --workers 2`` on the real stack: two scorer processes behind one port, each
following a trainer's updates through the real broker and snapshot store on its own, reading
Feast features from the real Redis, with a bearer token on ``/rank``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from config import Settings, settings_env
from features.store import apply_repo
from streamrank.scorer_process import ScorerProcess, start_scorer
from tests.integration.test_scorer import Trainer, wait_until

pytestmark = pytest.mark.integration

TOKEN = "rank-s3cret"
REDIS_DB = 9


@pytest.fixture(scope="module")
def settings(live_stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    from connectors.admin import delete_topics, ensure_topics

    tag = str(time.time_ns())[-8:]
    s = live_stack.model_copy(update={
        "run_dir": tmp_path_factory.mktemp("workers-run"),
        "redis_url": live_stack.redis_url.rsplit("/", 1)[0] + f"/{REDIS_DB}",
        "topic_deltas": f"model.deltas-w{tag}", "hash_buckets": 10_007, "embedding_dim": 8,
        "snapshot_every": 10, "dense_every": 1, "delta_hmac_key": "delta-key",
        "rank_token": TOKEN})
    ensure_topics(s)
    redis.Redis.from_url(s.redis_url).flushdb()
    apply_repo(s)
    yield s
    delete_topics(s, [s.topic_deltas])


@pytest.fixture(scope="module")
def served(settings: Settings, tmp_path_factory: pytest.TempPathFactory,
           ) -> Iterator[tuple[ScorerProcess, Trainer]]:
    trainer = Trainer(settings)
    trainer.step()
    scorer = start_scorer(settings, tmp_path_factory.mktemp("workers-logs") / "serve.log",
                          workers=2)
    try:
        yield scorer, trainer
    finally:
        scorer.stop()
        trainer.channel.flush()


def body(k: int) -> dict:
    return {"user_id": f"u{k % 31}", "as_of_ms": 1_700_000_000_000,
            "items": [{"item_id": f"i{j}", "category_id": f"c{j % 5}", "price": 1.5 + j}
                      for j in range(k % 7, k % 7 + 60)]}


def converged(scorer: ScorerProcess, version: int) -> bool:
    return all(st["version"] == version for st in scorer.worker_status())


def test_workers_converge_and_answer_identically(served):
    scorer, trainer = served
    for _ in range(3):
        trainer.step()
    latest = trainer.published[-1]
    workers = scorer.worker_urls()
    assert len(workers) == 2 and scorer.url not in workers
    wait_until(f"both workers at v{latest}", lambda: converged(scorer, latest))
    status = scorer.worker_status()
    assert len({st["pid"] for st in status}) == 2
    assert {st["serves"] for st in status} == {scorer.url}
    auth = {"authorization": f"Bearer {TOKEN}"}
    with httpx.Client(timeout=10, headers=auth) as client:
        for k in range(6):
            direct = [client.post(f"{url}/rank", json=body(k)).json() for url in workers]
            shared = [client.post(f"{scorer.url}/rank", json=body(k)).json() for _ in range(4)]
            assert direct[0]["model_version"] == latest
            assert all(answer == direct[0] for answer in direct + shared)


def test_rank_needs_the_token_and_never_echoes_it(served):
    scorer, _ = served
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
        r = httpx.post(f"{scorer.url}/rank", json=body(0), headers=headers, timeout=10)
        assert r.status_code == 401 and TOKEN not in r.text
    for url in scorer.worker_urls():
        for path in ("/status", "/metrics"):
            assert TOKEN not in httpx.get(f"{url}{path}", timeout=10).text
    assert TOKEN not in scorer.log.read_text(errors="replace")


def test_model_status_lists_every_worker_and_a_dead_worker_is_replaced(settings, served):
    scorer, trainer = served
    env = os.environ | settings_env(settings) | {"COLUMNS": "250"}
    out = subprocess.run([str(Path(sys.executable).with_name("streamrank")), "model", "status"],
                         env=env, capture_output=True, text=True, timeout=60,
                         ).stdout
    before = scorer.worker_urls()
    for url in before:
        assert url.removeprefix("http://") in out.replace("\n", "")
    victim = scorer.worker_status()[0]["pid"]
    os.kill(victim, signal.SIGKILL)
    version = trainer.step()
    wait_until("a new worker", lambda: len(set(scorer.worker_urls()) - set(before)) == 1
               and len(scorer.worker_urls()) == 2, timeout_s=120)
    wait_until(f"both workers at v{version}", lambda: converged(scorer, version), timeout_s=120)
    assert victim not in {st["pid"] for st in scorer.worker_status()}
