"""The scorer's background follower: snapshot store, then ``model.deltas``, in one thread.

Start-up: the newest snapshot of the snapshot store, then every message of ``model.deltas``
from the earliest offset (own consumer group, so every scorer sees every update; messages at
or below the followed version are ignored). Per message, :meth:`ModelService.apply`, in a
moment with no request in flight if one comes within ``swap_wait_ms`` (:mod:`.quiet`); on a gap
the store's newest snapshot is taken if it is newer than the followed version, otherwise the
scorer keeps its last good version until the next snapshot on the topic. A rejected update
(bad checksum, bad or missing signature, malformed) is counted by reason and skipped.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence

from config import Settings
from connectors.model_updates import ModelUpdateSubscriber
from models.delta import UpdateRejected, read_metadata
from models.follower import Outcome, Status
from models.scorer.service import ModelService

log = logging.getLogger(__name__)
POLL_S = 0.25
"""How long one poll of ``model.deltas`` waits for a first record (a record is taken as soon as
it arrives; this bounds how long :meth:`Reloader.stop` waits)."""


class Reloader(threading.Thread):
    """Follows the updates into ``service`` until :meth:`stop`; ``on_outcome(kind, outcome)``
    sees every outcome (for metrics)."""

    def __init__(self, settings: Settings, service: ModelService,
                 on_outcome: Callable[[str, Outcome], None] = lambda kind, outcome: None,
                 wait_quiet: Callable[[float], bool] = lambda timeout_s: True) -> None:
        super().__init__(name="model-reloader", daemon=True)
        self.settings = settings
        self.service = service
        self.on_outcome = on_outcome
        self.wait_quiet = wait_quiet
        """Blocks until no request is in flight or the timeout passed
        (:meth:`models.scorer.quiet.InFlight.wait_quiet`; default: never blocks)."""
        self._halt = threading.Event()
        self.ready = threading.Event()
        """Set once the store's snapshot (if any) was taken and the consumer subscribed."""
        self.error: BaseException | None = None

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ask the thread to finish and wait for it."""
        self._halt.set()
        if self.is_alive():
            self.join(timeout_s)

    def run(self) -> None:
        try:
            self._from_store()
            with ModelUpdateSubscriber(
                    self.settings, group_id=f"streamrank-scorer-{uuid.uuid4().hex[:12]}",
                    **{"fetch.wait.max.ms": 50}) as subscriber:
                self.ready.set()
                while not self._halt.is_set():
                    self.handle_quietly(subscriber.poll(timeout_s=POLL_S))
        except BaseException as err:  # noqa: BLE001 - kept for /healthz and the log
            self.error = err
            self.ready.set()
            log.exception("model reloader stopped")

    def _from_store(self) -> None:
        outcome = self.service.bootstrap_from_store()
        if outcome is not None:
            self.on_outcome("bootstrap", outcome)

    def handle_quietly(self, messages: Sequence[bytes]) -> list[Outcome]:
        """:meth:`handle` each of one poll's updates when no request is in flight, waiting
        for that at most ``swap_wait_ms`` for all of them together."""
        deadline = time.monotonic() + self.settings.swap_wait_ms / 1000.0
        outcomes = []
        for message in messages:
            self.wait_quiet(max(0.0, deadline - time.monotonic()))
            outcomes.append(self.handle(message))
        return outcomes

    def handle(self, message: bytes) -> Outcome:
        """Apply one whole update (also the entry point for tests and benchmarks)."""
        outcome = self.service.apply(message)
        self.on_outcome(_kind(message), outcome)
        if outcome.status == Status.NEEDS_BOOTSTRAP:
            healed = self.service.bootstrap_from_store()
            if healed is not None:
                self.on_outcome("bootstrap", healed)
        return outcome


def _kind(message: bytes) -> str:
    try:
        return read_metadata(message).get("kind", "unknown")
    except UpdateRejected:
        return "unknown"
