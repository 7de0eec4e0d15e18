"""The label join: its rules one by one, then against an independent pandas join on real data."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from config import Settings
from connectors.events import Event
from connectors.logs import read_log
from features.example_builder import build_examples
from features.impressions import with_impressions
from features.labels import LabelJoiner
from features.state import DAY_MS, HOUR_MS

RULES = Settings(attribution_window_ms=1_000, max_out_of_orderness_ms=0, allowed_lateness_ms=500)
T0 = 1_511_658_000_000
SAMPLE = Settings()


def ev(event_id: str, kind: str, t: int, item: str = "a", request: str | None = None,
       user: str = "u") -> Event:
    return Event(event_id=event_id, event_type=kind, user_id=user, item_id=item,
                 event_time=T0 + t, request_id=request)


def labels(examples) -> dict[str, tuple[int, int]]:
    return {x.example_id: (x.click, x.purchase) for x in examples}


def test_click_counts_up_to_the_end_of_the_window_and_not_after():
    j = LabelJoiner(RULES)
    out = j.add(ev("i1", "impression", 0, "a", "r1"), {"f": 1.0})
    out += j.add(ev("i2", "impression", 0, "b", "r1"))
    out += j.add(ev("c1", "click", 1_000, "a", "r1"))  # exactly at the end: counts
    out += j.add(ev("c2", "click", 1_001, "b", "r1"))  # 1 ms after: does not
    out = labels(out + j.flush())
    assert out == {"i1": (1, 0), "i2": (0, 0)}
    assert (j.counters.clicks_joined, j.counters.unmatched_clicks) == (1, 1)


def test_impression_is_emitted_once_the_watermark_passes_its_window():
    j = LabelJoiner(RULES)
    assert j.add(ev("i1", "impression", 0, "a", "r1"), {"f": 2.0}) == []
    # finished once the watermark passes the window plus the lateness (labels may still come)
    assert j.add(ev("x", "add_to_cart", 1_500, "z")) == []
    [done] = j.add(ev("y", "add_to_cart", 1_501, "z"))
    assert (done.example_id, done.click, done.purchase, done.features) == ("i1", 0, 0, {"f": 2.0})
    assert (done.event_time, done.request_id, done.user_id) == (T0, "r1", "u")
    assert j.held()["pending_impressions"] == 0


def test_purchase_and_plain_click_label_the_latest_impression_of_user_and_item():
    j = LabelJoiner(RULES)
    j.add(ev("i1", "impression", 0, "a", "r1"))
    j.add(ev("i2", "impression", 300, "a", "r2"))
    j.add(ev("i3", "impression", 300, "a", "r3", user="v"))
    j.add(ev("p1", "purchase", 500, "a"))
    j.add(ev("c1", "click", 200, "a"))  # no request_id: latest impression at or before 200
    out = labels(j.flush())
    assert out == {"i1": (1, 0), "i2": (0, 1), "i3": (0, 0)}


def test_labels_arriving_before_their_impression_within_the_bound_are_matched():
    j = LabelJoiner(RULES.model_copy(update={"max_out_of_orderness_ms": 200}))
    j.add(ev("p1", "purchase", 100, "a"))          # arrives first, happened after
    j.add(ev("i1", "impression", 50, "a", "r1"))
    j.add(ev("c1", "click", 120, "a", "r1"))
    assert labels(j.add(ev("z", "favourite", 2_000, "z"))) == {"i1": (1, 1)}
    assert j.counters.unmatched_purchases == 0


def test_late_events_are_dropped_and_counted():
    j = LabelJoiner(RULES)
    j.add(ev("i1", "impression", 5_000, "a", "r1"))
    assert j.rejects(ev("old", "impression", 4_499)) == "late"  # watermark 5000 - lateness 500
    j.add(ev("old", "impression", 4_499, "b", "r0"))
    j.add(ev("c-old", "click", 4_499, "a", "r1"))
    assert j.rejects(ev("ok", "click", 4_500)) is None
    assert labels(j.flush()) == {"i1": (0, 0)}
    assert (j.counters.late_events, j.counters.impressions) == (2, 1)


def test_a_label_within_the_lateness_still_labels_its_impression():
    j = LabelJoiner(RULES)
    j.add(ev("i1", "impression", 0, "a", "r1"))
    assert j.add(ev("x", "favourite", 1_200, "z")) == []  # past the window, not the lateness
    j.add(ev("c1", "click", 900, "a", "r1"))  # in the window, 300 ms behind the watermark
    [done] = j.add(ev("y", "favourite", 1_501, "z"))
    assert done.click == 1
    assert (j.counters.late_events, j.counters.unmatched_clicks) == (0, 0)


def test_how_often_the_watermark_moves_does_not_change_the_examples():
    events = [ev("i1", "impression", 0, "a", "r1"), ev("i2", "impression", 100, "a"),
              ev("c1", "click", 700, "a"), ev("x", "favourite", 1_400, "z"),
              ev("c2", "click", 950, "a", "r1"), ev("p1", "purchase", 1_050, "a"),
              ev("y", "favourite", 3_000, "z")]
    every = LabelJoiner(RULES)
    out = [x for e in events for x in every.add(e)] + every.flush()
    once = LabelJoiner(RULES, follow_events=False)
    for e in events:
        assert once.add(e) == []
    out_once = once.advance(T0 + 10_000) + once.flush()
    assert labels(out) == labels(out_once) == {"i1": (1, 0), "i2": (1, 1)}


def test_duplicate_event_ids_are_ignored():
    j = LabelJoiner(RULES)
    j.add(ev("i1", "impression", 0, "a", "r1"))
    j.add(ev("i1", "impression", 0, "a", "r1"))
    j.add(ev("c1", "click", 10, "a", "r1"))
    assert j.rejects(ev("c1", "click", 10, "a", "r1")) == "duplicate"
    j.add(ev("c1", "click", 10, "a", "r1"))
    assert len(j.flush()) == 1
    assert (j.counters.duplicates, j.counters.clicks_joined) == (2, 1)


def test_memory_is_bounded_by_the_window_not_the_stream():
    j = LabelJoiner(RULES)
    emitted = 0
    for i in range(20_000):
        t = i * 10
        emitted += len(j.add(ev(f"i{i}", "impression", t, f"item{i}", f"r{i}")))
        emitted += len(j.add(ev(f"c{i}", "click", t + 5, f"item{i}", f"r{i}")))
    held = j.held()
    # window 1000 ms + lateness 500 ms at one impression and one click per 10 ms
    assert held["pending_impressions"] <= 151
    assert held["seen_ids"] <= 2 * 51 and held["waiting_labels"] <= 51
    assert emitted + len(j.flush()) == 20_000 and j.counters.clicks_joined == 20_000


# --- against an independent pandas join on the Taobao sample -----------------------------------

@pytest.fixture(scope="module")
def stream(tmp_path_factory) -> tuple[list[Event], dict]:
    """The first 10,000 rows of the shared sample with impressions, and their examples."""
    head = tmp_path_factory.mktemp("sample") / "head.csv"
    with Settings().sample_log.open() as f:
        head.write_text("".join(itertools.islice(f, 10_000)))
    settings = SAMPLE
    parsed, _ = read_log(head, "taobao", settings=settings)
    events = list(with_impressions(parsed, settings))
    return events, {x.example_id: x for x in build_examples(events, settings)}


def _frame(events: list[Event]) -> pd.DataFrame:
    df = pd.DataFrame([e.model_dump() for e in events])
    df["idx"] = np.arange(len(df))
    return df


def test_labels_match_an_independent_pandas_join(stream):
    events, examples = stream
    window = SAMPLE.attribution_window_ms
    df = _frame(events)
    imps = df[df.event_type == "impression"]
    clicks = df[df.event_type == "click"]
    buys = df[df.event_type == "purchase"].sort_values("event_time", kind="stable")
    # clicks: by request and item, within the window
    joined = imps.merge(clicks, on=["request_id", "item_id"], suffixes=("", "_c"))
    clicked = set(joined[(joined.event_time_c - joined.event_time) <= window].event_id)
    # purchases: the latest impression of the same user and item at or before it, within the window
    latest = pd.merge_asof(
        buys, imps.sort_values("event_time", kind="stable")[
            ["user_id", "item_id", "event_time", "event_id"]].rename(
            columns={"event_time": "t_imp", "event_id": "imp_id"}),
        left_on="event_time", right_on="t_imp", by=["user_id", "item_id"], direction="backward")
    bought = set(latest[(latest.event_time - latest.t_imp) <= window].imp_id.dropna())
    expected = {i: (int(i in clicked), int(i in bought)) for i in imps.event_id}
    assert labels(examples.values()) == expected
    # few purchases join: most buyers in the sample viewed the item before the sample starts
    assert len(expected) > 40_000 and len(clicked) > 8_000 and len(bought) >= 2


def _decayed_before(df: pd.DataFrame, key: str, targets: pd.DataFrame, half_life: int,
                    inclusive: bool = False, on: str = "idx") -> tuple[np.ndarray, pd.Series]:
    """Per target row: sum(2 ** (-(T - t_i) / h)) over clicks of its key earlier in the stream
    (``on="idx"``) or at earlier milliseconds (``on="event_time"``) (``inclusive``: or the row
    itself), T = max(its time, the latest such click's time); computed independently of
    features.state. Returns the values and the targets' event_ids."""
    src = df[df.event_type == "click"].sort_values(on, kind="stable")
    t0 = int(df.event_time.min())
    src = src.assign(w=np.exp2((src.event_time - t0) / half_life))
    src = src.assign(s=src.groupby(key).w.cumsum(), last=src.groupby(key).event_time.cummax())
    got = pd.merge_asof(targets.sort_values(on, kind="stable"), src[[key, on, "s", "last"]],
                        on=on, by=key, direction="backward", allow_exact_matches=inclusive)
    t = np.maximum(got.event_time, got["last"].fillna(0))
    return (got.s.fillna(0.0) * np.exp2(-(t - t0) / half_life)).to_numpy(), got.event_id


def test_features_are_as_of_the_impression_without_its_click(stream):
    events, examples = stream
    df = _frame(events)
    imps = df[df.event_type == "impression"]
    # the user's clicks before it in the stream; the item's clicks of earlier milliseconds
    for name, key, half_life, on in [("u_clicks_24h", "user_id", DAY_MS, "idx"),
                                     ("i_clicks_1h", "item_id", HOUR_MS, "event_time")]:
        expected, ids = _decayed_before(df, key, imps, half_life, on=on)
        got = np.array([examples[i].features[name] for i in ids])
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12, err_msg=name)
    # the leaky alternative (the labelling click included) is at least ~1 higher on every positive
    clicks = df[df.event_type == "click"]
    leaky, click_ids = _decayed_before(df, "user_id", clicks, DAY_MS, inclusive=True)
    by_click = dict(zip(click_ids, leaky))
    shown = {(e.request_id, e.item_id): e.event_id for e in events if e.event_type == "impression"}
    positives = 0
    for e in events:
        if e.event_type == "click":
            x = examples[shown[(e.request_id, e.item_id)]]
            assert x.click == 1 and x.features["u_clicks_24h"] < by_click[e.event_id] - 0.9
            positives += 1
    assert positives > 8_000
