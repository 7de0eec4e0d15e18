"""A consumer of one topic, in a consumer group of its own: what the followers of
``model.deltas`` and ``items`` share (each scorer or trainer sees every record)."""

from __future__ import annotations

import uuid
from types import TracebackType
from typing import Self

from confluent_kafka import Consumer, Message

from config import KafkaSettings
from connectors.kafka_config import consumer_config


class TopicSubscriber:
    """Subscribes to ``topic`` in the consumer group ``group_id`` (by default a fresh one named
    after ``group_prefix``, so it reads from the earliest offset); a context manager that
    closes the consumer."""

    group_prefix = "streamrank-subscriber"

    def __init__(self, settings: KafkaSettings, topic: str, group_id: str | None = None,
                 **overrides: object) -> None:
        self.topic = topic
        group = group_id or f"{self.group_prefix}-{uuid.uuid4().hex[:12]}"
        self._consumer = Consumer(consumer_config(settings, group, **overrides))
        self._consumer.subscribe([topic])

    def _messages(self, max_records: int, timeout_s: float) -> list[Message]:
        """Up to ``max_records`` messages: waits up to ``timeout_s`` for the first, then takes
        those already fetched. (``Consumer.consume`` alone returns only when ``max_records``
        have arrived or the timeout has passed, so a follower would see a lone record up to a
        whole timeout late, or would have to wake up often.)"""
        first = self._consumer.poll(timeout_s)
        if first is None:
            return []
        return [first, *self._consumer.consume(max_records - 1, 0)] if max_records > 1 else [first]

    def close(self) -> None:
        """Leave the group and close the consumer."""
        self._consumer.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
