"""Per-key feature state and the pure functions that update and read it.

Definitions (also in the README):

* **Decayed counters.** A counter with half-life ``h`` read at time ``t`` is
  ``sum(2 ** (-(t - t_i) / h))`` over its events at ``t_i <= t``. Half-lives: 1 h and 24 h.
  Stored as ``(value, as_of_ms)``; an event older than ``as_of_ms`` is added already decayed,
  so the value does not depend on arrival order.
* **Smoothed rates.** ``ctr = (clicks_24h + PRIOR_CTR * PRIOR_N) / (impressions_24h + PRIOR_N)``,
  ``cvr = (purchases_24h + PRIOR_CVR * PRIOR_N) / (clicks_24h + PRIOR_N)``.
* **Recency.** ``secs_since_last``: seconds since the key's previous event (``NO_HISTORY_S`` if
  none). **Last-N**: the ``LAST_N`` most recently clicked item and category IDs, newest first.
* **Affinity** of a user for a category: ``uc_clicks_24h / (u_clicks_24h + 1)``.

Features attached to an impression at ``t`` are read at ``t`` from the state *before* it
(point in time: nothing later leaks in): the user's and user x category's state after the
user's earlier events, in the user's own order; the item's state after the item's events of
earlier milliseconds only. Events of one item come from many users (and Kafka partitions),
whose order within one millisecond is not defined, so same-millisecond events are left out.

Synthetic impressions (made up by the impression rule) feed no state:
:func:`features.rows.feeds_state`.

**Expiry** (state TTL in event time): a key's state is gone for an event or a read at ``t``
more than ``settings.feature_state_ttl_ms`` after the key's latest event (:func:`alive`); the
event starts a fresh state. Both the pure reference and the Flink job apply this rule, and
free a key's memory once no event that can still be accepted could see its state.

>>> s = UserState()
>>> s = apply_user(s, "click", 0, "i1", "c1")
>>> s = apply_user(s, "click", HOUR_MS, "i2", "c1")
>>> round(s.clicks_1h.read(HOUR_MS), 3), s.last_items
(1.5, ('i2', 'i1'))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
LAST_N = 10
NO_HISTORY_S = 7 * 86_400.0
PRIOR_CTR, PRIOR_CVR, PRIOR_N = 0.1, 0.02, 10.0


@dataclass(frozen=True, slots=True)
class Decayed:
    """An exponentially decayed event count with half-life ``half_life_ms``."""

    half_life_ms: int
    value: float = 0.0
    as_of_ms: int = 0

    def read(self, t_ms: int) -> float:
        """The count as of ``t_ms`` (not less than ``as_of_ms``)."""
        if self.value == 0.0:
            return 0.0
        return self.value * 2.0 ** (-(max(t_ms, self.as_of_ms) - self.as_of_ms) / self.half_life_ms)

    def add(self, t_ms: int, n: float = 1.0) -> Decayed:
        """The counter with ``n`` events at ``t_ms`` added."""
        if t_ms >= self.as_of_ms:
            return Decayed(self.half_life_ms, self.read(t_ms) + n, t_ms)
        late = n * 2.0 ** (-(self.as_of_ms - t_ms) / self.half_life_ms)
        return Decayed(self.half_life_ms, self.value + late, self.as_of_ms)


_H1 = Decayed(HOUR_MS)
_H24 = Decayed(DAY_MS)
# empty counters are shared: Decayed is immutable, and a fresh state costs no allocations


@dataclass(frozen=True, slots=True)
class UserState:
    """What is kept per user."""

    clicks_1h: Decayed = _H1
    clicks_24h: Decayed = _H24
    carts_24h: Decayed = _H24
    purchases_24h: Decayed = _H24
    impressions_24h: Decayed = _H24
    last_ms: int | None = None
    last_items: tuple[str, ...] = ()
    last_categories: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ItemState:
    """What is kept per item."""

    impressions_24h: Decayed = _H24
    clicks_1h: Decayed = _H1
    clicks_24h: Decayed = _H24
    purchases_24h: Decayed = _H24
    last_ms: int | None = None


@dataclass(frozen=True, slots=True)
class UserCategoryState:
    """What is kept per (user, category)."""

    clicks_24h: Decayed = _H24
    purchases_24h: Decayed = _H24
    last_ms: int | None = None


S = TypeVar("S", "UserState", "ItemState", "UserCategoryState")


def alive(s: S | None, t: int, ttl_ms: int) -> S | None:
    """``s`` as seen at ``t``: None (no state) when its latest event is more than ``ttl_ms``
    before ``t``.

    >>> s = apply_item(ItemState(), "click", 0)
    >>> alive(s, DAY_MS, 2 * DAY_MS) is s, alive(s, 2 * DAY_MS + 1, 2 * DAY_MS)
    (True, None)
    """
    if s is None or s.last_ms is None or t - s.last_ms <= ttl_ms:
        return s
    return None


def _push(recent: tuple[str, ...], value: str | None) -> tuple[str, ...]:
    if value is None:
        return recent
    return (value, *[v for v in recent if v != value])[:LAST_N]


def _latest(last: int | None, t: int) -> int:
    return t if last is None else max(last, t)


def apply_user(s: UserState, event_type: str, t: int, item: str, category: str | None) -> UserState:
    """The user's state after one of their events."""
    last_ms = _latest(s.last_ms, t)
    if event_type == "click":
        newest = s.last_ms is None or t >= s.last_ms
        return UserState(
            s.clicks_1h.add(t), s.clicks_24h.add(t), s.carts_24h, s.purchases_24h,
            s.impressions_24h, last_ms,
            _push(s.last_items, item) if newest else s.last_items,
            _push(s.last_categories, category) if newest else s.last_categories)
    carts, purchases, impressions = s.carts_24h, s.purchases_24h, s.impressions_24h
    if event_type == "add_to_cart":
        carts = carts.add(t)
    elif event_type == "purchase":
        purchases = purchases.add(t)
    elif event_type == "impression":
        impressions = impressions.add(t)
    return UserState(s.clicks_1h, s.clicks_24h, carts, purchases, impressions, last_ms,
                     s.last_items, s.last_categories)


