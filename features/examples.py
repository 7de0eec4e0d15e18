"""Training examples from a time-ordered event stream (the pure form of the examples job).

Per event, in order: duplicates and late events are dropped (see :mod:`features.labels`); an
impression's dense features are read from the per-user, per-item and per-(user, category)
state of :mod:`features.state` *before* the impression is applied (for the item: its events of
earlier milliseconds, see :class:`ItemTimeline`), at its event time, so they never include the
click (or anything later) that labels it; the event is then applied to the state (unless it is
a synthetic impression, see :func:`features.rows.feeds_state`); and the impression goes to the
:class:`~features.labels.LabelJoiner`, which yields the finished examples. State idle longer
than ``settings.feature_state_ttl_ms`` of event time is dropped (swept once per hour of event
time).

>>> from connectors.events import Event
>>> from streamrank.config import Settings
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

from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from operator import itemgetter
from typing import TypeVar

from connectors.events import Event
from connectors.examples import TrainingExample
from features.labels import LabelJoiner
from features.model_input import model_features
from features.rows import feeds_state
from features.state import (
    HOUR_MS,
    ItemState,
    UserCategoryState,
    UserState,
    apply_item,
    apply_user,
    apply_user_category,
)
from streamrank.config import Settings


K = TypeVar("K")
_NO_USER, _NO_ITEM, _NO_USER_CATEGORY = UserState(), ItemState(), UserCategoryState()
"""The (immutable) state of a key with no history."""
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
    once the watermark passes them; see :mod:`features.state`).

    Versions older than ``keep_ms`` before an item's latest one are dropped but the newest of
    them, kept as the base: a read earlier than that window sees the base.

    >>> tl = ItemTimeline(keep_ms=5_000)
    >>> tl.apply("a", "click", 2_000)
    >>> tl.apply("a", "click", 1_000)  # out of order: counted in the 2_000 version too
    >>> [round(tl.before("a", t).clicks_24h.read(t), 3) for t in (1_000, 1_500, 2_001)]
    [0.0, 1.0, 2.0]
    """

    def __init__(self, keep_ms: int) -> None:
        self._keep = keep_ms
        self._versions: dict[str, list[tuple[int, ItemState]]] = {}

    def before(self, item: str, t: int) -> ItemState:
        """The item's state after its events earlier than ``t``."""
        versions = self._versions.get(item)
        if not versions:
            return _NO_ITEM
        i = bisect_left(versions, t, key=itemgetter(0))
        return versions[i - 1][1] if i else _NO_ITEM

    def apply(self, item: str, event_type: str, t: int) -> None:
        """Apply one event about ``item`` at ``t`` to every version from ``t`` on."""
        versions = self._versions.setdefault(item, [])
        i = bisect_left(versions, t, key=itemgetter(0))
        if i == len(versions) or versions[i][0] != t:
            versions.insert(i, (t, versions[i - 1][1] if i else _NO_ITEM))
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

    def __init__(self, settings: Settings) -> None:
        self.joiner = LabelJoiner(settings)
        self.state = StateCounters()
        self._ttl = settings.feature_state_ttl_ms
        self._users: dict[str, UserState] = {}
        self._items = ItemTimeline(settings.max_out_of_orderness_ms)
        self._user_categories: dict[tuple[str, str | None], UserCategoryState] = {}
        self._latest = 0
        self._next_sweep: int | None = None

    def features(self, user: str, item: str, category: str | None, t: int) -> dict[str, float]:
        """The dense features of showing ``item`` to ``user`` at ``t``, keyed (and ordered) as
        DENSE_FEATURES."""
        return model_features(self._users.get(user, _NO_USER), self._items.before(item, t),
                              self._user_categories.get((user, category), _NO_USER_CATEGORY),
                              category, t)

    def add(self, event: Event) -> list[TrainingExample]:
        """Take one event; return the examples it finished."""
        if self.joiner.rejects(event) is not None:
            return self.joiner.add(event)
        features = None
        if event.event_type == "impression":
            features = self.features(event.user_id, event.item_id, event.category_id,
                                     event.event_time)
        if feeds_state(event):
            self._apply(event)
        return self.joiner.add(event, features)

    def _apply(self, event: Event) -> None:
        kind, t = event.event_type, event.event_time
        user, item, category = event.user_id, event.item_id, event.category_id
        self._users[user] = apply_user(self._users.get(user, _NO_USER), kind, t, item, category)
        self._items.apply(item, kind, t)
        if category is not None:
            key = (user, category)
            self._user_categories[key] = apply_user_category(
                self._user_categories.get(key, _NO_USER_CATEGORY), kind, t)
        self.state.events += 1
        self._sweep(t)

    def flush(self) -> list[TrainingExample]:
        """End of stream: every impression still waiting, labelled with what arrived."""
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

    def _sweep(self, t: int) -> None:
        self._latest = max(self._latest, t)
        if self._next_sweep is None:
            self._next_sweep = self._latest + HOUR_MS
        if self._latest < self._next_sweep:
            return
        self._next_sweep = self._latest + HOUR_MS
        cutoff = self._latest - self._ttl
        self.state.evicted_keys += (_evict(self._users, cutoff) + self._items.evict(cutoff)
                                    + _evict(self._user_categories, cutoff))


def _evict(table: dict[K, UserState] | dict[K, UserCategoryState], cutoff: int) -> int:
    """Drop the keys last seen before ``cutoff``; return how many."""
    stale = [k for k, s in table.items() if s.last_ms is not None and s.last_ms < cutoff]
    for k in stale:
        del table[k]
    return len(stale)


def build_examples(events: Iterable[Event], settings: Settings) -> Iterator[TrainingExample]:
    """The training examples of a time-ordered event stream (see the module docstring)."""
    return ExampleBuilder(settings).run(events)
