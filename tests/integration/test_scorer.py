"""Scorers on the real stack: ``streamrank serve`` processes following a trainer's updates
through the real broker and snapshot store, reading Feast features from the real Redis.

One module-scoped trainer publishes to a fresh ``model.deltas`` topic; two scorers follow it
(one started before the first update, one late). The tests run in file order and share them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import replace
from itertools import islice
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
import torch

from config import Settings, settings_env
from connectors.events import Event
from connectors.logs import read_log
from connectors.model_updates import ModelUpdatePublisher
from connectors.snapshot_store import SnapshotStore
from connectors.training_examples import TrainingExample
from features.example_builder import ExampleBuilder
from features.impressions import with_impressions
from features.online import read_inputs
from features.rows import FeatureComputer, feeds_state
from features.schema import DENSE_FEATURES
from features.state import alive
from features.store import apply_repo
from features.writer import Coalescer, FeastStoreWriter
from models.delta import decode_message, encode_delta, hmac_key
from models.ranker import SERVING_POSITION, encode_batch
from models.scorer.api import RankRequest
from models.scorer.app import Scorer
from models.scorer.registry import admin_call
from models.trainer import OnlineTrainer
from models.versions import VersionCutter
from streamrank.scorer_process import ScorerProcess, start_scorer

pytestmark = pytest.mark.integration
torch.set_num_threads(1)

TOKEN = "admin-s3cret"
REDIS_DB = 10
"""The Feast online store of this module: a Redis database of its own, emptied at the start
(rows of earlier runs for the same Taobao keys would be newer than the cut times)."""
SAMPLE_ROWS = 3_000


def wait_until(what: str, check, timeout_s: float = 60.0):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


class Trainer:
    """A trainer that publishes to the topic and the snapshot store, one version per call."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.model = OnlineTrainer(settings)
        self.publisher = VersionCutter(self.model, settings, SnapshotStore.from_settings(settings))
        self.channel = ModelUpdatePublisher(settings)
        self.published: list[int] = []
        self._k = 0

    def step(self, n: int = 64) -> int:
        """Learn ``n`` examples, publish the next version; returns it."""
        self.learn(n)
        return self.send(self.publisher.publish())

    def learn(self, n: int = 64) -> None:
        batch = [TrainingExample(example_id=str(k), user_id=f"u{k % 31}",
                                 item_id=f"i{(k * 7) % 97}", category_id=f"c{k % 5}",
                                 position=k % 7, event_time=1_000 * k, click=int(k % 4 == 0),
                                 purchase=int(k % 16 == 0), features={"i_ctr": 0.1},
                                 price=None if k % 5 == 0 else float(k % 40),
                                 recent_items=tuple(f"i{(k * j) % 97}" for j in range(k % 4)),
                                 recent_categories=tuple(f"c{(k + j) % 5}" for j in range(k % 3)))
                 for k in range(self._k, self._k + n)]
        self._k += n
        self.model.learn_many(batch)

    def send(self, messages: list[bytes]) -> int:
        for m in messages:
            self.channel.publish(self.settings.model_id, m)
        self.channel.flush()
        version = decode_message(messages[-1], hmac_key(self.settings)).version
        self.published.append(version)
        return version


