"""Feature rows against an independent pandas computation over the Taobao sample; coalescing;
the writer's Feast protos against Feast's own conversion."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pandas as pd
import pytest
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.passthrough_provider import PassthroughProvider
from feast.utils import make_tzaware
from google.protobuf.timestamp_pb2 import Timestamp

from config import Settings
from connectors.events import Event
from features.feature_repo import repo
from features.rows import (
    ITEM_VIEW,
    USER_CATEGORY_VIEW,
    USER_VIEW,
    FeatureComputer,
    FeatureRow,
    item_state,
    user_category_state,
    user_state,
)
from features.state import (
    DAY_MS,
    HOUR_MS,
    LAST_N,
    item_features,
    user_category_features,
    user_features,
)
from features.writer import Coalescer, rows_frame, view_spec

SAMPLE = Settings().sample_log
ROWS = 20_000
KINDS = {"pv": "click", "cart": "add_to_cart", "fav": "favourite", "buy": "purchase"}


@pytest.fixture(scope="module")
def log() -> pd.DataFrame:
    """The sample's first rows, in file order (ascending time), with event times in ms."""
    df = pd.read_csv(SAMPLE, header=None, nrows=ROWS, dtype=str,
                     names=["user_id", "item_id", "category_id", "behavior", "ts"])
    df["t"] = df["ts"].astype(np.int64) * 1000
    df["kind"] = df["behavior"].map(KINDS)
    return df.reset_index(names="seq")


@pytest.fixture(scope="module")
def computed(log: pd.DataFrame) -> tuple[FeatureComputer, dict[tuple, FeatureRow]]:
    """The computer after every event, and the last row emitted per (view, key)."""
    fc, last = FeatureComputer(), {}
    for r in log.itertuples():
        event = Event(event_id=str(r.seq), event_type=r.kind, user_id=r.user_id,
                      item_id=r.item_id, category_id=r.category_id, event_time=int(r.t))
        for row in fc.apply(event):
            last[(row.view, row.key)] = row
    return fc, last


def decayed(events: pd.DataFrame, keys: list[str], at: pd.Series, half_life_ms: int) -> pd.Series:
    """sum(2 ** (-(at - t_i) / h)) per key over ``events`` (``at`` indexed by the same keys)."""
    t_at = at.reindex(pd.MultiIndex.from_frame(events[keys]) if len(keys) > 1
                      else events[keys[0]]).to_numpy()
    weights = np.exp2(-(t_at - events["t"].to_numpy()) / half_life_ms)
    return pd.Series(weights, index=events.index).groupby([events[k] for k in keys]).sum()


def assert_close(actual: dict, expected: pd.Series) -> None:
    """Every key of ``expected`` (0 for keys absent from it) within 1e-9 relative."""
    assert len(actual) > 100
    for key, value in actual.items():
        want = expected.get(key, 0.0)
        assert math.isclose(value, want, rel_tol=1e-9, abs_tol=1e-12), (key, value, want)


def test_user_rows_match_direct_sums(log, computed):
    _, last = computed
    rows = {k[0]: r for (view, k), r in last.items() if view == USER_VIEW}
    at = log.groupby("user_id")["t"].max()
    assert {u: r.event_time_ms for u, r in rows.items()} == at.to_dict()
    clicks, carts = log[log.kind == "click"], log[log.kind == "add_to_cart"]
    for name, events, h in [("u_clicks_1h", clicks, HOUR_MS), ("u_clicks_24h", clicks, DAY_MS),
                            ("u_carts_24h", carts, DAY_MS),
                            ("u_purchases_24h", log[log.kind == "purchase"], DAY_MS)]:
        assert_close({u: r.values[name] for u, r in rows.items()},
                     decayed(events, ["user_id"], at, h))


def test_item_and_user_category_rows_match_direct_sums(log, computed):
    _, last = computed
    items = {k[0]: r for (view, k), r in last.items() if view == ITEM_VIEW}
    at_item = log.groupby("item_id")["t"].max()
    item_clicks = decayed(log[log.kind == "click"], ["item_id"], at_item, DAY_MS)
    assert_close({i: r.values["i_clicks_24h"] for i, r in items.items()}, item_clicks)
    assert_close({i: r.values["i_purchases_24h"] for i, r in items.items()},
                 decayed(log[log.kind == "purchase"], ["item_id"], at_item, DAY_MS))
    no_impressions_ctr = (item_clicks.reindex(at_item.index, fill_value=0.0) + 1.0) / 10.0
    assert_close({i: r.values["i_ctr"] for i, r in items.items()}, no_impressions_ctr)

    ucs = {k: r for (view, k), r in last.items() if view == USER_CATEGORY_VIEW}
    at_uc = log.groupby(["user_id", "category_id"])["t"].max()
    assert {k: r.event_time_ms for k, r in ucs.items()} == at_uc.to_dict()
    uc_clicks = decayed(log[log.kind == "click"], ["user_id", "category_id"], at_uc, DAY_MS)
    assert_close({k: r.values["uc_clicks_24h"] for k, r in ucs.items()}, uc_clicks)


