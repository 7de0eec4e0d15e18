"""Simulated shoppers: tastes fitted from a real log, clicks by taste and position, a drift.

The model (stated in the README, "The live loop"):

* **Tastes.** Each simulated shopper is a user of the log. Their affinity for a category is the
  share of their events in it (clicks, carts, favourites and purchases count 1, 2, 2 and 4),
  smoothed by ``smoothing`` events spread evenly over their categories; users with fewer than
  ``min_events`` events are not simulated.
* **Candidates.** A request for a shopper holds ``candidates`` distinct items: half drawn from
  the shopper's categories (a category by affinity, then one of its items by popularity), the
  rest by popularity over the whole log.
* **Clicks.** The shopper sees the first ``shown`` items of the ranked list; the item at position
  ``p`` (from 0) is clicked with probability ``bias(p) * relevance``, where
  ``bias(p) = 1 / (1 + p) ** position_decay`` and ``relevance = floor + (1 - floor) * a / a_max``
  (``a``: the shopper's affinity for the item's category, ``a_max``: their largest). A clicked
  item is bought with probability ``purchase_rate * relevance``.
* **Drift.** After :meth:`ShopperModel.drift`, every shopper's affinities are rotated over the
  categories: the affinity they had for the category at rank ``r`` (by popularity) is now for
  the category at rank ``r + 1`` (wrapping round), so yesterday's favourite category is no longer
  what they click.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from connectors.events import Event

WEIGHTS = {"click": 1.0, "favourite": 2.0, "add_to_cart": 2.0, "purchase": 4.0}
"""How much each kind of event says about a shopper's taste."""


@dataclass(frozen=True)
class ClickModel:
    """The stated parameters of the shoppers' behaviour (see the module docstring)."""

    candidates: int = 30
    shown: int = 10
    position_decay: float = 1.0
    floor: float = 0.02
    purchase_rate: float = 0.1
    smoothing: float = 1.0
    min_events: int = 5

    def bias(self, position: int) -> float:
        """The chance a shopper looks at position ``position`` (from 0).

        >>> ClickModel().bias(0), ClickModel().bias(3)
        (1.0, 0.25)
        """
        return 1.0 / (1 + position) ** self.position_decay


def _cumulative(weights: Iterable[float]) -> list[float]:
    return list(itertools.accumulate(weights))


def _draw(values: Sequence[str], cumulative: Sequence[float], rng: random.Random) -> str:
    """One of ``values``, with chances in proportion to their weights (``cumulative``)."""
    i = bisect.bisect(cumulative, rng.random() * cumulative[-1])
    return values[min(i, len(values) - 1)]


@dataclass
class ShopperModel:
    """Tastes and a catalogue fitted from a log (:meth:`fit`); draws requests and reactions."""

    affinity: dict[str, dict[str, float]]
    """user -> category -> affinity (sums to 1 per user)."""
    item_category: dict[str, str]
    items_by_category: dict[str, list[str]]
    """category -> its items, most popular first."""
    popularity: dict[str, float]
    params: ClickModel = field(default_factory=ClickModel)
    rotation: int = 0
    """How many times tastes have drifted."""

    def __post_init__(self) -> None:
        self.users = sorted(self.affinity)
        self._items = sorted(self.popularity, key=lambda i: (-self.popularity[i], i))
        self._items_cum = _cumulative(self.popularity[i] for i in self._items)
        self._cat_cum = {c: _cumulative(self.popularity[i] for i in items)
                         for c, items in self.items_by_category.items()}
        by_size = Counter({c: sum(self.popularity[i] for i in items)
                           for c, items in self.items_by_category.items()})
        self._ranked = [c for c, _ in sorted(by_size.items(), key=lambda kv: (-kv[1], kv[0]))]
        self._rank = {c: r for r, c in enumerate(self._ranked)}

    @classmethod
    def fit(cls, events: Iterable[Event], params: ClickModel | None = None) -> ShopperModel:
        """Fit tastes and popularity from ``events`` (impressions and searches are ignored)."""
        params = params or ClickModel()
        counts: dict[str, Counter[str]] = defaultdict(Counter)
        popularity: Counter[str] = Counter()
        item_category: dict[str, str] = {}
        for e in events:
            weight = WEIGHTS.get(e.event_type)
            if weight is None or e.category_id is None:
                continue
            counts[e.user_id][e.category_id] += weight
            popularity[e.item_id] += weight
            item_category[e.item_id] = e.category_id
        affinity = {}
        for user, cats in counts.items():
            total = sum(cats.values())
            if total < params.min_events:
                continue
            spread = params.smoothing / len(cats)
            affinity[user] = {c: (n + spread) / (total + params.smoothing) for c, n in cats.items()}
        if not affinity:
            raise ValueError(f"no user with {params.min_events} or more weighted events to simulate")
        by_category: dict[str, list[str]] = defaultdict(list)
        for item in sorted(popularity, key=lambda i: (-popularity[i], i)):
            by_category[item_category[item]].append(item)
        return cls(affinity, item_category, dict(by_category), dict(popularity), params)

    def drift(self) -> None:
        """Rotate every shopper's tastes by one category (module docstring)."""
        self.rotation += 1

    def taste(self, user: str, category: str) -> float:
        """``user``'s affinity for ``category`` now (after any drift)."""
        rank = self._rank.get(category)
        if rank is None:
            return 0.0
        source = self._ranked[(rank - self.rotation) % len(self._ranked)]
        return self.affinity[user].get(source, 0.0)

    def relevance(self, user: str, category: str) -> float:
        """``floor + (1 - floor) * a / a_max`` for ``user`` and ``category``."""
        best = max(self.affinity[user].values())
        return self.params.floor + (1 - self.params.floor) * self.taste(user, category) / best

    def _favourites(self, user: str) -> tuple[list[str], list[float]]:
        cats = [self._ranked[(self._rank[c] + self.rotation) % len(self._ranked)]
                for c in self.affinity[user]]
        return cats, _cumulative(self.affinity[user].values())

    def candidates(self, user: str, rng: random.Random) -> list[str]:
        """A candidate list for ``user`` (module docstring), in no meaningful order."""
        n = min(self.params.candidates, len(self._items))
        chosen: dict[str, None] = {}
        cats, cum = self._favourites(user)
        for _ in range(4 * n):
            if len(chosen) >= n // 2:
                break
            cat = _draw(cats, cum, rng)
            chosen[_draw(self.items_by_category[cat], self._cat_cum[cat], rng)] = None
        while len(chosen) < n:
            chosen[_draw(self._items, self._items_cum, rng)] = None
        return list(chosen)

    def react(self, user: str, shown: Sequence[str],
              rng: random.Random) -> list[tuple[int, str, bool]]:
        """The shopper's clicks on ``shown`` (the ranked list, best first; only the first
        ``params.shown`` are seen): ``(position, item_id, bought)`` per clicked item."""
        reactions = []
        for position, item in enumerate(shown[: self.params.shown]):
            relevance = self.relevance(user, self.item_category[item])
            if rng.random() < self.params.bias(position) * relevance:
                bought = rng.random() < self.params.purchase_rate * relevance
                reactions.append((position, item, bought))
        return reactions
