"""Producing shopper events to Kafka: idempotent, keyed by user, delivery reports surfaced."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from types import TracebackType
from typing import Self

from confluent_kafka import KafkaError, Message, Producer

from config import KafkaSettings
from connectors.events import Event, encode_event
from connectors.kafka_config import producer_config


class DeliveryFailed(RuntimeError):
    """Some records were not acknowledged by the broker."""


class UnknownTopic(RuntimeError):
    """The topic does not exist (topics are created by `streamrank stack up`, never implicitly)."""


class TopicProducer:
    """An idempotent producer for one existing topic; a context manager that flushes on exit.

    Delivery reports are counted (``delivered``, ``failed``); the first errors are kept in
    ``errors`` and :meth:`flush` raises :class:`DeliveryFailed` if any record failed.
    ``topic_setting`` names the Settings field of the default topic.
    """

    topic_setting = "topic_events"

    def __init__(self, settings: KafkaSettings, topic: str | None = None, **overrides: object) -> None:
        self.topic = topic or getattr(settings, self.topic_setting)
        self._producer = Producer(producer_config(settings, **overrides))
        topic_md = self._producer.list_topics(self.topic, timeout=10).topics.get(self.topic)
        if topic_md is None or topic_md.error is not None:
            raise UnknownTopic(f"topic {self.topic!r} does not exist on {settings.kafka_bootstrap}")
        self._lock = threading.Lock()
        self.delivered = 0
        self.failed = 0
        self.errors: list[str] = []

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        with self._lock:
            if err is None:
                self.delivered += 1
            else:
                self.failed += 1
                if len(self.errors) < 10:
                    self.errors.append(f"{msg.topic()}: {err}")

    def send_raw(self, value: bytes, key: bytes | None, timestamp_ms: int = 0,
                 headers: list[tuple[str, bytes]] | None = None) -> None:
        """Send pre-encoded bytes (waits for queue space rather than failing).

        ``timestamp_ms`` becomes the record's Kafka timestamp (0: the send time). Events carry
        their ``event_time`` there, which is what the Flink jobs' watermarks are built from.
        """
        while True:
            try:
                self._producer.produce(self.topic, value, key, on_delivery=self._on_delivery,
                                       timestamp=timestamp_ms, headers=headers)
                break
            except BufferError:
                self._producer.poll(0.05)
        self._producer.poll(0)

    def flush(self, timeout_s: float = 60.0) -> None:
        """Wait for every queued record's delivery report; raise if any failed."""
        left = self._producer.flush(timeout_s)
        if left:
            raise DeliveryFailed(f"{left} records still queued after {timeout_s}s")
        if self.failed:
            raise DeliveryFailed(f"{self.failed} records failed: {'; '.join(self.errors)}")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.flush()


class EventProducer(TopicProducer):
    """Sends shopper events to the ``events`` topic, keyed by user."""

    topic_setting = "topic_events"

    def send(self, event: Event) -> None:
        """Send one event, keyed by its user."""
        self.send_raw(encode_event(event), event.user_id.encode(), event.event_time)

    def send_many(self, events: Iterable[Event]) -> int:
        """Send events in order; returns how many were queued."""
        n = 0
        for event in events:
            self.send(event)
            n += 1
        return n
