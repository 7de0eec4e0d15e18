"""The training job end to end: real Kafka, a real Flink MiniCluster, the real trainer.

Examples come from the shared Taobao sample through the pure builder; the job runs as
``python -m jobs run training`` in a child process, its settings in ``STREAMRANK_*``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from itertools import islice
from pathlib import Path
from typing import Any

import pytest
import torch
from confluent_kafka import Consumer, Producer
from pydantic import SecretStr

from config import Settings
from connectors.items import CatalogItem, ItemProducer
from connectors.kafka_config import consumer_config, producer_config
from connectors.logs import read_log
from connectors.model_updates import ModelUpdateSubscriber
from connectors.snapshot_store import SnapshotStore
from connectors.training_examples import TrainingExample, encode_example
from features.example_builder import build_examples
from features.impressions import with_impressions
from features.query_item import QUERY_ITEM_FEATURES
from jobs.training import JOB, status_path
from models.delta import ModelUpdate, decode_message, hmac_key, read_metadata
from models.follower import ModelFollower, Status
from models.ranker import DENSE_INPUTS, Ranker
from tests.integration.child_jobs import ChildJob, wait_for

pytestmark = pytest.mark.integration

SAMPLE_ROWS = 30_000
EXAMPLES = 10_000
"""Examples built (the crash test sends 6,000 before the crash and the rest after it)."""
BAD_RECORD = b'{"example_id": "x1", "click": 1'


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """The first examples of the first rows of the Taobao sample, encoded."""
    settings = Settings()
    head = tmp_path_factory.mktemp("sample") / "head.csv"
    with settings.sample_log.open() as src:
        head.write_text("".join(islice(src, SAMPLE_ROWS)))
    events, _ = read_log(head, "taobao", settings=settings)
    built = build_examples(with_impressions(events, settings), settings)
    return [encode_example(x) for x in islice(built, EXAMPLES)]


@pytest.fixture
def job_settings(topics: Settings, tmp_path: Path) -> Settings:
    """Fresh topics and run directory; small model and intervals so that a run cuts many
    versions in seconds; signing on."""
    return topics.model_copy(update={
        "run_dir": tmp_path / "run", "hash_buckets": 20_011, "delta_interval_examples": 2_000,
        "delta_interval_s": 1.0, "snapshot_every": 3, "checkpoint_interval_ms": 1_000,
        "delta_hmac_key": SecretStr("training-job-test"),
    })


def produce(settings: Settings, records: list[bytes]) -> None:
    """Send ``records`` to the examples topic and wait for every ack."""
    producer = Producer(producer_config(settings))
    for record in records:
        producer.produce(settings.topic_examples, record)
        producer.poll(0)
    assert producer.flush(30) == 0


def status(settings: Settings) -> dict[str, Any]:
    """The trainer's status file ({} before the first write)."""
    try:
        return json.loads(status_path(settings).read_text())
    except (OSError, ValueError):
        return {}


def updates_until(settings: Settings, done: Callable[[list[bytes]], bool]) -> list[bytes]:
    """All messages of the deltas topic, read from the start until ``done(messages)``."""
    messages: list[bytes] = []

    def more() -> bool:
        messages.extend(subscriber.poll(0.5))
        return done(messages)

    with ModelUpdateSubscriber(settings) as subscriber:
        wait_for("the model updates", more, timeout_s=60)
    return messages


def decoded(settings: Settings, messages: list[bytes]) -> list[ModelUpdate]:
    return [decode_message(m, hmac_key(settings)) for m in messages]


def equal_weights(model: Ranker, tensors: dict[str, torch.Tensor]) -> bool:
    state = model.state_dict()
    return state.keys() == tensors.keys() and all(
        torch.equal(state[name], t) for name, t in tensors.items())


