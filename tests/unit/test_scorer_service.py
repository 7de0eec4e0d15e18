"""The scorer's pure parts: served-version rules (guard, pin, rollback), batching, request
validation."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from dataclasses import replace

import numpy as np
import pytest
import torch
from pydantic import SecretStr, ValidationError

from config import Settings
from connectors.snapshot_store import SnapshotStore
from connectors.training_examples import TrainingExample
from models.delta import decode_message, encode_delta
from models.follower import Status
from models.ranker import Batch, Ranker, encode_batch
from models.scorer.api import RankRequest
from models.scorer.batcher import Batcher, DevicePolicy, HostStaging, device_policy, forward
from models.scorer.quiet import InFlight
from models.scorer.reloader import Reloader
from models.scorer.service import ModelService, VersionUnavailable
from models.trainer import OnlineTrainer
from models.versions import VersionCutter

torch.set_num_threads(1)
KEY = b"k3y"
SETTINGS = Settings(hash_buckets=1009, embedding_dim=8, batch_size=64, snapshot_every=4,
                    dense_every=1, delta_hmac_key=SecretStr("k3y"), model_id="ranker-s")


def examples(n: int, start: int = 0) -> list[TrainingExample]:
    return [TrainingExample(example_id=str(k), user_id=f"u{k % 41}", item_id=f"i{(k * 7) % 61}",
                            category_id=f"c{k % 5}", event_time=1_000 * k, click=int(k % 4 == 0),
                            purchase=int(k % 12 == 0), features={"u_clicks_1h": float(k % 3)},
                            price=None if k % 3 == 0 else float(k % 50),
                            recent_items=tuple(f"i{(k * j) % 61}" for j in range(k % 4)),
                            recent_categories=tuple(f"c{(k + j) % 5}" for j in range(k % 3)))
            for k in range(start, start + n)]


def stream(versions: int, store: SnapshotStore) -> tuple[list[bytes], list[dict[str, torch.Tensor]]]:
    trainer = OnlineTrainer(SETTINGS)
    publisher = VersionCutter(trainer, SETTINGS, store)
    messages, states = [], []
    for v in range(versions):
        trainer.learn_many(examples(128, 128 * v))
        messages += publisher.publish()
        states.append({k: t.clone() for k, t in trainer.model.state_dict().items()})
    return messages, states


def same(model: Ranker, state: dict[str, torch.Tensor]) -> bool:
    ours = model.state_dict()
    return ours.keys() == state.keys() and all(torch.equal(ours[k], state[k]) for k in ours)


def following(versions: int, store: SnapshotStore) -> ModelService:
    """A service that applied the first ``versions`` versions of :func:`stream`."""
    service = ModelService(SETTINGS, store=store)
    for m in stream(versions, store)[0]:
        service.apply(m)
    return service


@pytest.fixture
def store() -> SnapshotStore:
    return SnapshotStore(f"memory://scorer-{uuid.uuid4().hex}", keep=10)


def test_pin_rebuilds_an_older_version_from_the_store_and_the_deltas(store):
    messages, states = stream(7, store)  # snapshots 1 and 4
    service = ModelService(SETTINGS, store=store)
    assert [service.apply(m).status for m in messages] == [Status.APPLIED] * 7
    version, model = service.pin(3)  # snapshot 1 + deltas 2, 3
    assert version == 3 and same(model, states[2]) and service.current()[0] == 3
    assert service.status().pinned == 3 and service.status().followed_version == 7
    version, model = service.pin(6)  # snapshot 4 + deltas 5, 6
    assert version == 6 and same(model, states[5])
    assert service.unpin()[0] == 7 and same(service.current()[1], states[6])
    with pytest.raises(VersionUnavailable, match="no snapshot"):
        ModelService(SETTINGS, store=SnapshotStore(f"memory://empty-{uuid.uuid4().hex}")).pin(2)


def test_pin_needs_the_deltas_and_a_late_scorer_keeps_those_it_ignored(store):
    messages, states = stream(6, store)
    late = ModelService(SETTINGS, store=store)
    assert late.bootstrap_from_store().status == Status.APPLIED and late.version == 4
    outcomes = [late.apply(m).status for m in messages]  # the topic from the start
    assert outcomes == [Status.IGNORED] * 4 + [Status.APPLIED] * 2
    assert same(late.pin(3)[1], states[2])  # deltas 2, 3 were seen (ignored) and kept
    fresh = ModelService(SETTINGS, store=store)
    fresh.bootstrap_from_store()
    with pytest.raises(VersionUnavailable, match="deltas 2..3"):
        fresh.pin(3)


def test_rollback_pins_the_previously_served_version(store):
    messages, _ = stream(3, store)
    service = ModelService(SETTINGS, store=store)
    with pytest.raises(VersionUnavailable):
        service.rollback()
    for m in messages:
        service.apply(m)
    assert service.rollback()[0] == 2 and service.status().pinned == 2
    assert service.unpin()[0] == 3


def _with_metrics(message: bytes, **metrics: float) -> bytes:
    update = decode_message(message, KEY)
    return encode_delta(replace(update, metrics=update.metrics | metrics), KEY)


def test_quality_guard_holds_the_last_good_version_and_releases(store):
    settings = SETTINGS.model_copy(update={"guard_min_auc": 0.6, "guard_max_logloss": 0.5})
    messages, states = stream(5, store)
    service = ModelService(settings, store=store)
    good = dict(click_auc_rolling=0.7, click_logloss_rolling=0.3)
    service.apply(_with_metrics(messages[0], **good))
    service.apply(_with_metrics(messages[1], **good))
    assert service.version == 2 and not service.guard_holding
    service.apply(_with_metrics(messages[2], click_auc_rolling=0.55, click_logloss_rolling=0.3))
    assert (service.version, service.follower.version, service.guard_holding) == (2, 3, True)
    assert "click_auc_rolling 0.5500 < 0.6" in service.status().guard_reason
    service.apply(_with_metrics(messages[3], click_auc_rolling=0.7, click_logloss_rolling=0.9))
    assert service.version == 2 and "logloss" in service.guard_reason
    assert same(service.current()[1], states[1])
    service.apply(_with_metrics(messages[4], **good))
    assert (service.version, service.guard_holding) == (5, False)
    assert same(service.current()[1], states[4])


def test_quality_guard_without_a_good_version_serves_and_says_why(store):
    settings = SETTINGS.model_copy(update={"guard_min_auc": 0.99})
    messages, _ = stream(1, store)
    service = ModelService(settings, store=store)
    service.apply(messages[0])
    assert service.version == 1 and not service.guard_holding and service.guard_reason


def test_concurrent_requests_share_one_forward_pass_with_one_version(store):
    service = following(2, store)
    passes: list[tuple[int, int]] = []
    requests = [encode_batch(examples(n, 10 * n), SETTINGS.hash_buckets) for n in (3, 5, 7)]

    async def run() -> list[tuple[int, np.ndarray]]:
        batcher = Batcher(service.current, max_wait_s=0.5, max_candidates=1_000,
                          observe=lambda c, r: passes.append((c, r)))
        batcher.start()
        batcher.preparing = len(requests)  # all three are being prepared

        async def one(batch: Batch) -> tuple[int, np.ndarray]:
            batcher.preparing -= 1
            return await batcher.score(batch)

        try:
            return await asyncio.gather(*(one(r) for r in requests))
        finally:
            await batcher.close()

    results = asyncio.run(run())
    assert passes == [(15, 3)]
    for (version, probs), batch in zip(results, requests):
        assert version == 2
        np.testing.assert_allclose(probs, forward(service.current(), batch), atol=1e-6)


def test_a_lone_request_does_not_wait(store):
    service = following(1, store)

    async def run() -> float:
        batcher = Batcher(service.current, max_wait_s=5.0, max_candidates=1_000)
        batcher.start()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await batcher.score(encode_batch(examples(4), SETTINGS.hash_buckets))
        elapsed = loop.time() - t0
        await batcher.close()
        return elapsed

    assert asyncio.run(run()) < 2.0


def test_a_pass_takes_at_most_max_candidates_and_the_rest_go_next(store):
    service = following(1, store)
    passes: list[tuple[int, int]] = []
    requests = [encode_batch(examples(n, 10 * n), SETTINGS.hash_buckets) for n in (4, 4, 4)]

    async def run() -> list[tuple[int, np.ndarray]]:
        batcher = Batcher(service.current, max_wait_s=5.0, max_candidates=8,
                          observe=lambda c, r: passes.append((c, r)))
        batcher.start()
        try:  # handed in within one turn of the loop, nothing else being prepared
            return await asyncio.gather(*(batcher.score(r) for r in requests))
        finally:
            await batcher.close()

    results = asyncio.run(run())
    assert passes == [(8, 2), (4, 1)]
    for (version, probs), batch in zip(results, requests):
        assert version == 1
        np.testing.assert_allclose(probs, forward(service.current(), batch), atol=1e-6)


def test_an_offloaded_pass_runs_beside_the_loop_and_the_requests_meanwhile_make_the_next(store):
    service = following(1, store)
    passes: list[tuple[int, int]] = []
    threads: list[str] = []
    entered, gate = threading.Event(), threading.Event()
    requests = [encode_batch(examples(n, 10 * n), SETTINGS.hash_buckets) for n in (2, 3, 5)]

    def current():  # the first pass holds until the later requests were handed in
        threads.append(threading.current_thread().name)
        if not entered.is_set():
            entered.set()
            gate.wait(10)
        return service.current()

    async def run() -> list[tuple[int, np.ndarray]]:
        loop = asyncio.get_running_loop()
        batcher = Batcher(current, max_wait_s=5.0, max_candidates=1_000,
                          observe=lambda c, r: passes.append((c, r)), offload=True)
        batcher.start()
        try:
            first = asyncio.ensure_future(batcher.score(requests[0]))
            assert await loop.run_in_executor(None, entered.wait, 10)
            later = [asyncio.ensure_future(batcher.score(r)) for r in requests[1:]]
            await asyncio.sleep(0.05)  # the loop runs on while the first pass is held
            assert passes == [] and not first.done()
            gate.set()
            return await asyncio.gather(first, *later)
        finally:
            await batcher.close()

    results = asyncio.run(run())
    assert passes == [(2, 1), (8, 2)]
    assert threads and all(name.startswith("forward") for name in threads)
    for (version, probs), batch in zip(results, requests):
        assert version == 1
        np.testing.assert_allclose(probs, forward(service.current(), batch), atol=1e-6)


def test_the_batching_policy_follows_the_device():
    assert device_policy(torch.device("cuda")) == DevicePolicy(offload=True, max_candidates=131_072)
    assert device_policy(torch.device("cpu")) == DevicePolicy(offload=False, max_candidates=16_384)
    assert device_policy(torch.device("meta")) == device_policy(torch.device("cpu"))
    batcher = Batcher(lambda: None, max_wait_s=0.001, max_candidates=0)
    assert batcher.max_candidates == 16_384
    assert Batcher(lambda: None, max_wait_s=0.001, max_candidates=64).max_candidates == 64


@pytest.mark.parametrize("body, message", [
    ({"user_id": "u", "items": []}, "at least 1"),
    ({"user_id": "u", "items": ["a", {"item_id": "a"}]}, "duplicate item 'a'"),
    ({"user_id": "u", "items": ["a"], "colour": "red"}, "Extra inputs"),
    ({"user_id": "u", "items": [{"item_id": "a", "colour": 3}]}, "Extra inputs"),
    ({"user_id": "u", "items": [{"item_id": "a", "price": -1.0}]}, "greater than or equal"),
    ({"user_id": "u", "items": [{"item_id": "a", "price": "3"}]}, "valid number"),
    ({"user_id": "u", "items": [{"item_id": "a", "price": True}]}, "valid number"),
    ({"user_id": "u", "items": [{"item_id": "a", "price": float("nan")}]}, "finite number"),
    ({"user_id": "u", "items": [{"item_id": "a", "price": float("inf")}]}, "finite number"),
    ({"user_id": "u", "items": [""]}, "1 to 256"),
    ({"user_id": "u", "items": ["a"], "as_of_ms": -1}, "greater than or equal"),
])
def test_bad_requests_are_refused_with_a_reason(body, message):
    with pytest.raises(ValidationError, match=message):
        RankRequest.model_validate(body)
    refs = RankRequest.model_validate({"user_id": "u", "items": ["a", {"item_id": "b",
                                                                       "category_id": "c"}]}).refs()
    assert [(r.item_id, r.category_id) for r in refs] == [("a", None), ("b", "c")]


def test_a_price_is_optional_and_reaches_the_candidate():
    refs = RankRequest.model_validate_json(
        b'{"user_id": "u", "items": ["a", {"item_id": "b", "price": 3}, '
        b'{"item_id": "c", "price": 0.5}]}').refs()
    assert [r.price for r in refs] == [None, 3.0, 0.5]
    for raw in (b'{"user_id": "u", "items": [{"item_id": "a", "price": NaN}]}',
                b'{"user_id": "u", "items": [{"item_id": "a", "price": "1"}]}',
                b'{"user_id": "u", "items": [{"item_id": "a", "price": -0.01}]}'):
        with pytest.raises(ValidationError):
            RankRequest.model_validate_json(raw)


def test_a_candidate_encodes_as_its_training_example_at_the_serving_position():
    """What the scorer builds from online inputs and the request is what the trainer scores."""
    from features.online import OnlineInputs
    from features.schema import DENSE_FEATURES
    from models.ranker import SERVING_POSITION
    from models.scorer.candidates import encode_candidates

    xs = [x.model_copy(update={
        "user_id": "u7", "position": k,
        "recent_items": ("i3", "i9"), "recent_categories": ("c1",)})
        for k, x in enumerate(examples(6))]
    inputs = OnlineInputs(np.array([[x.features.get(n, 0.0) for n in DENSE_FEATURES]
                                   for x in xs]),
                          ("i3", "i9"), ("c1",))
    served = encode_candidates("u7", [x.item_id for x in xs], [x.category_id for x in xs],
                               [x.price for x in xs], inputs, SETTINGS.hash_buckets)
    trained = encode_batch(xs, SETTINGS.hash_buckets)
    for got, want in zip(served, trained):
        assert torch.equal(got, want)
    assert set(served.position.tolist()) == {SERVING_POSITION}
    assert not torch.equal(encode_batch(xs, SETTINGS.hash_buckets, training=True).position,
                           served.position)


def test_host_staging_reuses_its_buffers_and_changes_no_score(store):
    service = following(2, store)
    staging = HostStaging(pin=False)  # pinned on a CUDA device; the copies are the same
    pointers = [t.data_ptr() for t in staging.stage(
        encode_batch(examples(12), SETTINGS.hash_buckets))]
    for n in (3, 7, 5, 20):
        batch = encode_batch(examples(n, 100 * n), SETTINGS.hash_buckets)
        assert np.array_equal(forward(service.current(), batch, staging),
                              forward(service.current(), batch))
        staged = staging.stage(batch)
        assert all(torch.equal(a, b) for a, b in zip(staged, batch))
        if n < 12:  # fits the buffers of the first batch: no new allocation
            assert [t.data_ptr() for t in staged] == pointers


def test_updates_wait_for_a_moment_with_no_request_in_flight(store):
    """The reloader applies a poll's updates once no request is in flight."""
    messages, _ = stream(2, store)
    service = ModelService(SETTINGS, store=store)
    in_flight = InFlight()
    reloader = Reloader(SETTINGS.model_copy(update={"swap_wait_ms": 10_000.0}), service,
                        wait_quiet=in_flight.wait_quiet)
    in_flight.enter()
    in_flight.enter()
    applying = threading.Thread(target=reloader.handle_quietly, args=(messages,))
    applying.start()
    in_flight.leave()
    applying.join(0.3)
    assert applying.is_alive() and service.version == 0  # one request still in flight
    in_flight.leave()
    applying.join(5.0)
    assert not applying.is_alive() and service.version == 2


def test_updates_wait_for_quiet_at_most_swap_wait_ms_per_poll(store):
    """Under load that never pauses, a poll's updates are applied after ``swap_wait_ms`` in
    all (not that long for each)."""
    messages, _ = stream(3, store)
    service = ModelService(SETTINGS, store=store)
    in_flight = InFlight()
    in_flight.enter()
    reloader = Reloader(SETTINGS.model_copy(update={"swap_wait_ms": 200.0}), service,
                        wait_quiet=in_flight.wait_quiet)
    started = time.monotonic()
    outcomes = reloader.handle_quietly(messages)
    waited = time.monotonic() - started
    assert [o.status for o in outcomes] == [Status.APPLIED] * 3 and service.version == 3
    assert 0.2 <= waited < 0.2 * len(messages)
