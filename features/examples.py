"""Training examples from a time-ordered event stream (the pure form of the examples job).

Per event, in order: duplicates and late events are dropped (see :mod:`features.labels`); an
impression's dense features are read from the per-user, per-item and per-(user, category)
state of :mod:`features.state` *before* the impression is applied, at its event time, so they
never include the click (or anything later) that labels it; the event is then applied to the
state; and the impression goes to the :class:`~features.labels.LabelJoiner`, which yields the
finished examples. State idle longer than ``settings.feature_state_ttl_ms`` of event time is
dropped (swept once per hour of event time).

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

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from connectors.events import Event
from connectors.examples import TrainingExample
from features.labels import LabelJoiner
from features.state import (
    HOUR_MS,
    ItemState,
    UserCategoryState,
    UserState,
    apply_item,
    apply_user,
    apply_user_category,
    item_features,
    user_category_features,
    user_features,
)
from streamrank.config import Settings


K = TypeVar("K")
_NO_USER, _NO_ITEM, _NO_USER_CATEGORY = UserState(), ItemState(), UserCategoryState()
"""The (immutable) state of a key with no history."""


@dataclass
class StateCounters:
    """Events applied to feature state, and keyed state dropped by the TTL."""

    events: int = 0
    evicted_keys: int = 0


class ExampleBuilder:
    """Keeps the feature state and the label join over one event stream."""

    def __init__(self, settings: Settings) -> None:
        self.joiner = LabelJoiner(settings)
        self.state = StateCounters()
        self._ttl = settings.feature_state_ttl_ms
        self._users: dict[str, UserState] = {}
        self._items: dict[str, ItemState] = {}
        self._user_categories: dict[tuple[str, str | None], UserCategoryState] = {}
        self._latest = 0
        self._next_sweep: int | None = None

    def features(self, user: str, item: str, category: str | None, t: int) -> dict[str, float]:
        """The dense features of showing ``item`` to ``user`` at ``t``, keyed (and ordered) as
        DENSE_FEATURES."""
        u = self._users.get(user, _NO_USER)
        features = user_features(u, t)
        features.update(item_features(self._items.get(item, _NO_ITEM), t))
        uc = self._user_categories.get((user, category), _NO_USER_CATEGORY)
        features.update(user_category_features(uc, u, category, t))
        return features

    def add(self, event: Event) -> list[TrainingExample]:
        """Take one event; return the examples it finished."""
        if self.joiner.rejects(event) is not None:
            return self.joiner.add(event)
        kind, t = event.event_type, event.event_time
        user, item, category = event.user_id, event.item_id, event.category_id
        features = self.features(user, item, category, t) if kind == "impression" else None
        self._users[user] = apply_user(self._users.get(user, _NO_USER), kind, t, item, category)
        self._items[item] = apply_item(self._items.get(item, _NO_ITEM), kind, t)
        if category is not None:
            key = (user, category)
            self._user_categories[key] = apply_user_category(
                self._user_categories.get(key, _NO_USER_CATEGORY), kind, t)
        self.state.events += 1
        self._sweep(t)
        return self.joiner.add(event, features)

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
        self.state.evicted_keys += (_evict(self._users, cutoff) + _evict(self._items, cutoff)
                                    + _evict(self._user_categories, cutoff))


def _evict(table: dict[K, UserState] | dict[K, ItemState] | dict[K, UserCategoryState],
           cutoff: int) -> int:
    """Drop the keys last seen before ``cutoff``; return how many."""
    stale = [k for k, s in table.items() if s.last_ms is not None and s.last_ms < cutoff]
    for k in stale:
        del table[k]
    return len(stale)


def build_examples(events: Iterable[Event], settings: Settings) -> Iterator[TrainingExample]:
    """The training examples of a time-ordered event stream (see the module docstring)."""
    return ExampleBuilder(settings).run(events)
