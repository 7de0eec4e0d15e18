"""The pure reference of the features job: one time-ordered event stream in, the Feast rows and
the training examples out (also how ``evaluate`` builds its examples).

Per event, in arrival order: duplicates and late events are dropped before they touch any
state (see :mod:`features.labels`); the event is applied to the per-key state of
:mod:`features.state` in arrival order (:class:`~features.rows.FeatureComputer`), whose rows
are what the online store receives (unless it is a synthetic impression, see
:func:`features.rows.feeds_state`); and it goes to the :class:`~features.labels.LabelJoiner`,
which yields the finished examples.

An impression's dense features are those *as of* the impression, at its event time, so they
never include the click (or anything later) that labels it: the user's and user x category's
state before the impression, in the user's own order; the item's state after all of its
events of *earlier milliseconds* (:class:`ItemTimeline`), read once the watermark has passed
the impression's time plus the allowed lateness, when no event of an earlier millisecond can
still be accepted. So the examples do not depend on how the stream interleaves keys, only on
the events accepted and each user's order: what lets a parallel job (keyed stages on Flink's
watermark) produce exactly these.

State expires in event time (:func:`features.state.alive`); keys that no acceptable event could
see any more are freed once per hour of event time.

>>> from connectors.events import Event
>>> from config import Settings
>>> def ev(i, kind, t, request):
...     return Event(event_id=str(i), event_type=kind, user_id="u", item_id="a",
...                  category_id="c", event_time=t, request_id=request)
>>> log = [ev(1, "impression", 1_000, "r1"), ev(2, "click", 2_000, "r1"),
...        ev(3, "impression", 3_000, "r2")]
>>> first, second = build_examples(log, Settings())
>>> first.click, first.features["u_clicks_24h"]
(1, 0.0)
>>> second.click, round(second.features["u_clicks_24h"], 3)
(0, 1.0)
"""

from __future__ import annotations

import heapq
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from operator import itemgetter

from config import FeatureSettings
from connectors.events import Event
from connectors.training_examples import TrainingExample
from features.labels import NO_RECENT, LabelJoiner, Recent
from features.rows import FeatureComputer, FeatureRow, feeds_state
from features.state import (
    HOUR_MS,
    ItemState,
    UserCategoryState,
    UserState,
    alive,
    apply_item,
    item_features,
    user_category_features,
    user_features,
)

_NO_USER, _NO_ITEM, _NO_USER_CATEGORY = UserState(), ItemState(), UserCategoryState()
"""The (immutable) states of keys with no history."""
UserSide = tuple[dict[str, float], dict[str, float]]
"""An impression's user and user x category features (:data:`~features.schema.USER_FEATURES`,
:data:`~features.schema.USER_CATEGORY_FEATURES`)."""
_BASE_MS = -1
"""The time of an item's base version (see :class:`ItemTimeline`): before any event."""


@dataclass
class StateCounters:
    """Events applied to feature state, and keyed state dropped by the TTL."""

    events: int = 0
    evicted_keys: int = 0


class ItemTimeline:
    """Each item's state after each of its recent milliseconds, so that an impression at ``t``
    reads the item as of its events *before* ``t`` even when the stream brings some of the
    item's later events first (the streaming job applies an item's events in event-time order
    once the watermark passes them plus the allowed lateness; see :mod:`features.state`).

    Versions older than ``keep_ms`` before an item's latest one are dropped but the newest of
    them, kept as the base: a read earlier than that window sees the base. An event applied to
    a version whose state expired at its time (``ttl_ms``) starts from a fresh state.

    >>> tl = ItemTimeline(keep_ms=5_000, ttl_ms=HOUR_MS)
    >>> tl.apply("a", "click", 2_000)
    >>> tl.apply("a", "click", 1_000)  # out of order: counted in the 2_000 version too
    >>> [round(tl.before("a", t).clicks_24h.read(t), 3) for t in (1_000, 1_500, 2_001)]
    [0.0, 1.0, 2.0]
    """

    def __init__(self, keep_ms: int, ttl_ms: int) -> None:
        self._keep = keep_ms
        self._ttl = ttl_ms
        self._versions: dict[str, list[tuple[int, ItemState]]] = {}

    def before(self, item: str, t: int) -> ItemState:
        """The item's state after its events earlier than ``t``, as seen at ``t``."""
        versions = self._versions.get(item)
        if not versions:
            return _NO_ITEM
        i = bisect_left(versions, t, key=itemgetter(0))
        return (alive(versions[i - 1][1], t, self._ttl) or _NO_ITEM) if i else _NO_ITEM

    def apply(self, item: str, event_type: str, t: int) -> None:
        """Apply one event about ``item`` at ``t`` to every version from ``t`` on."""
        versions = self._versions.setdefault(item, [])
        i = bisect_left(versions, t, key=itemgetter(0))
        if i == len(versions) or versions[i][0] != t:
            versions.insert(i, (t, self.before(item, t)))
        for j in range(i, len(versions)):
            ms, state = versions[j]
            versions[j] = (ms, apply_item(state, event_type, t))
        cutoff = versions[-1][0] - self._keep
        if len(versions) > 1 and versions[1][0] < cutoff:
            while len(versions) > 1 and versions[1][0] < cutoff:
                del versions[0]
            versions[0] = (_BASE_MS, versions[0][1])

    def evict(self, cutoff: int) -> int:
        """Drop the items last seen before ``cutoff``; return how many."""
        stale = [k for k, v in self._versions.items() if v[-1][0] < cutoff]
        for k in stale:
            del self._versions[k]
        return len(stale)