def apply_item(s: ItemState, event_type: str, t: int) -> ItemState:
    """The item's state after one event about it."""
    last_ms = _latest(s.last_ms, t)
    if event_type == "click":
        return ItemState(s.impressions_24h, s.clicks_1h.add(t), s.clicks_24h.add(t),
                         s.purchases_24h, last_ms)
    if event_type == "purchase":
        return ItemState(s.impressions_24h, s.clicks_1h, s.clicks_24h, s.purchases_24h.add(t),
                         last_ms)
    if event_type == "impression":
        return ItemState(s.impressions_24h.add(t), s.clicks_1h, s.clicks_24h, s.purchases_24h,
                         last_ms)
    return ItemState(s.impressions_24h, s.clicks_1h, s.clicks_24h, s.purchases_24h, last_ms)


def apply_user_category(s: UserCategoryState, event_type: str, t: int) -> UserCategoryState:
    """The (user, category) state after one of the user's events in that category."""
    last_ms = _latest(s.last_ms, t)
    if event_type == "click":
        return UserCategoryState(s.clicks_24h.add(t), s.purchases_24h, last_ms)
    if event_type == "purchase":
        return UserCategoryState(s.clicks_24h, s.purchases_24h.add(t), last_ms)
    return UserCategoryState(s.clicks_24h, s.purchases_24h, last_ms)


def _since(last: int | None, t: int) -> float:
    return NO_HISTORY_S if last is None else max(0.0, (t - last) / 1000.0)


def user_features(s: UserState, t: int) -> dict[str, float]:
    """The user's dense features as of ``t``."""
    return {
        "u_clicks_1h": s.clicks_1h.read(t),
        "u_clicks_24h": s.clicks_24h.read(t),
        "u_carts_24h": s.carts_24h.read(t),
        "u_purchases_24h": s.purchases_24h.read(t),
        "u_impressions_24h": s.impressions_24h.read(t),
        "u_secs_since_last": _since(s.last_ms, t),
    }


def item_features(s: ItemState, t: int) -> dict[str, float]:
    """The item's dense features as of ``t``."""
    imps, clicks = s.impressions_24h.read(t), s.clicks_24h.read(t)
    purchases = s.purchases_24h.read(t)
    return {
        "i_impressions_24h": imps,
        "i_clicks_1h": s.clicks_1h.read(t),
        "i_clicks_24h": clicks,
        "i_purchases_24h": purchases,
        "i_ctr": (clicks + PRIOR_CTR * PRIOR_N) / (imps + PRIOR_N),
        "i_cvr": (purchases + PRIOR_CVR * PRIOR_N) / (clicks + PRIOR_N),
        "i_secs_since_last": _since(s.last_ms, t),
    }


def user_category_features(
    s: UserCategoryState, user: UserState, category: str | None, t: int
) -> dict[str, float]:
    """The (user, category) dense features as of ``t``."""
    clicks = s.clicks_24h.read(t)
    return {
        "uc_clicks_24h": clicks,
        "uc_purchases_24h": s.purchases_24h.read(t),
        "uc_affinity": clicks / (user.clicks_24h.read(t) + 1.0),
        "uc_in_last_categories": float(category is not None and category in user.last_categories),
    }