@pytest.fixture(scope="module")
def settings(live_stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    from connectors.admin import delete_topics, ensure_topics

    tag = str(time.time_ns())[-8:]
    redis_url = live_stack.redis_url.rsplit("/", 1)[0] + f"/{REDIS_DB}"
    s = live_stack.model_copy(update={
        "run_dir": tmp_path_factory.mktemp("scorer-run"), "redis_url": redis_url,
        "topic_deltas": f"model.deltas-{tag}", "topic_events": f"events-{tag}",
        "topic_dlq": f"events.dlq-{tag}", "topic_examples": f"training.examples-{tag}",
        "hash_buckets": 10_007, "embedding_dim": 8, "snapshot_every": 10, "dense_every": 1,
        "delta_hmac_key": "delta-key", "admin_token": TOKEN})
    ensure_topics(s)
    redis.Redis.from_url(s.redis_url).flushdb()
    apply_repo(s)
    yield s
    delete_topics(s, [s.topic_deltas, s.topic_events, s.topic_dlq, s.topic_examples])


@pytest.fixture(scope="module")
def trainer(settings: Settings) -> Iterator[Trainer]:
    t = Trainer(settings)
    yield t
    t.channel.flush()


@pytest.fixture(scope="module")
def scorers(settings: Settings, trainer: Trainer,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ScorerProcess]]:
    logs = tmp_path_factory.mktemp("scorer-logs")
    started = [start_scorer(settings, logs / "a.log")]  # before any version exists
    try:
        for _ in range(4):
            trainer.step()
        started.append(start_scorer(settings, logs / "b.log"))  # late: store + topic
        for _ in range(3):
            trainer.step()
        yield started
    finally:
        for s in started:
            s.stop()


def rank(scorer: ScorerProcess, body: dict) -> httpx.Response:
    return httpx.post(f"{scorer.url}/rank", json=body, timeout=10)


def test_scorers_converge_and_score_like_the_trainer(settings, trainer, scorers):
    """The same inputs (Feast features and recent clicks, the request's prices, the serving
    position) scored by the scorers and by the trainer's own model agree to 1e-6."""
    latest = trainer.published[-1]
    for s in scorers:
        wait_until(f"{s.url} at v{latest}", lambda s=s: s.version() == latest)
        assert httpx.get(f"{s.url}/healthz").status_code == 200
    items = [f"i{k}" for k in range(40)]
    cats = [f"c{k % 5}" for k in range(40)]
    prices = [None if k % 6 == 0 else 0.5 + k for k in range(40)]
    t = 1_700_000_000_000
    store = apply_repo(settings)
    writer, computer = FeastStoreWriter(store, settings), FeatureComputer()
    for n, (item, cat) in enumerate([("i5", "c0"), ("i12", "c2"), ("i33", "c3")]):
        writer.add_rows(computer.apply(Event(
            event_id=f"h{n}", event_type="click", user_id="u3", item_id=item, category_id=cat,
            event_time=t - 60_000 + n)))
    writer.flush()
    body = {"user_id": "u3", "as_of_ms": t, "items": [
        {"item_id": i, "category_id": c} | ({} if p is None else {"price": p})
        for i, c, p in zip(items, cats, prices)]}
    answers = [rank(s, body).json() for s in scorers]
    assert [a["model_version"] for a in answers] == [latest, latest]
    inputs = read_inputs(store, "u3", items, cats, t_ms=t)
    assert inputs.recent_items == ("i33", "i12", "i5")
    assert inputs.recent_categories == ("c3", "c2", "c0")
    expected = trainer.model.predict_many([
        TrainingExample(example_id=i, user_id="u3", item_id=i, category_id=c, event_time=t,
                        click=0, purchase=0, features=f, price=p,
                        recent_items=inputs.recent_items,
                        recent_categories=inputs.recent_categories)
        for i, c, p, f in zip(items, cats, prices, inputs.features)])
    no_history = trainer.model.predict_many([
        TrainingExample(example_id=i, user_id="u3", item_id=i, category_id=c, event_time=t,
                        click=0, purchase=0, features=f)
        for i, c, f in zip(items, cats, inputs.features)])
    assert abs(expected - no_history).max() > 1e-4  # price and recent clicks do count
    for answer in answers:
        got = {x["item_id"]: (x["p_click"], x["p_purchase"]) for x in answer["items"]}
        assert len(got) == len(items)
        for i, item in enumerate(items):
            assert got[item] == pytest.approx(tuple(expected[i]), abs=1e-6)
        scores = [x["score"] for x in answer["items"]]
        assert scores == sorted(scores, reverse=True)


