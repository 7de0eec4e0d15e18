"""Cutting model versions from a running trainer: deltas, periodic snapshots, restarts.

Rules (``settings``):

* A version is cut every ``delta_interval_s`` seconds or every ``delta_interval_examples``
  learned examples, whichever comes first (and only when something was learned since the last).
* Version ``v`` is a delta on ``v - 1``: the embedding rows touched since ``v - 1`` and, when
  ``v`` is a multiple of ``dense_every`` and the dense tensors changed, the dense tensors. With
  ``dense_every > 1`` a follower's dense tensors are those of the last version that carried
  them; every snapshot carries them.
* A full snapshot every ``snapshot_every`` versions, and always as the first version of a
  publisher (fresh or resumed). Snapshots also go to the snapshot store, with the trainer's
  checkpoint (optimiser state, ``torch.save`` format; local trusted storage, never the wire).
* Versions only go up, also across restarts: every version is recorded in the store as
  published *before* its bytes are handed out, and :meth:`VersionCutter.resume` continues
  after the highest recorded one. A crash between recording and sending skips a number; a
  number is never reused for other weights.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from config import TrainerSettings
from connectors.snapshot_store import SnapshotStore
from models.delta import (
    ModelUpdate,
    decode_message,
    delta_tensors,
    encode_delta,
    hmac_key,
    snapshot_tensors,
)
from models.trainer import OnlineTrainer


class VersionCutter:
    """Decides when to cut a version of ``trainer`` and encodes it (see the module docstring).

    ``version`` is the last version cut (0 before any). ``clock`` (seconds, monotonic) is
    injectable for tests.
    """

    def __init__(self, trainer: OnlineTrainer, settings: TrainerSettings,
                 store: SnapshotStore | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.trainer = trainer
        self.settings = settings
        self.store = store
        self.version = 0
        self._clock = clock
        self._key = hmac_key(settings)
        self._snapshot_next = True
        self._cut_at = clock()
        self._examples_at_cut = trainer.examples_seen

    def resume(self, store: SnapshotStore) -> int:
        """Load the latest snapshot (and its checkpoint) from ``store`` into the trainer.

        Returns the snapshot's version (0 if the store has none, leaving the trainer as it
        is). The next version is a full snapshot numbered after the highest ever published.
        """
        self.store = store
        latest = store.latest()
        loaded = 0
        if latest is not None:
            loaded, data = latest
            update = decode_message(data, self._key)
            checkpoint = store.checkpoint(loaded)
            self.trainer.restore(update.tensors, checkpoint)
            if checkpoint is None:
                self.trainer.examples_seen = update.examples
                self.trainer.watermark_ms = update.watermark_ms
        self.version = max(store.published_version(), loaded)
        self._snapshot_next = True
        self._cut_at = self._clock()
        self._examples_at_cut = self.trainer.examples_seen
        return loaded

    def due(self) -> bool:
        """Whether a version should be cut now."""
        learned = self.trainer.examples_seen - self._examples_at_cut
        return learned > 0 and (learned >= self.settings.delta_interval_examples
                                or self._clock() - self._cut_at >= self.settings.delta_interval_s)

    def maybe_publish(self) -> list[bytes]:
        """:meth:`publish` when :meth:`due`, else nothing."""
        return self.publish() if self.due() else []

    def publish(self) -> list[bytes]:
        """Cut the next version now; returns its encoded message(s) to send, in order."""
        version = self.version + 1
        snapshot = self._snapshot_next or version % self.settings.snapshot_every == 0
        rows = self.trainer.take_touched_rows()
        state = self.trainer.model.state_dict()
        with_dense = snapshot or (self.trainer.dense_changed
                                  and version % self.settings.dense_every == 0)
        tensors = snapshot_tensors(state) if snapshot else delta_tensors(state, rows, with_dense)
        if with_dense:
            self.trainer.dense_published()
        data = encode_delta(ModelUpdate(
            model_id=self.settings.model_id, kind="snapshot" if snapshot else "delta",
            version=version, base_version=self.version, watermark_ms=self.trainer.watermark_ms,
            examples=self.trainer.examples_seen, metrics=self.trainer.metrics(), tensors=tensors,
        ), self._key)
        if self.store is not None:
            if snapshot:
                self.store.put(version, data)
                self.store.put_checkpoint(version, self.trainer.checkpoint())
            self.store.mark_published(version)
        self.version = version
        self._snapshot_next = False
        self._cut_at = self._clock()
        self._examples_at_cut = self.trainer.examples_seen
        return [data]
