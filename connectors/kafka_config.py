"""librdkafka settings for streamrank's producers, consumers and admin clients (one place)."""

from __future__ import annotations

from typing import Any

from config import KafkaSettings


def admin_config(settings: KafkaSettings) -> dict[str, Any]:
    """AdminClient settings."""
    return {"bootstrap.servers": settings.kafka_bootstrap}


def producer_config(settings: KafkaSettings, **overrides: Any) -> dict[str, Any]:
    """An idempotent producer (acks=all, ordered per partition) batching for throughput."""
    return {
        "bootstrap.servers": settings.kafka_bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "batch.size": 1_000_000,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 1_000_000,
        "message.max.bytes": settings.max_message_bytes + 100_000,
        **overrides,
    }


def consumer_config(settings: KafkaSettings, group_id: str, **overrides: Any) -> dict[str, Any]:
    """A consumer reading from the earliest offset with its own group."""
    return {
        "bootstrap.servers": settings.kafka_bootstrap,
        "group.id": group_id,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
        **overrides,
    }
