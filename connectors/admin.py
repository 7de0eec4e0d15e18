"""Topic names, partition counts and their creation."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from config import KafkaSettings
from connectors.kafka_config import admin_config, consumer_config

ADMIN_GROUP = "streamrank-admin"
"""The consumer group of offset queries (it never commits)."""


def topic_specs(settings: KafkaSettings) -> dict[str, int]:
    """Topic name -> partitions. ``model.deltas`` has one partition so versions stay ordered."""
    return {
        settings.topic_events: settings.events_partitions,
        settings.topic_dlq: 1,
        settings.topic_examples: settings.events_partitions,
        settings.topic_deltas: 1,
        settings.topic_feature_rows: settings.events_partitions,
        settings.topic_items: 1,
    }


def topic_config(settings: KafkaSettings, topic: str | None = None) -> dict[str, str]:
    """Per-topic settings. Retention is by size, not time: records carry their event time as
    their Kafka timestamp, and a replay of an old log would otherwise be deleted at once. The
    feature-row and item topics are compacted instead: the latest record of each key is what
    counts.

    >>> topic_config(KafkaSettings(), "features.rows")["cleanup.policy"]
    'compact'
    >>> topic_config(KafkaSettings(), "items")["cleanup.policy"]
    'compact'
    """
    config = {
        "max.message.bytes": str(settings.max_message_bytes + 100_000),
        "retention.ms": "-1",
        "retention.bytes": str(settings.topic_retention_bytes),
    }
    if topic in (settings.topic_feature_rows, settings.topic_items):
        config = {"max.message.bytes": config["max.message.bytes"], "cleanup.policy": "compact"}
    return config


def ensure_topics(settings: KafkaSettings, specs: dict[str, int] | None = None) -> list[str]:
    """Create the missing topics (replication factor 1 locally); return those created."""
    admin = AdminClient(admin_config(settings))
    wanted = specs or topic_specs(settings)
    existing = admin.list_topics(timeout=10).topics
    new = [
        NewTopic(name, num_partitions=parts, replication_factor=1,
                 config=topic_config(settings, name))
        for name, parts in wanted.items() if name not in existing
    ]
    created: list[str] = []
    for name, fut in (admin.create_topics(new) if new else {}).items():
        try:
            fut.result()
            created.append(name)
        except KafkaException as err:
            if "TOPIC_ALREADY_EXISTS" not in str(err):
                raise
    return created


def delete_topics(settings: KafkaSettings, names: list[str]) -> None:
    """Delete topics (used by tests for their own uniquely named topics)."""
    admin = AdminClient(admin_config(settings))
    for fut in admin.delete_topics(names).values():
        fut.result()


@contextmanager
def _partitions(settings: KafkaSettings, topic: str,
                group_id: str = ADMIN_GROUP) -> Iterator[tuple[Consumer, list[TopicPartition]]]:
    """A consumer of ``group_id`` (it reads and commits nothing) and ``topic``'s partitions."""
    consumer = Consumer(consumer_config(settings, group_id, **{"enable.auto.commit": False}))
    try:
        yield consumer, [TopicPartition(topic, p)
                         for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions]
    finally:
        consumer.close()


def _watermarks(settings: KafkaSettings, topic: str) -> dict[int, tuple[int, int]]:
    """The (low, high) offsets of each partition of ``topic``."""
    with _partitions(settings, topic) as (consumer, parts):
        return {tp.partition: consumer.get_watermark_offsets(tp, timeout=10) for tp in parts}


def end_offsets(settings: KafkaSettings, topic: str) -> dict[int, int]:
    """The end offset of each partition of ``topic`` (the offset its next record will get)."""
    return {p: high for p, (_, high) in _watermarks(settings, topic).items()}


def caught_up(settings: KafkaSettings, topic: str, group_id: str, ends: dict[int, int]) -> bool:
    """Whether ``group_id`` has committed offsets at or past ``ends`` on every partition."""
    with _partitions(settings, topic, group_id) as (consumer, parts):
        committed = {tp.partition: tp.offset for tp in consumer.committed(parts, timeout=10)}
    return all(end <= 0 or committed.get(p, -1) >= end for p, end in ends.items())


def consumer_lag(settings: KafkaSettings, topic: str, group_id: str) -> int | None:
    """Records of ``topic`` that ``group_id`` has not committed yet (``None``: the group has
    committed nothing on it)."""
    with _partitions(settings, topic, group_id) as (consumer, parts):
        committed = consumer.committed(parts, timeout=10)
        marks = {tp.partition: consumer.get_watermark_offsets(tp, timeout=10) for tp in parts}
    if all(tp.offset < 0 for tp in committed):
        return None
    return sum(marks[tp.partition][1] - (tp.offset if tp.offset >= 0 else marks[tp.partition][0])
               for tp in committed)
