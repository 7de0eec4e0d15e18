"""The numpy feature reads of the scorer (:mod:`features.columns`) against the reference
(:mod:`features.state`) on random states: fresh, decayed, read before their own time, expired."""

from __future__ import annotations

import random

import numpy as np
import pytest

from features.columns import (
    item_feature_columns,
    item_vector,
    user_category_feature_columns,
    user_category_vector,
)
from features.schema import ITEM_FEATURES, USER_CATEGORY_FEATURES
from features.state import (
    DAY_MS,
    HOUR_MS,
    ItemState,
    UserCategoryState,
    UserState,
    alive,
    apply_item,
    apply_user,
    apply_user_category,
    item_features,
    user_category_features,
)

TTL = 2 * DAY_MS
T = 10 * DAY_MS


def _history(rng: random.Random, n: int) -> list[tuple[str, int]]:
    return sorted(((rng.choice(["impression", "click", "cart", "purchase"]),
                    T - rng.randint(-HOUR_MS, 4 * DAY_MS)) for _ in range(n)),
                  key=lambda e: e[1] if rng.random() < 0.8 else -e[1])  # some out of order


def _items(rng: random.Random, n: int) -> list[ItemState]:
    out = []
    for _ in range(n):
        s = ItemState()
        for event_type, t in _history(rng, rng.choice([0, 1, 3, 12])):
            s = apply_item(s, event_type, t)
        out.append(s)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_item_columns_equal_the_reference(seed):
    rng = random.Random(seed)
    states = _items(rng, 200)
    for t in (T, T - 2 * HOUR_MS, T + 3 * DAY_MS):
        got = item_feature_columns(np.array([item_vector(s) for s in states]), t, TTL)
        for s, row in zip(states, got):
            want = item_features(alive(s, t, TTL) or ItemState(), t)
            assert list(want) == list(ITEM_FEATURES)
            assert row.tolist() == pytest.approx(list(want.values()), rel=1e-12, abs=1e-12)
    assert any(alive(s, T + 3 * DAY_MS, TTL) is None and s.last_ms is not None for s in states)


@pytest.mark.parametrize("seed", range(5))
def test_user_category_columns_equal_the_reference(seed):
    rng = random.Random(seed)
    user = UserState()
    categories, states = [], []
    for k in range(150):
        category = rng.choice([None, f"c{k % 7}", f"c{k}"])
        s = UserCategoryState()
        for event_type, t in _history(rng, rng.choice([0, 1, 5])):
            s = apply_user_category(s, event_type, t)
            user = apply_user(user, event_type, t, f"i{k}", category)
        categories.append(category)
        states.append(s)
    user = apply_user(user, "click", T - 1_000, "i0", "c0")  # c0 is among the last
    for t in (T, T + 3 * DAY_MS):
        u = alive(user, t, TTL) or UserState()
        got = user_category_feature_columns(
            np.array([user_category_vector(s) for s in states]), u, categories, t, TTL)
        for s, c, row in zip(states, categories, got):
            want = user_category_features(alive(s, t, TTL) or UserCategoryState(), u, c, t)
            assert list(want) == list(USER_CATEGORY_FEATURES)
            assert row.tolist() == pytest.approx(list(want.values()), rel=1e-12, abs=1e-12)
