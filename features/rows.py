"""Feast rows from per-key feature state, and back; the per-event reference computation;
coalescing of rows per key.

A row holds one key's features *as of its event timestamp* ``t``, the key's latest event time
(``state.last_ms``). Decayed counters are pure exponentials, so a row read later is aged exactly
by turning it back into state (:func:`user_state`, :func:`item_state`,
:func:`user_category_state`) and reading that with :mod:`features.state` at the later time.

Feature views (names and join keys; declared in ``features/feature_repo``):

* ``user_features`` (``user_id``): :data:`~features.schema.USER_FEATURES` plus ``last_items``
  and ``last_categories`` (lists of IDs, newest first).
* ``item_features`` (``item_id``): :data:`~features.schema.ITEM_FEATURES`.
* ``user_category_features`` (``user_id``, ``category_id``): ``uc_clicks_24h``,
  ``uc_purchases_24h`` and ``uc_affinity`` (as of the row's time); ``uc_in_last_categories``
  is not stored: readers derive it, and a fresh ``uc_affinity``, from the user row.

>>> from connectors.events import Event
>>> fc = FeatureComputer()
>>> rows = fc.apply(Event(event_id="1", event_type="click", user_id="u", item_id="i",
...                       category_id="c", event_time=1_000))
>>> [(r.view, r.key, r.event_time_ms) for r in rows]  # doctest: +NORMALIZE_WHITESPACE
[('user_features', ('u',), 1000), ('item_features', ('i',), 1000),
 ('user_category_features', ('u', 'c'), 1000)]
>>> rows[0].values["u_clicks_24h"], rows[0].values["last_items"], rows[2].values["uc_affinity"]
(1.0, ['i'], 0.5)
"""

from __future__ import annotations

from typing import Any

from config import FeatureSettings
from connectors.events import Event
from connectors.feature_rows import FeatureRow
from features.schema import USER_FEATURES
from features.state import (
    DAY_MS,
    HOUR_MS,
    NO_HISTORY_S,
    Decayed,
    ItemState,
    UserCategoryState,
    UserState,
    alive,
    apply_item,
    apply_user,
    apply_user_category,
    item_features,
    user_category_features,
    user_features,
)

USER_VIEW = "user_features"
ITEM_VIEW = "item_features"
USER_CATEGORY_VIEW = "user_category_features"
JOIN_KEYS: dict[str, tuple[str, ...]] = {
    USER_VIEW: ("user_id",),
    ITEM_VIEW: ("item_id",),
    USER_CATEGORY_VIEW: ("user_id", "category_id"),
}
"""The join keys of each feature view, in the order of a row's ``key`` tuple."""
USER_LISTS: tuple[str, ...] = ("last_items", "last_categories")
USER_CATEGORY_STORED: tuple[str, ...] = ("uc_clicks_24h", "uc_purchases_24h", "uc_affinity")
STATE_FIELDS: dict[str, tuple[str, ...]] = {
    USER_VIEW: USER_FEATURES + USER_LISTS,
    ITEM_VIEW: ("i_impressions_24h", "i_clicks_1h", "i_clicks_24h", "i_purchases_24h",
                "i_secs_since_last"),
    USER_CATEGORY_VIEW: ("uc_clicks_24h", "uc_purchases_24h"),
}
"""The stored values that each view's state is rebuilt from (:func:`user_state`,
:func:`item_state`, :func:`user_category_state`): what a reader needs to fetch; the others
(``i_ctr``, ``i_cvr``, ``uc_affinity``) are derived again from the state at read time.

>>> s = apply_item(apply_item(ItemState(), "impression", 0), "click", 1_000)
>>> full = item_row(s, 2_000)
>>> item_state({k: full[k] for k in STATE_FIELDS[ITEM_VIEW]}, 2_000) == item_state(full, 2_000)
True
"""

Values = dict[str, Any]


def user_row(state: UserState, t: int) -> Values:
    """The user's row as of ``t``: dense features plus the last-N lists.

    >>> s = apply_user(UserState(), "click", 0, "i1", "c1")
    >>> row = user_row(s, HOUR_MS)
    >>> row["u_clicks_1h"], row["u_secs_since_last"], row["last_categories"]
    (0.5, 3600.0, ['c1'])
    """
    return user_features(state, t) | {
        "last_items": list(state.last_items), "last_categories": list(state.last_categories)}


def item_row(state: ItemState, t: int) -> Values:
    """The item's row as of ``t``.

    >>> round(item_row(apply_item(ItemState(), "impression", 0), 0)["i_ctr"], 4)
    0.0909
    """
    return item_features(state, t)


