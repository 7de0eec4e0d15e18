"""The examples builder: features as of the impression, labels joined, state kept per key."""

from __future__ import annotations

import pytest

from config import Settings
from connectors.events import Event
from features.example_builder import ExampleBuilder, ItemTimeline, build_examples
from features.schema import DENSE_FEATURES
from features.state import HOUR_MS, NO_HISTORY_S, PRIOR_CTR
from tests.shop_logs import messy_log, spanning_log

T0 = 1_511_658_000_000
SETTINGS = Settings()


def ev(event_id: str, kind: str, t: int, item: str = "a", user: str = "u",
       request: str | None = None, category: str | None = "c") -> Event:
    return Event(event_id=event_id, event_type=kind, user_id=user, item_id=item,
                 category_id=category, event_time=T0 + t, request_id=request)


def test_every_example_carries_exactly_the_dense_features_in_order():
    [x] = build_examples([ev("i1", "impression", 0, request="r1")], SETTINGS)
    assert tuple(x.features) == DENSE_FEATURES
    assert x.features["u_secs_since_last"] == NO_HISTORY_S
    assert x.features["i_ctr"] == pytest.approx(PRIOR_CTR)
    assert (x.example_id, x.request_id, x.category_id, x.click) == ("i1", "r1", "c", 0)


def test_the_labelling_click_is_not_in_the_impressions_features():
    log = [ev("i1", "impression", 0, request="r1"), ev("c1", "click", 1_000, request="r1"),
           ev("i2", "impression", 2_000, request="r2")]
    first, second = build_examples(log, SETTINGS)
    assert first.click == 1 and second.click == 0
    for name in ("u_clicks_1h", "u_clicks_24h", "i_clicks_1h", "i_clicks_24h", "uc_clicks_24h"):
        assert first.features[name] == 0.0
        assert second.features[name] == pytest.approx(1.0, rel=1e-3)
    assert first.features["uc_in_last_categories"] == 0.0
    assert second.features["uc_in_last_categories"] == 1.0
    assert second.features["u_secs_since_last"] == 1.0  # the click, one second earlier
    # the impression itself is counted only for later impressions
    assert first.features["i_impressions_24h"] == 0.0
    assert second.features["i_impressions_24h"] == pytest.approx(1.0, rel=1e-3)


def test_carts_and_purchases_feed_later_features():
    log = [ev("k1", "add_to_cart", 0), ev("p1", "purchase", 1_000, item="b"),
           ev("i1", "impression", HOUR_MS, item="b", request="r1")]
    [x] = build_examples(log, SETTINGS)
    assert x.features["u_carts_24h"] == pytest.approx(2 ** (-1 / 24), rel=1e-3)
    assert x.features["u_purchases_24h"] > 0.95 and x.features["i_purchases_24h"] > 0.95
    assert x.features["uc_purchases_24h"] > 0.95 and x.features["i_clicks_24h"] == 0.0


def test_examples_alone_are_those_made_with_the_rows():
    """``add`` keeps the state without making rows, ``step`` makes them: same examples, same
    state, also with duplicates, late and out-of-order events and expiring keys."""
    settings = Settings(feature_state_ttl_ms=5 * 60_000)
    log = messy_log(spanning_log(users=6, minutes=40, seed=4),
                    lateness_ms=settings.allowed_lateness_ms, seed=4, late_after=200)
    alone, with_rows = ExampleBuilder(settings), ExampleBuilder(settings)
    a, b, rows = [], [], 0
    for event in log:
        a += alone.add(event)
        changed, finished = with_rows.step(event)
        b += finished
        rows += len(changed)
    a, b = a + alone.flush(), b + with_rows.flush()
    assert a == b and len(a) > 500 and rows > 1_000
    assert alone.counters() == with_rows.counters()
    assert alone.counters()["duplicates"] > 0 and alone.counters()["late_events"] > 0
    for table in ("users", "items", "user_categories"):
        assert getattr(alone.computer, table) == getattr(with_rows.computer, table)


def test_duplicates_and_late_events_do_not_touch_the_state():
    builder = ExampleBuilder(SETTINGS)
    builder.add(ev("c1", "click", 0))
    builder.add(ev("c1", "click", 0))                       # duplicate
    builder.add(ev("x", "favourite", 10 * 60_000))
    builder.add(ev("old", "click", 0, item="z"))             # 10 min behind: late
    out = builder.add(ev("i1", "impression", 10 * 60_000, request="r1")) + builder.flush()
    assert out[0].features["u_clicks_24h"] == pytest.approx(2 ** (-10 / 1440))
    assert builder.counters()["duplicates"] == 1 and builder.counters()["late_events"] == 1
    assert builder.counters()["state_events"] == 3