class ExampleBuilder:
    """Keeps the feature state and the label join over one event stream."""

    def __init__(self, settings: FeatureSettings) -> None:
        self.joiner = LabelJoiner(settings)
        self.state = StateCounters()
        self._ttl = settings.feature_state_ttl_ms
        self._lateness = settings.allowed_lateness_ms
        self._lag = settings.max_out_of_orderness_ms
        self.computer = FeatureComputer(self._ttl)
        self._items = ItemTimeline(self._lateness + self._lag, self._ttl)
        self._waiting: list[tuple[int, int, str, dict[str, float], UserSide]] = []
        """Impressions waiting for their item features: (time, seq, item, the features to
        complete, their user side)."""
        self._seq = 0
        self._latest = 0
        self._next_sweep: int | None = None

    def user_side(self, user: str, category: str | None, t: int) -> dict[str, float]:
        """The user and user x category features of an impression at ``t`` (state before it)."""
        u, uc = self._user_side(self._user(user, t), user, category, t)
        return u | uc

    def recent(self, user: str, t: int) -> Recent:
        """The user's last clicked items and categories at ``t`` (state before an impression
        at ``t``), newest first."""
        u = self._user(user, t)
        return u.last_items, u.last_categories

    def add(self, event: Event) -> list[TrainingExample]:
        """Take one event; return the examples it finished."""
        return self._take(event, rows=False)[1]

    def step(self, event: Event) -> tuple[list[FeatureRow], list[TrainingExample]]:
        """Take one event; return the feature rows it changed and the examples it finished."""
        return self._take(event, rows=True)

    def _take(self, event: Event, rows: bool) -> tuple[list[FeatureRow], list[TrainingExample]]:
        if self.joiner.drop(event):
            return [], []
        t = event.event_time
        self._fill(max(self.joiner.watermark, t - self._lag))
        features: dict[str, float] | None = None
        recent = NO_RECENT
        if event.event_type == "impression":
            features = {}  # completed by _fill once the item's side can be read
            user = self._user(event.user_id, t)
            recent = user.last_items, user.last_categories
            self._seq += 1
            heapq.heappush(self._waiting, (
                t, self._seq, event.item_id, features,
                self._user_side(user, event.user_id, event.category_id, t)))
        changed: list[FeatureRow] = []
        if feeds_state(event):
            if rows:
                changed = self.computer.apply(event)
            else:
                self.computer.update(event)
            self._items.apply(event.item_id, event.event_type, t)
            self.state.events += 1
            self._sweep(t)
        return changed, self.joiner.accept(event, features, recent)

    def flush(self) -> list[TrainingExample]:
        """End of stream: every impression still waiting, labelled with what arrived."""
        self._fill(None)
        return self.joiner.flush()

    def run(self, events: Iterable[Event]) -> Iterator[TrainingExample]:
        """Every example of ``events``, in impression-time order."""
        for event in events:
            yield from self.add(event)
        yield from self.flush()

    def counters(self) -> dict[str, int]:
        """The join's and the state's counters by name."""
        return self.joiner.counters.as_dict() | {
            "state_events": self.state.events, "evicted_keys": self.state.evicted_keys}

    def _fill(self, watermark: int | None) -> None:
        """Complete the features of the impressions the watermark has passed by the lateness
        (all of them at the end of the stream): no event of an earlier millisecond can come."""
        waiting = self._waiting
        while waiting and (watermark is None or waiting[0][0] + self._lateness < watermark):
            t, _, item, features, (user, user_category) = heapq.heappop(waiting)
            features.update(user)  # DENSE_FEATURES order: user, item, user x category
            features.update(item_features(self._items.before(item, t), t))
            features.update(user_category)

    def _user(self, user: str, t: int) -> UserState:
        return alive(self.computer.users.get(user), t, self._ttl) or _NO_USER

    def _user_side(self, u: UserState, user: str, category: str | None, t: int) -> UserSide:
        uc = (alive(self.computer.user_categories.get((user, category)), t, self._ttl)
              if category is not None else None)
        return user_features(u, t), user_category_features(uc or _NO_USER_CATEGORY, u, category, t)

    def _sweep(self, t: int) -> None:
        self._latest = max(self._latest, t)
        if self._next_sweep is None:
            self._next_sweep = self._latest + HOUR_MS
        if self._latest < self._next_sweep:
            return
        self._next_sweep = self._latest + HOUR_MS
        # no event that can still be accepted (t >= watermark - lateness) sees these states
        cutoff = self._latest - self._lag - self._lateness - self._ttl
        self.state.evicted_keys += self.computer.evict(cutoff) + self._items.evict(cutoff)


def build_examples(events: Iterable[Event], settings: FeatureSettings) -> Iterator[TrainingExample]:
    """The training examples of a time-ordered event stream (see the module docstring)."""
    return ExampleBuilder(settings).run(events)