def user_category_row(state: UserCategoryState, user: UserState, t: int) -> Values:
    """The (user, category) row as of ``t``; ``uc_affinity`` needs the user's state.

    >>> u = apply_user(UserState(), "click", 0, "i1", "c1")
    >>> user_category_row(apply_user_category(UserCategoryState(), "click", 0), u, 0)
    {'uc_clicks_24h': 1.0, 'uc_purchases_24h': 0.0, 'uc_affinity': 0.5}
    """
    values = user_category_features(state, user, None, t)
    return {name: values[name] for name in USER_CATEGORY_STORED}


def _counter(half_life_ms: int, value: float | None, t: int) -> Decayed:
    return Decayed(half_life_ms, float(value or 0.0), t)


def _last_ms(secs_since_last: float | None, t: int) -> int | None:
    if secs_since_last is None or secs_since_last >= NO_HISTORY_S:
        return None
    return t - round(secs_since_last * 1000.0)


def user_state(row: Values | None, t: int) -> UserState:
    """The user state that :func:`user_row` turned into ``row`` at ``t`` (fresh if no row).

    >>> s = apply_user(UserState(), "click", 0, "i1", "c1")
    >>> s = apply_user(s, "purchase", 5_000, "i1", "c1")
    >>> back = user_state(user_row(s, 9_000), 9_000)
    >>> a, b = user_features(back, DAY_MS), user_features(s, DAY_MS)
    >>> max(abs(a[k] - b[k]) for k in a) < 1e-12, back.last_items
    (True, ('i1',))
    """
    if row is None:
        return UserState()
    return UserState(
        clicks_1h=_counter(HOUR_MS, row.get("u_clicks_1h"), t),
        clicks_24h=_counter(DAY_MS, row.get("u_clicks_24h"), t),
        carts_24h=_counter(DAY_MS, row.get("u_carts_24h"), t),
        purchases_24h=_counter(DAY_MS, row.get("u_purchases_24h"), t),
        impressions_24h=_counter(DAY_MS, row.get("u_impressions_24h"), t),
        last_ms=_last_ms(row.get("u_secs_since_last"), t),
        last_items=tuple(row.get("last_items") or ()),
        last_categories=tuple(row.get("last_categories") or ()),
    )


def item_state(row: Values | None, t: int) -> ItemState:
    """The item state that :func:`item_row` turned into ``row`` at ``t`` (fresh if no row).

    >>> s = apply_item(apply_item(ItemState(), "impression", 0), "click", 1_000)
    >>> a = item_features(item_state(item_row(s, 2_000), 2_000), HOUR_MS)
    >>> b = item_features(s, HOUR_MS)
    >>> max(abs(a[k] - b[k]) for k in a) < 1e-12
    True
    """
    if row is None:
        return ItemState()
    return ItemState(
        impressions_24h=_counter(DAY_MS, row.get("i_impressions_24h"), t),
        clicks_1h=_counter(HOUR_MS, row.get("i_clicks_1h"), t),
        clicks_24h=_counter(DAY_MS, row.get("i_clicks_24h"), t),
        purchases_24h=_counter(DAY_MS, row.get("i_purchases_24h"), t),
        last_ms=_last_ms(row.get("i_secs_since_last"), t),
    )


def user_category_state(row: Values | None, t: int) -> UserCategoryState:
    """The (user, category) state of a row written at ``t`` (fresh if no row).

    ``last_ms`` is not stored (no feature reads it) and comes back as ``None``.

    >>> user_category_state({"uc_clicks_24h": 2.0}, 0).clicks_24h.read(DAY_MS)
    1.0
    """
    if row is None:
        return UserCategoryState()
    return UserCategoryState(
        clicks_24h=_counter(DAY_MS, row.get("uc_clicks_24h"), t),
        purchases_24h=_counter(DAY_MS, row.get("uc_purchases_24h"), t),
    )


def feeds_state(event: Event) -> bool:
    """Whether an event changes feature state: all but synthetic impressions (made up by the
    impression rule from the clicks that follow, so counting them would leak those clicks).

    >>> feeds_state(Event(event_id="1", event_type="impression", user_id="u", item_id="i",
    ...                   event_time=0, synthetic=True))
    False
    """
    return not event.synthetic


DEFAULT_TTL_MS: int = FeatureSettings.model_fields["feature_state_ttl_ms"].default
"""``settings.feature_state_ttl_ms`` by default."""


def user_after(state: UserState | None, event: Event, ttl_ms: int = DEFAULT_TTL_MS) -> UserState:
    """The user's state after one of their events (applied to a fresh state if ``state``
    expired, see :func:`features.state.alive`)."""
    t = event.event_time
    return apply_user(alive(state, t, ttl_ms) or UserState(), event.event_type, t,
                      event.item_id, event.category_id)


