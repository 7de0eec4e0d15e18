"""Which model version a scorer serves: follow the updates, guard quality, pin, roll back.

A :class:`ModelService` wraps a :class:`~models.follower.ModelFollower` (the newest version it
could apply in order, the *followed* one) and decides the *served* ``(version, model)`` pair
that every forward pass reads once (:meth:`ModelService.current`):

* pinned (:meth:`~ModelService.pin`, :meth:`~ModelService.rollback`): the pinned version,
  while the follower keeps following;
* else, when the quality guard holds (an update's online metrics report a rolling click AUC
  below ``guard_min_auc`` or a rolling click log loss above ``guard_max_logloss``): the last
  version that passed;
* else the followed version.

A version other than the followed or served one is rebuilt on demand from the snapshot store
(the newest snapshot at or below it) and the verified delta messages this service has seen
(the last ``scorer_history`` versions), so any recent version can be pinned. Swaps are one
assignment of an immutable pair: a batch never mixes versions.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch

from config import Settings
from connectors.snapshot_store import SnapshotStore
from models.delta import UpdateRejected, hmac_key, read_metadata
from models.follower import ModelFollower, Outcome, Status
from models.ranker import Ranker

Served = tuple[int, Ranker]
AUC_METRIC = "click_auc_rolling"
LOGLOSS_METRIC = "click_logloss_rolling"


class VersionUnavailable(LookupError):
    """A version that cannot be served (not in the snapshot store and the deltas kept)."""


@dataclass(frozen=True)
class ServiceStatus:
    """What a scorer serves and follows (the body of ``GET /status``)."""

    version: int
    followed_version: int
    latest_seen_version: int
    pinned: int | None
    guard_holding: bool
    guard_reason: str
    served_since_ms: int
    watermark_ms: int
    recent_swaps: list[tuple[int, int]]
    """The last swaps as (version, wall-clock ms it started serving), oldest first."""

    def as_dict(self) -> dict[str, object]:
        """JSON-ready fields."""
        return dict(self.__dict__)


class ModelService:
    """The served model of one scorer (see the module docstring); thread-safe."""

    def __init__(self, settings: Settings, device: str | torch.device = "cpu",
                 store: SnapshotStore | None = None,
                 wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000) -> None:
        self.settings = settings
        self.device = torch.device(device)
        self.store = store
        self._template = Ranker.from_settings(settings)
        self._key = hmac_key(settings)
        self.follower = ModelFollower(self._template, self._key, self.device)
        self._wall_ms = wall_ms
        self._lock = threading.RLock()
        self._served: Served = self.follower.served()
        self._last_good: Served | None = None
        self._pinned: Served | None = None
        self._deltas: dict[int, bytes] = {}
        self._served_log: deque[int] = deque(maxlen=64)
        self._swaps: deque[tuple[int, int]] = deque(maxlen=256)
        self.guard_holding = False
        self.guard_reason = ""
        self.latest_seen = 0
        self.served_since_ms = wall_ms()
        self._behind_since: float | None = None

    # --- reading -----------------------------------------------------------------------------
    def current(self) -> Served:
        """The served ``(version, model)``; use both from one call."""
        return self._served

    @property
    def version(self) -> int:
        """The served version (0 before the first snapshot)."""
        return self._served[0]

    def lag_seconds(self, now: float | None = None) -> float:
        """Seconds since a version newer than the served one was first seen (0 when none)."""
        if self._behind_since is None:
            return 0.0
        return (time.monotonic() if now is None else now) - self._behind_since

    def status(self) -> ServiceStatus:
        """The served, followed and pinned versions and the guard's state."""
        with self._lock:
            last = self.follower.last_update
            return ServiceStatus(
                version=self.version, followed_version=self.follower.version,
                latest_seen_version=max(self.latest_seen, self.follower.version),
                pinned=self._pinned[0] if self._pinned else None,
                guard_holding=self.guard_holding, guard_reason=self.guard_reason,
                served_since_ms=self.served_since_ms,
                watermark_ms=last.watermark_ms if last else 0, recent_swaps=list(self._swaps))

    # --- updates -------------------------------------------------------------------------------
    def bootstrap(self, snapshot: bytes) -> Outcome:
        """Follow a snapshot whatever the followed version (start-up, after a gap)."""
        with self._lock:
            return self._after(self.follower.bootstrap(snapshot), snapshot)

    def apply(self, message: bytes) -> Outcome:
        """Take the next ``model.deltas`` message (rules of :mod:`models.follower`)."""
        with self._lock:
            return self._after(self.follower.apply(message), message)

    def bootstrap_from_store(self) -> Outcome | None:
        """Bootstrap from the store's newest snapshot if it is newer than the followed
        version; None when it is not (then the next snapshot on the topic heals)."""
        if self.store is None:
            return None
        versions = self.store.versions()
        if not versions or versions[-1] <= self.follower.version:
            return None
        return self.bootstrap(self.store.get(versions[-1]))

    def _after(self, outcome: Outcome, data: bytes) -> Outcome:
        if outcome.message_version is not None and outcome.status != Status.REJECTED:
            self.latest_seen = max(self.latest_seen, outcome.message_version)
            if outcome.status in (Status.APPLIED, Status.IGNORED) and _kind(data) == "delta":
                self._keep_delta(outcome.message_version, data)
        if outcome.status == Status.APPLIED:
            self._select()
        if self.latest_seen > self.version:
            if self._behind_since is None:
                self._behind_since = time.monotonic()
        else:
            self._behind_since = None
        return outcome

    def _keep_delta(self, version: int, data: bytes) -> None:
        self._deltas[version] = data
        if len(self._deltas) > self.settings.scorer_history:
            for old in sorted(self._deltas)[:len(self._deltas) - self.settings.scorer_history]:
                del self._deltas[old]

    def _guard_failure(self) -> str:
        """Why the followed version fails the quality guard ('' when it passes)."""
        last = self.follower.last_update
        metrics = last.metrics if last else {}
        auc, loss = metrics.get(AUC_METRIC), metrics.get(LOGLOSS_METRIC)
        low, high = self.settings.guard_min_auc, self.settings.guard_max_logloss
        if low is not None and auc is not None and auc < low:
            return f"{AUC_METRIC} {auc:.4f} < {low}"
        if high is not None and loss is not None and loss > high:
            return f"{LOGLOSS_METRIC} {loss:.4f} > {high}"
        return ""

    def _select(self) -> None:
        """Choose the served pair after the followed version or a pin changed."""
        followed = self.follower.served()
        self.guard_reason = self._guard_failure()
        self.guard_holding = bool(self.guard_reason) and self._last_good is not None
        if not self.guard_reason:
            self._last_good = followed
        if self._pinned is not None:
            self._serve(self._pinned)
        elif self.guard_holding and self._last_good is not None:
            self._serve(self._last_good)
        else:
            self._serve(followed)

    def _serve(self, pair: Served) -> None:
        if pair is self._served:
            return
        if pair[0] != self._served[0]:
            self._served_log.append(self._served[0])
        self._served = pair
        self.served_since_ms = self._wall_ms()
        self._swaps.append((pair[0], self.served_since_ms))

    # --- operators' controls -------------------------------------------------------------------
    def pin(self, version: int) -> Served:
        """Serve ``version`` until :meth:`unpin` (raises :class:`VersionUnavailable`)."""
        with self._lock:
            self._pinned = self.build(version)
            self._select()
            return self._served

    def unpin(self) -> Served:
        """Serve the followed version again (or the guard's last good one)."""
        with self._lock:
            self._pinned = None
            self._select()
            return self._served

    def rollback(self) -> Served:
        """Pin the version served before the one served now."""
        with self._lock:
            current = self.version
            earlier = [v for v in self._served_log if 0 < v < current]
            if not earlier:
                raise VersionUnavailable(f"no version was served before {current}")
            return self.pin(earlier[-1])

    def build(self, version: int) -> Served:
        """The model of ``version``: one held now, or rebuilt from a snapshot of the store
        plus the deltas kept (raises :class:`VersionUnavailable`)."""
        with self._lock:
            for pair in (self._served, self.follower.served(), self._last_good, self._pinned):
                if pair is not None and pair[0] == version:
                    return pair
            snapshots = [v for v in (self.store.versions() if self.store else []) if v <= version]
            if not snapshots:
                raise VersionUnavailable(f"no snapshot at or below version {version} in the store")
            base = snapshots[-1]
            needed = range(base + 1, version + 1)  # not listed: any version may be asked for
            if len(needed) > len(self._deltas) or not all(v in self._deltas for v in needed):
                raise VersionUnavailable(
                    f"version {version} needs the deltas {base + 1}..{version} on snapshot "
                    f"{base}; this scorer holds {len(self._deltas)} versions of deltas")
            rebuild = ModelFollower(self._template, self._key, self.device)
            outcome = rebuild.bootstrap(self.store.get(base))  # type: ignore[union-attr]
            for v in range(base + 1, version + 1):
                if outcome.status != Status.APPLIED:
                    break
                outcome = rebuild.apply(self._deltas[v])
            if outcome.status != Status.APPLIED or rebuild.version != version:
                raise VersionUnavailable(f"rebuilding version {version} failed: {outcome.reason}")
            return rebuild.served()


def _kind(data: bytes) -> str:
    try:
        return read_metadata(data).get("kind", "")
    except UpdateRejected:
        return ""
