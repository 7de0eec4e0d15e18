"""A scorer's follower: snapshot + deltas reach the trainer's weights bit for bit, in order only."""

from __future__ import annotations

import threading

import pytest
import torch
from pydantic import SecretStr

from config import Settings
from connectors.training_examples import TrainingExample
from models.delta import read_metadata
from models.follower import ModelFollower, Status
from models.ranker import Ranker, encode_batch
from models.trainer import OnlineTrainer
from models.versions import VersionCutter

torch.set_num_threads(1)
KEY = b"k3y"
SETTINGS = Settings(hash_buckets=1009, embedding_dim=8, batch_size=64, snapshot_every=5,
                    dense_every=1, delta_hmac_key=SecretStr("k3y"), model_id="ranker-a")


def examples(n: int, start: int = 0) -> list[TrainingExample]:
    return [TrainingExample(example_id=str(k), user_id=f"u{k % 41}", item_id=f"i{(k * 7) % 61}",
                            category_id=f"c{k % 5}", event_time=1_000 * k, click=int(k % 4 == 0),
                            purchase=int(k % 12 == 0), features={"u_clicks_1h": float(k % 3)})
            for k in range(start, start + n)]


Stream = tuple[OnlineTrainer, list[bytes], list[dict[str, torch.Tensor]]]


def publish(versions: int, settings: Settings = SETTINGS) -> Stream:
    """A trainer's messages for ``versions`` versions and its weights at each one."""
    trainer = OnlineTrainer(settings)
    publisher = VersionCutter(trainer, settings)
    messages, states = [], []
    for v in range(versions):
        trainer.learn_many(examples(128, 128 * v))
        messages += publisher.publish()
        states.append({k: t.clone() for k, t in trainer.model.state_dict().items()})
    return trainer, messages, states


def follower() -> ModelFollower:
    return ModelFollower(Ranker.from_settings(SETTINGS), KEY)


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def stream() -> Stream:
    return publish(8)  # snapshot 1, deltas 2-4, snapshot 5, deltas 6-8


def test_snapshot_plus_deltas_equal_the_trainer_bit_for_bit(stream: Stream) -> None:
    trainer, messages, _ = stream
    f = follower()
    assert f.bootstrap(messages[0]).status == Status.APPLIED
    for m in messages[1:]:
        assert f.apply(m).status == Status.APPLIED
    assert f.version == 8
    assert same(f.model.state_dict(), trainer.model.state_dict())
    batch = encode_batch(examples(32, 5_000), SETTINGS.hash_buckets)
    with torch.no_grad():
        assert torch.equal(f.model(*batch), trainer.model(*batch))
    assert f.last_update is not None and f.last_update.examples == trainer.examples_seen


def test_every_intermediate_version_matches(stream: Stream) -> None:
    _, messages, states = stream
    f = follower()
    for version, (m, state) in enumerate(zip(messages, states), start=1):
        f.apply(m)
        assert f.version == version and same(f.model.state_dict(), state)
    assert f.tables.recycled > 0  # deltas 3, 4, 7 and 8 wrote into retired copies


def test_a_held_version_keeps_its_tables_while_later_deltas_stream(stream: Stream) -> None:
    _, messages, states = stream
    f = follower()
    held = []
    for m in messages:
        f.apply(m)
        held.append(f.served())  # as a pin, the guard or a forward pass under way would
    assert f.tables.recycled == 0
    for (version, model), state in zip(held, states):
        assert same(model.state_dict(), state), version
    del held[2:]  # versions 3 and later may be recycled now; 1 and 2 are still held
    for m in publish(10)[1][8:]:
        assert f.apply(m).status == Status.APPLIED
    assert f.tables.recycled > 0
    assert same(held[0][1].state_dict(), states[0]) and same(held[1][1].state_dict(), states[1])


