"""Numpy ports of the feature reads of :mod:`features.state`, for many states at once.

The scorer reads the features of every candidate of a request at one time ``t``. The reference
reads one state at a time (:func:`~features.state.alive`, then
:func:`~features.state.item_features` or :func:`~features.state.user_category_features`), a
few microseconds of Python each; here a state is a row of floats (:func:`item_vector`,
:func:`user_category_vector`) and a request's rows are read together, in the reference's
arithmetic, column by column. ``tests/unit/test_feature_columns.py`` checks the ports against
the reference on random states (fresh, decayed, in the future, expired).

>>> from features.state import DAY_MS, HOUR_MS, apply_item, item_features
>>> s = apply_item(apply_item(ItemState(), "impression", 0), "click", 1_000)
>>> got = item_feature_columns(np.array([item_vector(s)]), HOUR_MS, ttl_ms=DAY_MS)[0].tolist()
>>> want = item_features(s, HOUR_MS)
>>> max(abs(g - want[name]) for g, name in zip(got, ITEM_FEATURES)) < 1e-12
True
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from features.schema import ITEM_FEATURES, USER_CATEGORY_FEATURES
from features.state import (
    NO_HISTORY_S,
    PRIOR_CTR,
    PRIOR_CVR,
    PRIOR_N,
    ItemState,
    UserCategoryState,
    UserState,
)

ITEM_COUNTERS: tuple[str, ...] = ("impressions_24h", "clicks_1h", "clicks_24h", "purchases_24h")
USER_CATEGORY_COUNTERS: tuple[str, ...] = ("clicks_24h", "purchases_24h")
_NO_LAST = float("nan")


def _vector(s: ItemState | UserCategoryState, counters: Sequence[str]) -> tuple[float, ...]:
    decayed = [getattr(s, name) for name in counters]
    return (*(d.value for d in decayed), *(float(d.as_of_ms) for d in decayed),
            _NO_LAST if s.last_ms is None else float(s.last_ms))


def item_vector(s: ItemState) -> tuple[float, ...]:
    """The item state as floats: the counters' values, their ``as_of_ms``, ``last_ms`` (NaN:
    none), counters in :data:`ITEM_COUNTERS` order."""
    return _vector(s, ITEM_COUNTERS)


def user_category_vector(s: UserCategoryState) -> tuple[float, ...]:
    """The (user, category) state as floats, as :func:`item_vector` (
    :data:`USER_CATEGORY_COUNTERS`)."""
    return _vector(s, USER_CATEGORY_COUNTERS)


FRESH_ITEM = item_vector(ItemState())
FRESH_USER_CATEGORY = user_category_vector(UserCategoryState())
_ITEM_HALF_LIVES = np.array([getattr(ItemState(), c).half_life_ms for c in ITEM_COUNTERS],
                            dtype=np.float64)
_UC_HALF_LIVES = np.array(
    [getattr(UserCategoryState(), c).half_life_ms for c in USER_CATEGORY_COUNTERS],
    dtype=np.float64)


def _read(vectors: np.ndarray, half_lives: np.ndarray, t: int,
          ttl_ms: int) -> tuple[np.ndarray, np.ndarray]:
    """Counters as of ``t`` (:meth:`~features.state.Decayed.read`) and ``last_ms`` of states
    seen through :func:`~features.state.alive` (an expired state reads as a fresh one)."""
    k = len(half_lives)
    values, as_of, last = vectors[:, :k], vectors[:, k:2 * k], vectors[:, 2 * k]
    counts = values * np.exp2(-(np.maximum(t, as_of) - as_of) / half_lives)
    expired = t - last > ttl_ms  # False where there is no last event (NaN)
    counts[expired] = 0.0
    return counts, np.where(expired, np.nan, last)


def _since(last: np.ndarray, t: int) -> np.ndarray:
    return np.where(np.isnan(last), NO_HISTORY_S, np.maximum(0.0, (t - last) / 1000.0))


def item_feature_columns(vectors: np.ndarray, t: int, ttl_ms: int) -> np.ndarray:
    """``N X len(ITEM_FEATURES)``: row ``j`` is ``item_features(alive(s_j, t, ttl_ms) or
    ItemState(), t)`` of the state whose :func:`item_vector` is ``vectors[j]``."""
    counts, last = _read(vectors, _ITEM_HALF_LIVES, t, ttl_ms)
    imps, clicks_1h, clicks, purchases = counts.T
    out = np.empty((len(vectors), len(ITEM_FEATURES)))
    out[:, 0], out[:, 1], out[:, 2], out[:, 3] = imps, clicks_1h, clicks, purchases
    out[:, 4] = (clicks + PRIOR_CTR * PRIOR_N) / (imps + PRIOR_N)
    out[:, 5] = (purchases + PRIOR_CVR * PRIOR_N) / (clicks + PRIOR_N)
    out[:, 6] = _since(last, t)
    return out


def user_category_feature_columns(vectors: np.ndarray, user: UserState,
                                  categories: Sequence[str | None], t: int,
                                  ttl_ms: int) -> np.ndarray:
    """``N X len(USER_CATEGORY_FEATURES)``: row ``j`` is ``user_category_features(alive(s_j,
    t, ttl_ms) or UserCategoryState(), user, categories[j], t)`` (``user`` as read at ``t``)."""
    counts, _ = _read(vectors, _UC_HALF_LIVES, t, ttl_ms)
    out = np.empty((len(vectors), len(USER_CATEGORY_FEATURES)))
    out[:, 0], out[:, 1] = counts[:, 0], counts[:, 1]
    out[:, 2] = counts[:, 0] / (user.clicks_24h.read(t) + 1.0)
    recent = set(user.last_categories)
    out[:, 3] = [c is not None and c in recent for c in categories]
    return out
