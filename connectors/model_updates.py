"""The Kafka side of the model-update channel (``model.deltas``): publish and subscribe.

Every update (delta or snapshot, the bytes of :mod:`models.delta`) goes to
``Settings.topic_deltas`` keyed by the model id, so one model's updates share a partition and
stay in order (the topic has one partition). Snapshots travel on the topic too (chunked), so a
follower that missed something heals at the next snapshot without reading the snapshot store.

Chunking. An update of at most ``Settings.max_message_bytes`` is one record whose value is the
update's bytes and which has no chunk header. A larger one is split into
``ceil(size / max_message_bytes)`` consecutive records whose values, concatenated in order,
are the update's bytes; each carries the Kafka record header ``streamrank-chunk`` with the
ASCII value ``<id>:<index>:<count>`` (``id`` 32 hex characters shared by the chunks of one
update, ``index`` from 0 to ``count - 1``). A subscriber keeps one partial update per record
key: a record that does not continue it (another id, an index out of sequence, an unchunked
record) drops the partial update (its publisher died mid-way; the follower then sees a gap,
``needs_bootstrap``, or heals at the next snapshot), and is counted in ``dropped``.

>>> parts = split_message(b"abcdefg", 3)
>>> [value for value, _ in parts]
[b'abc', b'def', b'g']
>>> assembler = ChunkAssembler()
>>> [assembler.add(b"m", value, headers) for value, headers in parts][-1]
b'abcdefg'
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException

from config import KafkaSettings
from connectors.producer import TopicProducer
from connectors.subscriber import TopicSubscriber

CHUNK_HEADER = "streamrank-chunk"
Headers = list[tuple[str, str | bytes | None]]
"""Kafka record headers, as confluent-kafka takes and returns them."""


def split_message(data: bytes, max_bytes: int) -> list[tuple[bytes, Headers]]:
    """Records (value, headers) carrying ``data``: itself, or chunks with chunk headers."""
    if max_bytes < 1:
        raise ValueError("max_bytes must be positive")
    if len(data) <= max_bytes:
        return [(data, [])]
    chunk_id = uuid.uuid4().hex
    count = -(-len(data) // max_bytes)
    return [(data[i * max_bytes:(i + 1) * max_bytes],
             [(CHUNK_HEADER, f"{chunk_id}:{i}:{count}".encode())]) for i in range(count)]


@dataclass
class _Partial:
    """The chunks of one update received so far."""

    id: str
    count: int
    parts: list[bytes] = field(default_factory=list)


class ChunkAssembler:
    """Turns records back into whole updates (see the module docstring); pure, no Kafka.

    ``dropped`` counts the records discarded: chunks of abandoned partial updates, chunks out
    of sequence and chunks with a malformed header.

    A publisher that died after the first chunk of ``a`` and then sent ``b``:

    >>> a, b = split_message(b"aaaa", 2), split_message(b"bbbb", 2)
    >>> assembler = ChunkAssembler()
    >>> [assembler.add(b"m", *record) for record in (a[0], b[0], b[1])], assembler.dropped
    ([None, None, b'bbbb'], 1)
    """

    def __init__(self) -> None:
        self._partial: dict[bytes | None, _Partial] = {}
        self.dropped = 0

    def add(self, key: bytes | None, value: bytes | None,
            headers: Headers | dict[str, str | bytes | None] | None) -> bytes | None:
        """Take one record; return a whole update when this record completes one."""
        items = headers.items() if isinstance(headers, dict) else headers or ()
        header = next((v for k, v in items if k == CHUNK_HEADER), None)
        if value is None:
            self._abandon(key)
            self.dropped += 1
            return None
        if header is None:
            self._abandon(key)
            return value
        parsed = _parse(header)
        pending = self._partial.get(key)
        if pending is None or parsed is None or (pending.id, len(pending.parts)) != parsed[:2]:
            self._abandon(key)
            if parsed is None or parsed[1] != 0:
                self.dropped += 1
                return None
            pending = self._partial[key] = _Partial(parsed[0], parsed[2])
        pending.parts.append(value)
        if len(pending.parts) < pending.count:
            return None
        del self._partial[key]
        return b"".join(pending.parts)

    def _abandon(self, key: bytes | None) -> None:
        pending = self._partial.pop(key, None)
        if pending is not None:
            self.dropped += len(pending.parts)


def _parse(header: str | bytes) -> tuple[str, int, int] | None:
    """``(id, index, count)`` of a chunk header, or None when malformed."""
    try:
        text = header.decode() if isinstance(header, bytes) else header
        chunk_id, index, count = text.split(":")
        parsed = chunk_id, int(index), int(count)
    except (UnicodeDecodeError, ValueError):
        return None
    return parsed if 0 <= parsed[1] < parsed[2] else None


class ModelUpdatePublisher(TopicProducer):
    """Sends encoded updates to ``model.deltas``, chunking the large ones; a context manager.

    :meth:`flush` raises :class:`~connectors.producer.DeliveryFailed` if any record failed.
    """

    topic_setting = "topic_deltas"

    def __init__(self, settings: KafkaSettings, topic: str | None = None, **overrides: object) -> None:
        super().__init__(settings, topic, **overrides)
        self.max_bytes = settings.max_message_bytes

    def publish(self, model_id: str, data: bytes) -> int:
        """Queue one update keyed by ``model_id``; returns the number of records it took."""
        records = split_message(data, self.max_bytes)
        for value, headers in records:
            self.send_raw(value, model_id.encode(), headers=headers)
        return len(records)


class ModelUpdateSubscriber(TopicSubscriber):
    """Reads ``model.deltas`` from the earliest offset and yields whole updates in order.

    Each subscriber has its own consumer group (``group_id``, a fresh one by default), so
    every scorer sees every update. Use as a context manager (or call :meth:`close`).
    """

    group_prefix = "streamrank-follower"

    def __init__(self, settings: KafkaSettings, topic: str | None = None, group_id: str | None = None,
                 **overrides: object) -> None:
        super().__init__(settings, topic or settings.topic_deltas, group_id, **overrides)
        self._assembler = ChunkAssembler()

    @property
    def dropped(self) -> int:
        """Records discarded by the chunk reassembly so far."""
        return self._assembler.dropped

    def poll(self, timeout_s: float = 1.0, max_records: int = 100) -> list[bytes]:
        """The whole updates completed by the records that arrive within ``timeout_s``."""
        out: list[bytes] = []
        for msg in self._messages(max_records, timeout_s):
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                raise KafkaException(err)
            whole = self._assembler.add(msg.key(), msg.value(), msg.headers())
            if whole is not None:
                out.append(whole)
        return out