def test_last_n_lists_are_the_newest_distinct_clicks(log, computed):
    _, last = computed
    clicks = log[log.kind == "click"].sort_values(["t", "seq"], ascending=False)
    for column, feature in [("item_id", "last_items"), ("category_id", "last_categories")]:
        newest = (clicks.drop_duplicates(["user_id", column]).groupby("user_id", sort=False)[column]
                  .apply(lambda s: list(s.head(LAST_N))))
        got = {k[0]: r.values[feature] for (view, k), r in last.items()
               if view == USER_VIEW and r.values[feature]}
        assert got == newest.to_dict()
        assert sum(len(v) > 1 for v in got.values()) > 50  # order within lists is exercised


def test_rows_read_later_age_like_the_state(log, computed):
    """A row turned back into state and read at a later time equals the live state's reading."""
    fc, last = computed
    end = int(log["t"].max()) + 3 * HOUR_MS
    at_user = log.groupby("user_id")["t"].max()
    recency = (end - at_user) / 1000.0
    for (view, key), row in last.items():
        if view == USER_VIEW:
            got = user_features(user_state(row.values, row.event_time_ms), end)
            want = user_features(fc.users[key[0]], end)
            assert got["u_secs_since_last"] == recency[key[0]]
        elif view == ITEM_VIEW:
            got = item_features(item_state(row.values, row.event_time_ms), end)
            want = item_features(fc.items[key[0]], end)
        else:
            user = fc.users[key[0]]
            got = user_category_features(user_category_state(row.values, row.event_time_ms),
                                         user, key[1], end)
            want = user_category_features(fc.user_categories[key], user, key[1], end)
        assert got.keys() == want.keys()
        assert all(math.isclose(got[k], want[k], rel_tol=1e-9, abs_tol=1e-12) for k in got), key


def test_coalescing_keeps_the_newest_event_time_in_any_arrival_order():
    rows = [FeatureRow(USER_VIEW, ("u",), {"v": t}, t) for t in (10, 40, 20, 30)]
    other = FeatureRow(USER_VIEW, ("w",), {"v": 0}, 5)
    for order in itertools.permutations(rows):
        c = Coalescer()
        for row in (*order[:2], other, *order[2:]):
            c.add(row)
        pending = {r.key: r.values["v"] for r in c.rows()[USER_VIEW]}
        assert len(c) == 2 and pending == {("u",): 40, ("w",): 0}


def test_coalescing_a_tie_keeps_the_later_arrival():
    c = Coalescer()
    assert c.add(FeatureRow(ITEM_VIEW, ("i",), {"n": 1}, 7))
    assert not c.add(FeatureRow(ITEM_VIEW, ("i",), {"n": 0}, 6))
    assert c.add(FeatureRow(ITEM_VIEW, ("i",), {"n": 2}, 7))
    assert c.rows()[ITEM_VIEW][0].values == {"n": 2}


def test_coalescing_shuffled_replay_batches_equals_the_in_order_last_rows(log):
    """Per batch of 2,000 events, shuffled rows coalesce to each key's last in-order row."""
    fc, rng = FeatureComputer(), random.Random(7)
    batch_events = 2_000
    for start in range(0, 3 * batch_events, batch_events):
        rows: list[FeatureRow] = []
        for r in log.iloc[start:start + batch_events].itertuples():
            rows += fc.apply(Event(event_id=str(r.seq), event_type=r.kind, user_id=r.user_id,
                                   item_id=r.item_id, category_id=r.category_id,
                                   event_time=int(r.t)))
        in_order = {(row.view, row.key): row for row in rows}
        rng.shuffle(rows)
        c = Coalescer()
        for row in rows:
            c.add(row)
        coalesced = {(row.view, row.key): row for view_rows in c.rows().values()
                     for row in view_rows}
        assert len(c) < len(rows)
        assert {k: r.event_time_ms for k, r in coalesced.items()} == {
            k: r.event_time_ms for k, r in in_order.items()}


def _stored(rows: list) -> list[tuple[bytes, dict[str, bytes], bytes]]:
    """``online_write_batch`` rows as the bytes Feast's Redis store writes: the entity key,
    each feature's value, and the event timestamp."""
    out = []
    for key, values, event_time, _ in rows:
        stamp = Timestamp()
        stamp.FromDatetime(make_tzaware(event_time))
        out.append((serialize_entity_key(key, entity_key_serialization_version=3),
                    {name: value.SerializeToString() for name, value in values.items()},
                    stamp.SerializeToString()))
    return out


@pytest.mark.parametrize("fv", [repo.user_features, repo.item_features,
                                repo.user_category_features], ids=lambda fv: fv.name)
def test_writer_protos_equal_feasts_own_dataframe_conversion(computed, fv):
    """What FeastStoreWriter hands to online_write_batch is what write_to_online_store would."""
    _, last = computed
    rows = [r for (view, _), r in last.items() if view == fv.name][:1_500]
    first = rows[0]
    # edge values: a NaN and an int in float columns, an empty and a missing list
    edits = {fv.features[0].name: float("nan"), fv.features[1].name: 3}
    if fv.name == USER_VIEW:
        edits |= {"last_items": [], "last_categories": None}
    rows.append(first._replace(key=tuple(k + "-edge" for k in first.key),
                               values=first.values | edits, event_time_ms=1_511_658_000_123))
    spec = view_spec(fv)
    ours = _stored(spec.online_rows(rows))
    feasts = _stored(PassthroughProvider._prep_rows_to_write_for_ingestion(
        fv, rows_frame(spec, rows)))
    assert ours == feasts
    assert len({key for key, _, _ in ours}) == len(rows)
    assert ours[-1][1][fv.features[0].name] == b""  # NaN is stored as an unset value
