"""Model updates through the real Kafka broker reach a follower bit for bit, chunked where large."""

from __future__ import annotations

import time

import pytest
import torch

from config import Settings
from connectors.admin import end_offsets
from connectors.model_updates import ModelUpdatePublisher, ModelUpdateSubscriber
from connectors.training_examples import TrainingExample
from models.delta import hmac_key, read_metadata
from models.follower import ModelFollower, Status
from models.ranker import Ranker
from models.trainer import OnlineTrainer
from models.versions import VersionCutter

pytestmark = pytest.mark.integration
torch.set_num_threads(1)


def examples(n: int, start: int) -> list[TrainingExample]:
    return [TrainingExample(example_id=str(k), user_id=f"u{k % 97}", item_id=f"i{(k * 13) % 211}",
                            category_id=f"c{k % 11}", event_time=1_000 * k, click=int(k % 5 == 0),
                            purchase=int(k % 25 == 0), features={"i_ctr": 0.2})
            for k in range(start, start + n)]


def receive(settings: Settings, expected: int, timeout_s: float = 60.0) -> tuple[list[bytes], int]:
    """Whole updates read back from the deltas topic, and the records dropped on the way."""
    got: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    with ModelUpdateSubscriber(settings) as subscriber:
        while len(got) < expected and time.monotonic() < deadline:
            got += subscriber.poll(timeout_s=1.0)
        return got, subscriber.dropped


def test_deltas_through_kafka_reach_the_trainers_version(topics: Settings) -> None:
    # 3 tables x 20,011 rows x 8 floats: a ~1.9 MB snapshot, over the 900 kB record limit.
    settings = topics.model_copy(update={
        "hash_buckets": 20_011, "embedding_dim": 8, "batch_size": 64, "snapshot_every": 4,
        "dense_every": 1, "delta_hmac_key": "integration-key"})
    trainer = OnlineTrainer(settings)
    publisher = VersionCutter(trainer, settings)
    sent: list[bytes] = []
    records = 0
    with ModelUpdatePublisher(settings) as channel:
        for v in range(6):  # snapshots 1 and 4, deltas 2, 3, 5, 6
            trainer.learn_many(examples(256, 256 * v))
            for message in publisher.publish():
                sent.append(message)
                records += channel.publish(settings.model_id, message)
    assert max(map(len, sent)) > settings.max_message_bytes
    assert records > len(sent)  # the snapshots went as chunks
    assert sum(end_offsets(settings, settings.topic_deltas).values()) == records

    received, dropped = receive(settings, len(sent))
    assert received == sent and dropped == 0

    follower = ModelFollower(Ranker.from_settings(settings), hmac_key(settings))
    outcomes = [follower.apply(m) for m in received]
    assert [o.status for o in outcomes] == [Status.APPLIED] * 6
    assert follower.version == publisher.version == 6
    ours, theirs = follower.model.state_dict(), trainer.model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    kinds = [read_metadata(m)["kind"] for m in received]
    assert kinds == ["snapshot", "delta", "delta", "snapshot", "delta", "delta"]