def test_deltas_at_10_per_second_under_load_fail_no_request(trainer, scorers):
    stop = threading.Event()
    results: list[tuple[int, int]] = []
    errors: list[str] = []

    def load(scorer: ScorerProcess, user: str) -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                try:
                    r = client.post(f"{scorer.url}/rank", json={
                        "user_id": user, "items": [f"i{k}" for k in range(100)]})
                    results.append((r.status_code, r.json().get("model_version", -1)))
                except httpx.HTTPError as err:
                    errors.append(repr(err))
                time.sleep(0.01)

    threads = [threading.Thread(target=load, args=(s, f"u{k}")) for k, s in enumerate(scorers)]
    for th in threads:
        th.start()
    started = time.monotonic()
    sent = 0
    try:
        while time.monotonic() - started < 4.0:
            trainer.step(32)
            sent += 1
            time.sleep(max(0.0, started + sent / 12.0 - time.monotonic()))
    finally:
        rate = sent / (time.monotonic() - started)
        time.sleep(1.0)
        stop.set()
        for th in threads:
            th.join()
    assert rate >= 10.0
    assert not errors and len(results) > 50
    assert {code for code, _ in results} == {200}
    assert {v for _, v in results} <= set(trainer.published)
    assert len({v for _, v in results}) > 5  # the versions really moved under the load
    for s in scorers:
        wait_until("convergence", lambda s=s: s.version() == trainer.published[-1])


def test_bad_updates_keep_the_last_good_version_until_the_next_snapshot(settings, trainer,
                                                                        scorers):
    while (trainer.published[-1] + 1) % settings.snapshot_every == 0:
        trainer.step()  # the bad update must not be due as a snapshot
    good = trainer.published[-1]
    for s in scorers:
        wait_until("convergence", lambda s=s: s.version() == good)
    trainer.learn()
    messages = trainer.publisher.publish()
    real = decode_message(messages[0], hmac_key(settings))
    assert real.kind == "delta"
    tampered = bytearray(messages[0])
    tampered[8 + int.from_bytes(tampered[:8], "little") + 3] ^= 0xFF  # a tensor byte
    unsigned = encode_delta(real, None)
    gapped = encode_delta(replace(real, version=real.version + 5, base_version=real.version + 4),
                          hmac_key(settings))
    for bad in (bytes(tampered), unsigned, gapped):
        trainer.channel.publish(settings.model_id, bad)
    trainer.channel.flush()
    time.sleep(1.5)
    for s in scorers:
        assert s.version() == good
        metrics = [line for line in httpx.get(f"{s.url}/metrics").text.splitlines()
                   if line.startswith("streamrank_model_updates_rejected_total")]
        for reason in ("bad_checksum", "missing_signature", "gap"):
            assert f'streamrank_model_updates_rejected_total{{reason="{reason}"}} 1.0' in metrics
        assert rank(s, {"user_id": "u1", "items": ["i1", "i2"]}).json()["model_version"] == good
    trainer.publisher.version = real.version + 5  # carry on after the gapped number
    while trainer.publisher.version % settings.snapshot_every != settings.snapshot_every - 1:
        trainer.step()  # deltas on a base the scorers never had: gaps, no recovery
    for s in scorers:
        assert s.version() == good
    snapshot = trainer.step()
    for s in scorers:
        wait_until("recovery at the snapshot", lambda s=s: s.version() == snapshot)


def test_pin_unpin_and_rollback_need_the_token(trainer, scorers):
    a = scorers[0]
    for _ in range(3):
        trainer.step()
    wait_until("convergence", lambda: a.version() == trainer.published[-1])
    pinned = trainer.published[-3]
    assert admin_call(a.url, "pin", None, {"version": pinned})[0] == 401
    assert admin_call(a.url, "pin", "wrong", {"version": pinned})[0] == 401
    code, status = admin_call(a.url, "pin", TOKEN, {"version": pinned})
    assert code == 200 and status["version"] == pinned and status["pinned"] == pinned
    newer = trainer.step()
    wait_until("following while pinned", lambda: a.status()["followed_version"] == newer)
    assert rank(a, {"user_id": "u1", "items": ["i1"]}).json()["model_version"] == pinned
    assert admin_call(a.url, "pin", TOKEN, {"version": 10**6})[0] == 409
    code, status = admin_call(a.url, "unpin", TOKEN)
    assert code == 200 and status["version"] == newer and status["pinned"] is None
    newest = trainer.step()
    wait_until("the newest version", lambda: a.version() == newest)
    code, status = admin_call(a.url, "rollback", TOKEN)
    assert code == 200 and status["version"] == newer and status["pinned"] == newer
    assert rank(a, {"user_id": "u1", "items": ["i1"]}).json()["model_version"] == newer
    assert admin_call(a.url, "unpin", TOKEN)[1]["version"] == newest


