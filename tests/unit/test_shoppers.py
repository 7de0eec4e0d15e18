"""The simulated shoppers' model: fitted tastes, candidates, position bias, drift."""

from __future__ import annotations

import random

from hypothesis import given, settings, strategies as st

from connectors.events import Event
from streamrank.shoppers import ClickModel, ShopperModel


def _event(n: int, user: str, item: str, cat: str, kind: str = "click") -> Event:
    return Event(event_id=f"e{n}", event_type=kind, user_id=user, item_id=item,
                 category_id=cat, event_time=1_600_000_000_000 + n)


def _model() -> ShopperModel:
    events, n = [], 0
    for user, cats in {"a": ["c1"] * 8 + ["c2"], "b": ["c2"] * 6 + ["c3"] * 3, "c": ["c1"]}.items():
        for cat in cats:
            n += 1
            events.append(_event(n, user, f"{cat}-i{n % 4}", cat))
    events.append(_event(99, "a", "c3-i9", "c3", "impression"))  # impressions say nothing
    return ShopperModel.fit(events, ClickModel(candidates=6, shown=4))


def test_fit_keeps_users_with_enough_events_and_normalises_affinity() -> None:
    model = _model()
    assert model.users == ["a", "b"]  # "c" has one event, under min_events
    for user in model.users:
        assert abs(sum(model.affinity[user].values()) - 1) < 1e-9
    assert model.affinity["a"]["c1"] > model.affinity["a"]["c2"]
    assert "c3-i9" not in model.popularity


def test_relevance_is_highest_for_the_favourite_category_until_tastes_drift() -> None:
    model = _model()
    assert model.relevance("a", "c1") == 1.0
    assert model.relevance("a", "c1") > model.relevance("a", "c2")
    before = {c: model.taste("a", c) for c in ("c1", "c2", "c3")}
    model.drift()
    after = {c: model.taste("a", c) for c in ("c1", "c2", "c3")}
    assert sorted(before.values()) == sorted(after.values())  # rotated, not changed
    assert max(after, key=after.get) != "c1"


def test_position_bias_makes_the_top_positions_clicked_more() -> None:
    model = _model()
    rng = random.Random(1)
    shown = ["c1-i1", "c1-i2", "c1-i3", "c1-i0"]  # equally relevant for "a"
    counts = [0] * 4
    for _ in range(4_000):
        for position, _item, _bought in model.react("a", shown, rng):
            counts[position] += 1
    assert counts[0] > counts[1] > counts[3]
    assert abs(counts[0] / 4_000 - 1.0) < 0.02  # bias 1 x relevance 1 at the top


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), drifts=st.integers(0, 5))
def test_candidates_are_distinct_known_items(seed: int, drifts: int) -> None:
    model = _model()
    for _ in range(drifts):
        model.drift()
    for user in model.users:
        items = model.candidates(user, random.Random(seed))
        assert len(items) == len(set(items)) == min(6, len(model.popularity))
        assert set(items) <= set(model.popularity)
