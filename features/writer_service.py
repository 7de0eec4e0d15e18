"""The Feast writer: feature rows from Kafka into Feast's online store and its offline log.

Reads ``settings.topic_feature_rows`` (rows of any features job, wire format in
:mod:`connectors.feature_rows`) with confluent-kafka in consumer group
:data:`GROUP`, and per poll of up to :data:`POLL_ROWS` messages (waiting at most
``feast_flush_ms``):

1. decodes the rows (a message that is not a row goes to ``events.dlq`` with its reason,
   topic, partition and offset; the writer goes on);
2. coalesces them per (view, key) (newest event time wins, a tie goes to the later offset) and
   writes them to Feast's Redis online store in one pipelined round trip per view, in Feast's
   own layout, through Feast's provider (:class:`features.writer.FeastStoreWriter`);
3. every ``feast_commit_ms`` writes the rows buffered since to the offline parquet log, then
   commits the consumed offsets (synchronously).

Offsets are committed only after both writes, so a writer killed at any moment restarts from
its committed offsets and writes again at most the rows of the last ``feast_commit_ms``: the
online store gets the same values again (upserts) and the offline log gets every row once
(rows buffered for it were never written). Keys live in one partition each (Kafka key
``[view, *key]``), so the last row written per key is the last row sent per key.

Run it with ``streamrank job run writer [--detach] [--bounded]`` (``--bounded`` stops at the
end offsets it saw at start).
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass, field
from types import FrameType

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from config import Settings
from connectors.admin import end_offsets
from connectors.errors import DecodeError, source
from connectors.events import dead_letter
from connectors.feature_rows import decode_row
from connectors.kafka_config import consumer_config
from connectors.producer import TopicProducer
from features.rows import FeatureRow
from features.store import open_store
from features.writer import FeastStoreWriter

GROUP = "streamrank-feast-writer"
"""The writer's consumer group (its committed offsets are where a restart resumes)."""
POLL_ROWS = 20_000
SESSION_TIMEOUT_MS = 10_000
"""A writer that died (SIGKILL) leaves the group after this long; until then its successor
waits for its partitions."""


@dataclass
class WriterRun:
    """What a writer run did."""

    messages: int = 0
    rows_written: int = 0
    dead_letters: int = 0
    commits: int = 0
    offsets: dict[int, int] = field(default_factory=dict)
    """Per partition: the next offset to read (what was committed last)."""


class WriterService:
    """Consumes feature rows and keeps Feast in step (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._topic = settings.topic_feature_rows
        self._consumer = Consumer(consumer_config(settings, GROUP, **{
            "enable.auto.commit": False, "fetch.min.bytes": 1_000_000, "fetch.wait.max.ms": 50,
            "session.timeout.ms": SESSION_TIMEOUT_MS}))
        self._consumer.subscribe([self._topic])
        self._writer = FeastStoreWriter(open_store(settings), settings, offline_flush_rows=1 << 62,
                                     offline_flush_ms=float("inf"))
        self._dlq = TopicProducer(settings, settings.topic_dlq)
        self._pending: dict[int, int] = {}
        self._last_commit = time.monotonic()
        self.run = WriterRun()

    def poll(self) -> int:
        """One poll: decode, coalesce, write online; commit when due. Returns messages read."""
        messages = self._consumer.consume(POLL_ROWS, self._settings.feast_flush_ms / 1000)
        rows: list[FeatureRow] = []
        for m in messages:
            if m.error():
                continue
            try:
                rows.append(decode_row(m.value()))
            except DecodeError as err:
                self._dead_letter(m, err)
            self._pending[m.partition()] = m.offset() + 1
        self.run.messages += len(messages)
        if rows:
            self._writer.add_rows(rows)
            self.run.rows_written += self._writer.flush_online()
        if (time.monotonic() - self._last_commit) * 1000 >= self._settings.feast_commit_ms:
            self.commit()
        return len(messages)

    def commit(self) -> None:
        """Write what is pending (online and offline), then commit the offsets read."""
        self.run.rows_written += self._writer.flush()
        self._dlq.flush()
        if self._pending:
            self._consumer.commit(offsets=[TopicPartition(self._topic, p, o)
                                           for p, o in self._pending.items()],
                                  asynchronous=False)
            self.run.offsets.update(self._pending)
            self._pending.clear()
            self.run.commits += 1
        self._last_commit = time.monotonic()

    def caught_up(self, ends: dict[int, int]) -> bool:
        """Whether every partition has been read up to ``ends``, by this writer or (committed)
        by another member of its group."""
        parts = [TopicPartition(self._topic, p) for p in ends]
        try:
            done = {tp.partition: tp.offset for tp in self._consumer.committed(parts, timeout=5)}
        except KafkaException:  # the group is rebalancing (e.g. waiting for a dead member)
            return False
        for tp in self._consumer.position(parts):
            done[tp.partition] = max(done[tp.partition], tp.offset, self._pending.get(
                tp.partition, -1))
        return all(end <= 0 or done[p] >= end for p, end in ends.items())

    def _dead_letter(self, m: Message, err: DecodeError) -> None:
        raw = m.value() or b""
        self._dlq.send_raw(dead_letter(raw, err.reason, err.detail,
                                       source(m.topic(), m.partition(), m.offset())), m.key())
        self.run.dead_letters += 1

    def close(self) -> None:
        """Commit what is written, then leave the group."""
        self.commit()
        self._consumer.close()


def run(settings: Settings, *, bounded: bool = False,
               stop: threading.Event | None = None) -> WriterRun:
    """Run the writer until ``stop`` is set, SIGINT/SIGTERM (in the main thread), or, with
    ``bounded``, until it has read the end offsets the topic had at start."""
    stop = stop or threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    ends = end_offsets(settings, settings.topic_feature_rows) if bounded else None
    writer = WriterService(settings)
    try:
        while not stop.is_set():
            if writer.poll() == 0 and ends is not None and writer.caught_up(ends):
                break
    finally:
        writer.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return writer.run