def test_cli_finds_the_registered_scorers_and_sends_the_token(settings, scorers):
    cli = str(Path(sys.executable).with_name("streamrank"))
    env = os.environ | settings_env(settings) | {"COLUMNS": "200"}
    out = subprocess.run([cli, "model", "status"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and all(s.url in out.stdout for s in scorers), out
    version = scorers[0].version()
    no_token = {k: v for k, v in env.items() if k != "STREAMRANK_ADMIN_TOKEN"}
    out = subprocess.run([cli, "model", "pin", str(version)], env=no_token, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 1 and "401" in out.stderr
    out = subprocess.run([cli, "model", "rollback", "--scorer", scorers[1].url], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "pinned" in out.stderr, out
    assert scorers[1].status()["pinned"] is not None and scorers[0].status()["pinned"] is None
    out = subprocess.run([cli, "model", "unpin"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and all(s.status()["pinned"] is None for s in scorers)


def test_bad_requests_get_a_4xx_with_a_message(settings, scorers):
    url = scorers[1].url
    cases = [
        ({"user_id": "u", "items": []}, 422),
        ({"user_id": "u", "items": ["a", "a"]}, 422),
        ({"user_id": "u", "items": ["a"], "extra": 1}, 422),
        ({"user_id": "u", "items": [{"item_id": "a", "colour": "red"}]}, 422),
        ({"user_id": "", "items": ["a"]}, 422),
        ({"user_id": "u", "items": "a"}, 422),
        ({"user_id": "u", "items": [1, 2]}, 422),
        ({"items": ["a"]}, 422),
        ({"user_id": "u", "items": [f"i{k}" for k in range(settings.max_candidates + 1)]}, 422),
    ]
    for body, code in cases:
        r = httpx.post(f"{url}/rank", json=body, timeout=10)
        assert r.status_code == code, body
        assert r.json()["detail"]
    for raw in (b"{not json", b"", b"[]", b"null"):
        r = httpx.post(f"{url}/rank", content=raw, timeout=10)
        assert r.status_code == 422 and r.json()["detail"]
    r = httpx.post(f"{url}/rank", content=b"x" * (settings.max_request_bytes + 1), timeout=10)
    assert r.status_code == 413 and "bytes" in r.json()["detail"]
    r = httpx.get(f"{url}/rank", timeout=10)
    assert r.status_code == 405 and r.headers["allow"] == "POST" and r.json()["detail"]
    assert httpx.post(f"{url}/admin/pin", content=b"{}", timeout=10).status_code == 401
    r = httpx.post(f"{url}/admin/pin", content=b'{"version": "x"}',
                   headers={"authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert r.status_code == 422
    assert 'code="500"' not in httpx.get(f"{url}/metrics").text


def _price(item: str) -> float | None:
    """A made-up catalogue price per item (the Taobao log has none); some items have none."""
    cents = zlib.crc32(item.encode()) % 20_000
    return None if cents % 7 == 0 else cents / 100.0


@pytest.mark.parametrize("ttl_ms", [Settings().feature_state_ttl_ms, 90_000])
def test_served_inputs_equal_the_training_examples_on_replayed_events(settings, tmp_path,
                                                                        ttl_ms):
    """Taobao events (with a price per item): Feast is written as of a cut time by the feature
    computation the job runs; the scorer's model input for each impression at the cut — dense
    features, recent clicked items and categories, price, hashed IDs — equals its training
    example's encoded at the serving position. At the default state TTL and at 90 s (the log's
    first rows span about four minutes, so there many states have expired by a cut)."""
    settings = settings.model_copy(update={"feature_state_ttl_ms": ttl_ms})
    head = tmp_path / "head.csv"
    with settings.sample_log.open() as src:
        head.write_text("".join(islice(src, SAMPLE_ROWS)))
    raw, _ = read_log(head, "taobao", settings=settings)
    tag = f"ttl{ttl_ms}-"  # keys of their own: Feast keeps a key's newest row
    raw = [e.model_copy(update={
        "user_id": tag + e.user_id, "item_id": tag + e.item_id,
        "category_id": e.category_id and tag + e.category_id, "price": _price(e.item_id)})
        for e in raw]
    events = list(with_impressions(raw, settings))
    examples = {x.example_id: x for x in ExampleBuilder(settings).run(events)}
    real_times = {e.event_time for e in events if feeds_state(e)}
    cuts = [e.event_time for e in events[len(events) // 3::len(events) // 4]
            if e.event_type == "impression" and e.event_time not in real_times][:3]
    assert cuts, "no impression time to cut at"
    store = apply_repo(settings)
    writer, computer, pending = FeastStoreWriter(store, settings), FeatureComputer(ttl_ms), Coalescer()
    scorer = Scorer(settings.model_copy(update={"item_cache_ttl_ms": 0.0}), "cpu", follow=False)
    at = compared = with_history = priced = expired = 0
    for cut in cuts:
        while events[at].event_time < cut:
            for row in computer.apply(events[at]):
                pending.add(row)
            at += 1
        for rows in pending.rows().values():
            for row in rows:
                writer.add(row.view, row.key, row.values, row.event_time_ms)
        writer.flush()
        pending.clear()
        shown = [e for e in events if e.event_time == cut and e.event_type == "impression"]
        for user in {e.user_id for e in shown}:
            mine = [e for e in shown if e.user_id == user]
            request = RankRequest(user_id=user, as_of_ms=cut, items=[
                {"item_id": e.item_id, "category_id": e.category_id, "price": e.price}
                for e in mine])
            _, batch, _ = scorer.prepare(request)
            ids, cats = [e.item_id for e in mine], [e.category_id for e in mine]
            sdk = read_inputs(store, user, ids, cats, t_ms=cut, ttl_ms=ttl_ms)
            ours = scorer.reader.read(user, ids, cats, cut)
            assert (ours.recent_items, ours.recent_categories) == (
                sdk.recent_items, sdk.recent_categories)
            assert np.array_equal(ours.dense, sdk.dense)
            twice = scorer.reader.read(user, ids + ids, cats + cats, cut)  # items repeated
            assert np.array_equal(twice.dense, np.vstack([sdk.dense, sdk.dense]))
            trained = [examples[e.event_id] for e in mine]
            want = encode_batch(trained, settings.hash_buckets)
            assert set(batch.position.tolist()) == {SERVING_POSITION}
            for name in ("sparse", "wide", "position", "recent_items", "recent_categories"):
                assert torch.equal(getattr(batch, name), getattr(want, name)), (name, mine)
            for got_row, want_row in zip(batch.dense.tolist(), want.dense.tolist()):
                assert got_row == pytest.approx(want_row, rel=1e-6, abs=1e-6), mine
            for by_sdk, x in zip(sdk.features, trained):
                expected = [x.features[n] for n in DENSE_FEATURES]
                assert list(by_sdk.values()) == pytest.approx(expected, rel=1e-12, abs=1e-12)
                assert (sdk.recent_items, sdk.recent_categories) == (
                    x.recent_items, x.recent_categories)
                compared += 1
                with_history += bool(x.recent_items)
                priced += x.price is not None
            states = [computer.users.get(user)] + [computer.items.get(i) for i in ids]
            expired += sum(x is not None and alive(x, cut, ttl_ms) is None for x in states)
    assert compared >= 5 and with_history >= 3 and priced >= 3, (compared, with_history, priced)
    if ttl_ms < 5 * 60_000:
        assert expired >= 3, "few states expired by a cut: the TTL is not exercised"