def item_after(state: ItemState | None, event: Event, ttl_ms: int = DEFAULT_TTL_MS) -> ItemState:
    """The item's state after one event about it (to a fresh state if ``state`` expired)."""
    t = event.event_time
    return apply_item(alive(state, t, ttl_ms) or ItemState(), event.event_type, t)


def user_category_after(state: UserCategoryState | None, event: Event,
                        ttl_ms: int = DEFAULT_TTL_MS) -> UserCategoryState:
    """The (user, category) state after a user's event in that category (to a fresh state if
    ``state`` expired)."""
    t = event.event_time
    return apply_user_category(alive(state, t, ttl_ms) or UserCategoryState(), event.event_type, t)


def update_user(state: UserState | None, event: Event,
                ttl_ms: int = DEFAULT_TTL_MS) -> tuple[UserState, FeatureRow]:
    """:func:`user_after` and its row (keyed by user)."""
    new = user_after(state, event, ttl_ms)
    as_of = new.last_ms if new.last_ms is not None else event.event_time
    return new, FeatureRow(USER_VIEW, (event.user_id,), user_row(new, as_of), as_of)


def update_item(state: ItemState | None, event: Event,
                ttl_ms: int = DEFAULT_TTL_MS) -> tuple[ItemState, FeatureRow]:
    """:func:`item_after` and its row (keyed by item)."""
    new = item_after(state, event, ttl_ms)
    as_of = new.last_ms if new.last_ms is not None else event.event_time
    return new, FeatureRow(ITEM_VIEW, (event.item_id,), item_row(new, as_of), as_of)


def update_user_category(
    state: UserCategoryState | None, user: UserState, event: Event,
    ttl_ms: int = DEFAULT_TTL_MS,
) -> tuple[UserCategoryState, FeatureRow]:
    """:func:`user_category_after` and its row; ``user`` is the user's state after the event.

    The row is as of the user's latest event time, so that its ``uc_affinity`` is that of the
    user row written for the same event. Needs ``event.category_id``.
    """
    assert event.category_id is not None, "a user x category update needs a category"
    new = user_category_after(state, event, ttl_ms)
    as_of = user.last_ms if user.last_ms is not None else event.event_time
    row = FeatureRow(USER_CATEGORY_VIEW, (event.user_id, event.category_id),
                     user_category_row(new, user, as_of), as_of)
    return new, row


class FeatureComputer:
    """The per-key feature state of the reference, in arrival order: consumes events, keeps
    per-key state, returns the rows each event changed (what the online store receives).

    Calls the same per-key functions (:func:`update_user`, :func:`update_item`,
    :func:`update_user_category`) that the keyed Flink operators call; :meth:`update` only
    their state parts (:func:`user_after`, :func:`item_after`, :func:`user_category_after`).
    It does not drop duplicates or late events: :class:`features.example_builder.ExampleBuilder`
    does, before.
    """

    def __init__(self, ttl_ms: int = DEFAULT_TTL_MS) -> None:
        self.ttl_ms = ttl_ms
        self.users: dict[str, UserState] = {}
        self.items: dict[str, ItemState] = {}
        self.user_categories: dict[tuple[str, str], UserCategoryState] = {}

    def apply(self, event: Event) -> list[FeatureRow]:
        """Apply one event; the rows it changed (user, item, and user x category if known;
        none for an event that does not :func:`feeds_state`)."""
        if not feeds_state(event):
            return []
        user, user_r = update_user(self.users.get(event.user_id), event, self.ttl_ms)
        item, item_r = update_item(self.items.get(event.item_id), event, self.ttl_ms)
        self.users[event.user_id], self.items[event.item_id] = user, item
        if event.category_id is None:
            return [user_r, item_r]
        key = (event.user_id, event.category_id)
        uc, uc_r = update_user_category(self.user_categories.get(key), user, event, self.ttl_ms)
        self.user_categories[key] = uc
        return [user_r, item_r, uc_r]

    def update(self, event: Event) -> None:
        """What :meth:`apply` does to the state, without making its rows (the examples alone
        need no rows)."""
        if not feeds_state(event):
            return
        user, item, category = event.user_id, event.item_id, event.category_id
        self.users[user] = user_after(self.users.get(user), event, self.ttl_ms)
        self.items[item] = item_after(self.items.get(item), event, self.ttl_ms)
        if category is not None:
            key = (user, category)
            self.user_categories[key] = user_category_after(self.user_categories.get(key), event,
                                                            self.ttl_ms)

    def evict(self, cutoff: int) -> int:
        """Drop the keys whose latest event is before ``cutoff``; return how many."""
        n = 0
        for table in (self.users, self.items, self.user_categories):
            stale = [k for k, s in table.items() if s.last_ms is not None and s.last_ms < cutoff]
            for k in stale:
                del table[k]
            n += len(stale)
        return n
