"""The training loop: de-duplication, batching, progressive validation and when to publish.

The one loop that the training job (:mod:`jobs.training_job`), ``evaluate``
(:mod:`models.evaluate`) and the benchmarks run:

* :meth:`TrainingLoop.add` takes examples as they arrive (any number at a time): an example
  whose ``example_id`` is among the last ``settings.dedup_window_examples`` accepted is dropped
  and counted (:class:`RecentIds`); the rest are buffered, and every full batch of
  ``settings.batch_size`` goes through :meth:`progressive`;
* :meth:`progressive` scores one batch, updates the online metrics and learns from it
  (:meth:`~models.trainer.OnlineTrainer.progressive`), then asks the publisher, when there is
  one, whether a version is due (:meth:`~models.versions.VersionCutter.maybe_publish`);
* :meth:`tick` (a timer, when the input goes quiet) learns a partial batch and publishes what
  is due; :meth:`close` learns what is buffered and cuts a final version if anything was
  learned since the last one.

Every method returns the encoded model-update messages to send, in order.

Why de-duplicate here, with bounded state: the features job's examples sink is at-least-once,
so a restored features job sends again the examples it emitted after its last checkpoint.
Those copies follow their originals on the topic within about one checkpoint interval of the
job's output, so remembering the last N example IDs (a FIFO of their hashes, N =
``dedup_window_examples``, about 70 bytes each) drops them all without state that grows with
the stream; an exactly-once (transactional) sink would make examples visible only at each
checkpoint instead, delaying every example by up to one interval.

>>> from connectors.training_examples import TrainingExample
>>> from config import Settings
>>> from models.trainer import OnlineTrainer
>>> settings = Settings(hash_buckets=101, embedding_dim=4, batch_size=2)
>>> loop = TrainingLoop(OnlineTrainer(settings), settings)
>>> x = [TrainingExample(example_id=str(i % 3), user_id="u", item_id="i", event_time=i,
...                      click=i % 2, purchase=0, features={}) for i in range(4)]
>>> loop.add(x)  # ids 0, 1, 2, 0: the second "0" is a duplicate
[]
>>> loop.trainer.examples_seen, len(loop.buffer), loop.duplicates
(2, 1, 1)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence

import numpy as np

from config import TrainerSettings
from connectors.training_examples import TrainingExample
from models.trainer import OnlineTrainer
from models.versions import VersionCutter


class RecentIds:
    """The last ``capacity`` distinct keys seen (FIFO), by their 64-bit hash.

    >>> ids = RecentIds(capacity=2)
    >>> [ids.add(k) for k in ("a", "b", "a", "c", "a")]
    [True, True, False, True, True]
    """

    def __init__(self, capacity: int) -> None:
        assert capacity > 0, f"capacity must be positive, got {capacity}"
        self.capacity = capacity
        self._set: set[int] = set()
        self._order: deque[int] = deque()

    def add(self, key: str) -> bool:
        """Remember ``key``; False when it is already among the last ``capacity``."""
        h = hash(key)
        if h in self._set:
            return False
        self._set.add(h)
        self._order.append(h)
        if len(self._order) > self.capacity:
            self._set.discard(self._order.popleft())
        return True

    def __len__(self) -> int:
        return len(self._order)


class TrainingLoop:
    """Feeds a trainer in batches and cuts versions (see the module docstring).

    ``publisher`` is optional (``evaluate`` publishes nothing). Attributes: ``trainer``,
    ``publisher``, ``buffer`` (examples waiting for a full batch), ``duplicates`` (dropped).
    """

    def __init__(self, trainer: OnlineTrainer, settings: TrainerSettings,
                 publisher: VersionCutter | None = None) -> None:
        self.trainer = trainer
        self.publisher = publisher
        self.batch_size = settings.batch_size
        self.buffer: list[TrainingExample] = []
        self.duplicates = 0
        self._ids = RecentIds(settings.dedup_window_examples)
        self._learned_at_cut = trainer.examples_seen

    def add(self, examples: Iterable[TrainingExample]) -> list[bytes]:
        """Take examples as they arrive; learn every full batch; the messages to send."""
        out: list[bytes] = []
        for x in examples:
            if not self._ids.add(x.example_id):
                self.duplicates += 1
                continue
            self.buffer.append(x)
            if len(self.buffer) >= self.batch_size:
                batch, self.buffer = self.buffer, []
                out += self._learn(batch)
        return out

    def progressive(self, batch: Sequence[TrainingExample]) -> tuple[np.ndarray, list[bytes]]:
        """Score, measure and learn one batch (no de-duplication): its ``B X 2`` scores, made
        before learning, and the messages of a version that fell due."""
        scores = self.trainer.progressive(batch)
        return scores, self._due()

    def tick(self) -> list[bytes]:
        """Learn a partial batch, if any, and publish what is due."""
        if self.buffer:
            batch, self.buffer = self.buffer, []
            return self._learn(batch)
        return self._due()

    def close(self) -> list[bytes]:
        """Learn what is buffered; a final version if anything was learned since the last."""
        out = self.tick()
        if self.publisher is not None and self.trainer.examples_seen > self._learned_at_cut:
            out += self._cut(self.publisher.publish())
        return out

    def _learn(self, batch: Sequence[TrainingExample]) -> list[bytes]:
        return self.progressive(batch)[1]

    def _due(self) -> list[bytes]:
        if self.publisher is None:
            return []
        return self._cut(self.publisher.maybe_publish())

    def _cut(self, messages: list[bytes]) -> list[bytes]:
        if messages:
            self._learned_at_cut = self.trainer.examples_seen
        return messages