def test_idle_state_is_dropped_after_the_ttl():
    builder = ExampleBuilder(Settings(feature_state_ttl_ms=2 * HOUR_MS))
    builder.add(ev("c1", "click", 0, user="gone", item="old"))
    builder.add(ev("c2", "click", 90 * 60_000, user="v", item="new"))  # sweeps: nothing idle 2 h
    assert builder.counters()["evicted_keys"] == 0
    builder.add(ev("c3", "click", 150 * 60_000, user="v", item="new"))  # sweeps again
    # user, item (arrival-order state and timeline) and user x category of "gone"
    assert builder.counters()["evicted_keys"] == 4
    assert builder.user_side("gone", "c", T0)["u_secs_since_last"] == NO_HISTORY_S
    assert builder.user_side("v", "c", T0 + 150 * 60_000)["u_clicks_24h"] > 1.9


def test_an_event_after_the_ttl_sees_a_fresh_state_before_any_sweep():
    builder = ExampleBuilder(Settings(feature_state_ttl_ms=2 * HOUR_MS))
    builder.add(ev("c1", "click", 0))
    rows, _ = builder.step(ev("c2", "click", 2 * HOUR_MS + 1))
    by_view = {r.view: r.values for r in rows}
    assert by_view["user_features"]["u_clicks_24h"] == 1.0  # the first click expired with it
    assert by_view["item_features"]["i_clicks_24h"] == 1.0


def test_same_stream_same_examples():
    log = [ev(f"i{i}", "impression", i * 100, item=f"x{i % 3}", user=f"u{i % 2}", request=f"r{i}")
           for i in range(50)]
    log += [ev(f"c{i}", "click", i * 100 + 50, item=f"x{i % 3}", user=f"u{i % 2}", request=f"r{i}")
            for i in range(0, 50, 4)]
    log.sort(key=lambda e: e.event_time)
    a, b = list(build_examples(log, SETTINGS)), list(build_examples(log, SETTINGS))
    assert a == b and len(a) == 50 and sum(x.click for x in a) == 13
    assert [x.event_time for x in a] == sorted(x.event_time for x in a)


def test_synthetic_impressions_join_labels_but_feed_no_feature():
    shown = ev("i1", "impression", 0, request="r1").model_copy(update={"synthetic": True})
    log = [shown, ev("c1", "click", 1_000, request="r1"),
           ev("i2", "impression", 2_000, item="a", user="v", request="r2")]
    first, second = build_examples(log, SETTINGS)
    assert first.click == 1  # still labelled by its click
    assert second.features["i_impressions_24h"] == 0.0  # the synthetic one is not counted
    assert second.features["i_clicks_24h"] == pytest.approx(1.0, rel=1e-3)
    assert second.features["i_secs_since_last"] == 1.0  # since the click, not the impression


def test_item_features_leave_out_the_items_events_of_the_same_millisecond():
    log = [ev("c0", "click", 0, user="w"),
           ev("c1", "click", 1_000, user="v"),               # same item, same millisecond,
           ev("i1", "impression", 1_000, request="r1"),       # another user: not seen
           ev("i2", "impression", 1_001, request="r2")]       # a millisecond later: seen
    same, later = build_examples(log, SETTINGS)
    assert same.features["i_clicks_24h"] == pytest.approx(1.0, rel=1e-4)
    assert later.features["i_clicks_24h"] == pytest.approx(2.0, rel=1e-4)
    assert later.features["i_impressions_24h"] == pytest.approx(1.0, rel=1e-4)


def test_item_timeline_keeps_a_bounded_window_and_a_base():
    timeline = ItemTimeline(keep_ms=1_000, ttl_ms=HOUR_MS)
    for t in range(0, 10_000, 100):
        timeline.apply("a", "click", t)
    assert timeline.before("a", 9_950).clicks_24h.read(9_950) == pytest.approx(100, rel=1e-3)
    # reads earlier than the window see the base: the clicks up to the window's start
    base = timeline.before("a", 0).clicks_24h.read(9_000)
    assert 85 < base < 92
    assert len(timeline._versions["a"]) <= 12