def test_bounded_run_publishes_a_version_chain_that_followers_reproduce(
        job_settings: Settings, examples: list[bytes], child_jobs: Callable[..., ChildJob]
) -> None:
    settings = job_settings
    # an at-least-once upstream sends a stretch again: learned once
    produce(settings, examples[:EXAMPLES // 2] + [BAD_RECORD] + examples[EXAMPLES // 2:]
            + examples[EXAMPLES - 700:EXAMPLES - 200])
    run = child_jobs(JOB, settings, "--bounded")
    run.finish()

    final = status(settings)
    store = SnapshotStore.from_settings(settings)
    assert final["examples"] == EXAMPLES and final["duplicates"] == 500
    assert final["version"] == store.published_version()
    messages = updates_until(settings, lambda ms: bool(ms) and read_metadata(ms[-1])["version"]
                             == str(final["version"]))
    updates = decoded(settings, messages)

    # one unbroken chain: 1, 2, 3, ... each delta on the one before; snapshots as configured
    assert [u.version for u in updates] == list(range(1, final["version"] + 1))
    assert len(updates) >= EXAMPLES // settings.delta_interval_examples
    assert all(u.base_version == u.version - 1 for u in updates)
    assert [u.version for u in updates if u.kind == "snapshot"] == [
        v for v in range(1, final["version"] + 1) if v == 1 or v % settings.snapshot_every == 0]
    # a version at least every delta_interval_examples (cut at the next batch boundary)
    learned = [u.examples for u in updates]
    gaps = [b - a for a, b in zip([0, *learned], learned)]
    assert all(0 < g < settings.delta_interval_examples + settings.batch_size for g in gaps), gaps
    assert learned[-1] == EXAMPLES
    assert updates[-1].watermark_ms == max(json.loads(x)["event_time"] for x in examples)

    # a follower of the topic passes through the store's snapshot bit for bit, ends on the
    # final version, and one bootstrapped from that snapshot ends on the same weights
    latest, snapshot = store.latest()  # type: ignore[misc]
    from_topic = ModelFollower(Ranker.from_settings(settings), hmac_key(settings))
    for message, update in zip(messages, updates):
        assert from_topic.apply(message).status == Status.APPLIED
        if update.version == latest:
            assert equal_weights(from_topic.model,
                                 decode_message(snapshot, hmac_key(settings)).tensors)
    assert from_topic.version == final["version"]
    from_store = ModelFollower(Ranker.from_settings(settings), hmac_key(settings))
    assert from_store.bootstrap(snapshot).status == Status.APPLIED
    for message in messages[latest:]:
        assert from_store.apply(message).status == Status.APPLIED
    assert from_store.version == final["version"]
    assert equal_weights(from_store.model, from_topic.model.state_dict())

    # the one bad record went to the dead-letter topic with its reason, nothing else did
    consumer = Consumer(consumer_config(settings, f"dlq-check-{settings.topic_dlq}"))
    consumer.subscribe([settings.topic_dlq])
    try:
        letters = wait_for("the dead letter", lambda: consumer.consume(10, 1.0), timeout_s=30)
        letters += consumer.consume(10, 2.0)
    finally:
        consumer.close()
    assert [json.loads(m.value())["reason"] for m in letters] == ["bad_json"]
    assert json.loads(letters[0].value())["original"] == BAD_RECORD.decode()


def test_crash_and_restore_keep_versions_going_up(
        job_settings: Settings, examples: list[bytes], child_jobs: Callable[..., ChildJob]
) -> None:
    # only the first version of a run is a snapshot: the restore goes back to the crashed run's
    # first version, so the examples between it and the checkpoint are surely skipped
    settings = job_settings.model_copy(update={"snapshot_every": 1_000_000})
    first, second = examples[:6_000], examples[6_000:]
    produce(settings, first)
    run = child_jobs(JOB, settings)
    run.wait_for("the first part learned",
                 lambda: status(settings).get("examples") == len(first))
    seen = run.checkpoint_id()
    # a checkpoint triggered after everything of the first part was read holds its end offsets
    run.wait_for("two more checkpoints", lambda: run.checkpoint_id() >= seen + 2)
    run.kill()

    store = SnapshotStore.from_settings(settings)
    published = store.published_version()
    snapshot_version, snapshot = store.latest()  # type: ignore[misc]
    restored_examples = decode_message(snapshot, hmac_key(settings)).examples
    assert snapshot_version == 1 and 0 < restored_examples < len(first)

    produce(settings, second)
    run = child_jobs(JOB, settings, "--restore")
    # as the job's docstring says: the examples after the snapshot and before the checkpoint
    # are skipped, those after the checkpoint are learned once
    expected = {"restored_version": snapshot_version,
                "examples": restored_examples + len(second)}
    run.wait_for("the second part learned",
                 lambda: {k: status(settings).get(k) for k in expected} == expected)
    messages = updates_until(settings, lambda ms: bool(ms) and read_metadata(ms[-1])["examples"]
                             == str(expected["examples"]))
    run.kill()

    metas = [read_metadata(m) for m in messages]
    versions = [int(m["version"]) for m in metas]
    # strictly increasing in topic order: no number twice (whatever its payload's hash), and
    # the restarted run goes on above everything the crashed one published
    assert versions == sorted(set(versions)), versions
    restarted = next(m for m in metas if int(m["version"]) > published)
    assert restarted["kind"] == "snapshot" and int(restarted["version"]) == published + 1
    assert int(restarted["examples"]) >= restored_examples

    follower = ModelFollower(Ranker.from_settings(settings), hmac_key(settings))
    outcomes = [follower.apply(m).status for m in messages]
    assert Status.REJECTED not in outcomes
    assert follower.version == versions[-1]


def test_search_examples_learn_the_catalog_text_features(
        job_settings: Settings, child_jobs: Callable[..., ChildJob]) -> None:
    """Examples of searches (with a ``query``) train on their query–item text features, taken
    from the ``items`` topic as the scorer takes them: when shoppers click titles that match
    their query, the wide part's weight of the query–title cosine grows positive; examples of
    items the catalog lacks change nothing there."""
    settings = job_settings
    kinds = {"drill": "cordless drill driver {n} volt", "towel": "cotton bath towel {n} cm"}
    with ItemProducer(settings) as items:
        for kind, title in kinds.items():
            for n in range(20):
                items.send(CatalogItem(item_id=f"{kind}{n}", title=title.format(n=n)))
    rng = random.Random(3)
    shown = []
    for k in range(3_000):
        query, kind = rng.choice([("cordless drill", "drill"), ("bath towel", "towel")])
        item_kind = rng.choice(list(kinds))
        match = item_kind == kind
        shown.append(TrainingExample(
            example_id=f"s{k}", request_id=f"r{k}", user_id=f"u{k % 50}",
            item_id=f"{item_kind}{rng.randrange(20)}", event_time=1_700_000_000_000 + k,
            click=int(rng.random() < (0.5 if match else 0.03)), purchase=0, features={},
            query=query))
    produce(settings, [encode_example(x) for x in shown])
    child_jobs(JOB, settings, "--bounded").finish()

    _, snapshot = SnapshotStore.from_settings(settings).latest()  # type: ignore[misc]
    weights = decode_message(snapshot, hmac_key(settings)).tensors["wide.dense"]
    cosine, bm25 = (weights[DENSE_INPUTS.index(n)].item() for n in QUERY_ITEM_FEATURES)
    assert cosine > 0 and bm25 > 0, (cosine, bm25)
