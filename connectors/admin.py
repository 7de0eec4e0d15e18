"""Topic names, partition counts and their creation."""

from __future__ import annotations

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from connectors.kafka_config import admin_config, consumer_config
from streamrank.config import Settings


def topic_specs(settings: Settings) -> dict[str, int]:
    """Topic name -> partitions. ``model.deltas`` has one partition so versions stay ordered."""
    return {
        settings.topic_events: settings.events_partitions,
        settings.topic_dlq: 1,
        settings.topic_examples: settings.events_partitions,
        settings.topic_deltas: 1,
    }


def topic_config(settings: Settings) -> dict[str, str]:
    """Per-topic settings. Retention is by size, not time: records carry their event time as
    their Kafka timestamp, and a replay of an old log would otherwise be deleted at once."""
    return {
        "max.message.bytes": str(settings.max_message_bytes + 100_000),
        "retention.ms": "-1",
        "retention.bytes": str(settings.topic_retention_bytes),
    }


def ensure_topics(settings: Settings, specs: dict[str, int] | None = None) -> list[str]:
    """Create the missing topics (replication factor 1 locally); return those created."""
    admin = AdminClient(admin_config(settings))
    wanted = specs or topic_specs(settings)
    existing = admin.list_topics(timeout=10).topics
    new = [
        NewTopic(name, num_partitions=parts, replication_factor=1, config=topic_config(settings))
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


def delete_topics(settings: Settings, names: list[str]) -> None:
    """Delete topics (used by tests for their own uniquely named topics)."""
    admin = AdminClient(admin_config(settings))
    for fut in admin.delete_topics(names).values():
        fut.result()


def _offsets(settings: Settings, topic: str, group_id: str) -> tuple[dict[int, int], dict[int, int]]:
    """Per partition of ``topic``: the end offset, and ``group_id``'s committed offset (-1 when
    it has none)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(consumer_config(settings, group_id, **{"enable.auto.commit": False}))
    try:
        parts = [TopicPartition(topic, p)
                 for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions]
        ends = {tp.partition: consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in parts}
        committed = {tp.partition: max(tp.offset, -1)
                     for tp in consumer.committed(parts, timeout=10)}
        return ends, committed
    finally:
        consumer.close()


def topic_size(settings: Settings, topic: str) -> int:
    """Records currently in ``topic``: the sum over partitions of high minus low offsets."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "streamrank-admin"})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        total = 0
        for p in parts:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            total += high - low
        return total
    finally:
        consumer.close()


def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """The end offset of each partition of ``topic`` (the offset its next record will get)."""
    return _offsets(settings, topic, "streamrank-admin")[0]


def caught_up(settings: Settings, topic: str, group_id: str, ends: dict[int, int]) -> bool:
    """Whether ``group_id`` has committed offsets at or past ``ends`` on every partition."""
    committed = _offsets(settings, topic, group_id)[1]
    return all(end <= 0 or committed.get(p, -1) >= end for p, end in ends.items())