def test_duplicates_and_replays_are_ignored(stream: Stream) -> None:
    _, messages, states = stream
    f = follower()
    for m in messages[:4]:
        f.apply(m)
    for m in messages[:4]:  # the whole prefix again, e.g. a consumer rewind
        outcome = f.apply(m)
        assert (outcome.status, outcome.version) == (Status.IGNORED, 4)
    assert same(f.model.state_dict(), states[3])


def test_a_gap_needs_bootstrap_and_a_later_snapshot_heals(stream: Stream) -> None:
    _, messages, states = stream
    f = follower()
    f.apply(messages[0])
    f.apply(messages[1])
    served = f.model
    outcome = f.apply(messages[3])  # version 3 lost
    assert outcome.status == Status.NEEDS_BOOTSTRAP
    assert (outcome.version, outcome.message_version) == (2, 4)
    assert f.model is served and same(f.model.state_dict(), states[1])
    assert f.apply(messages[4]).status == Status.APPLIED  # snapshot 5
    assert f.apply(messages[5]).status == Status.APPLIED
    assert same(f.model.state_dict(), states[5])


def test_a_delta_before_any_snapshot_needs_bootstrap(stream: Stream) -> None:
    _, messages, _ = stream
    assert follower().apply(messages[1]).status == Status.NEEDS_BOOTSTRAP


def test_tampered_update_is_rejected_and_the_last_good_version_serves(stream: Stream) -> None:
    _, messages, states = stream
    f = follower()
    f.apply(messages[0])
    bad = bytearray(messages[1])
    bad[len(bad) // 2] ^= 0xFF
    outcome = f.apply(bytes(bad))
    assert (outcome.status, outcome.reason, outcome.version) == (Status.REJECTED, "bad_checksum", 1)
    assert same(f.model.state_dict(), states[0])
    assert f.apply(messages[1]).status == Status.APPLIED


def test_unsigned_updates_are_rejected_when_a_key_is_set() -> None:
    unsigned = SETTINGS.model_copy(update={"delta_hmac_key": None})
    _, messages, _ = publish(1, unsigned)
    assert "hmac" not in read_metadata(messages[0])
    outcome = follower().bootstrap(messages[0])
    assert (outcome.status, outcome.reason) == (Status.REJECTED, "missing_signature")
    keyless = ModelFollower(Ranker.from_settings(SETTINGS))
    assert keyless.bootstrap(messages[0]).status == Status.APPLIED


def test_bootstrap_takes_snapshots_only_and_one_model_id(stream: Stream) -> None:
    _, messages, _ = stream
    f = follower()
    assert f.bootstrap(messages[1]).reason == "not_a_snapshot"
    f.bootstrap(messages[0])
    other = SETTINGS.model_copy(update={"model_id": "ranker-b"})
    _, foreign, _ = publish(1, other)
    outcome = f.apply(foreign[0])
    assert outcome.status == Status.REJECTED and outcome.reason.startswith("other_model")


def test_readers_never_see_half_an_update(stream: Stream) -> None:
    _, messages, states = stream
    batch = encode_batch(examples(16, 9_000), SETTINGS.hash_buckets)
    template = Ranker.from_settings(SETTINGS)
    expected = {}
    with torch.no_grad():
        for version, state in enumerate(states, start=1):
            expected[version] = template.like(state)(*batch)
    f = follower()
    f.bootstrap(messages[0])
    seen: list[bool] = []
    done = threading.Event()

    def read() -> None:
        with torch.no_grad():
            while not done.is_set():
                version, model = f.served()
                seen.append(torch.equal(model(*batch), expected[version]))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for m in messages[1:]:
            assert f.apply(m).status == Status.APPLIED
    finally:
        done.set()
        reader.join()
    assert seen and all(seen)


def test_a_served_model_is_never_modified_afterwards(stream: Stream) -> None:
    _, messages, states = stream
    f = follower()
    f.bootstrap(messages[0])
    held = f.model
    for m in messages[1:]:
        f.apply(m)
    assert same(held.state_dict(), states[0])
