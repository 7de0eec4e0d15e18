"""The Feast store end to end on the live Redis: apply, write through FeastStoreWriter, read back."""

from __future__ import annotations

import random
import uuid
from pathlib import Path

import pandas as pd
import pytest
from feast import FeatureStore
from feast.protos.feast.serving.ServingService_pb2 import FieldStatus
from feast.value_type import ValueType
from redis import Redis

from config import Settings
from connectors.events import Event
from features.online import FEATURE_REFS, read_features, redis_key
from features.online_write import RedisOnlineWriter
from features.rows import (
    ITEM_VIEW,
    USER_CATEGORY_STORED,
    USER_CATEGORY_VIEW,
    USER_LISTS,
    USER_VIEW,
    FeatureComputer,
    FeatureRow,
)
from features.schema import DENSE_FEATURES, ITEM_FEATURES, USER_FEATURES
from features.state import (
    HOUR_MS,
    ItemState,
    UserCategoryState,
    UserState,
    item_features,
    user_category_features,
    user_features,
)
from features.store import apply_repo, feast_dir, offline_dir
from features.writer import FeastStoreWriter, ViewSpec, rows_frame, view_specs

pytestmark = pytest.mark.integration

T0 = 1_511_658_000_000  # 2017-11-26 01:00 UTC, the Taobao sample's first second


@pytest.fixture
def run(live_stack: Settings, tmp_path: Path) -> tuple[Settings, FeatureStore]:
    """Settings with a private run directory, and the store applied into it."""
    settings = live_stack.model_copy(update={"run_dir": tmp_path / "run"})
    return settings, apply_repo(settings)


@pytest.fixture
def tag() -> str:
    """A prefix that keeps this test's entity keys apart from anything else in Redis."""
    return f"t{uuid.uuid4().hex[:10]}-"


def online(store: FeatureStore, refs: list[str], **keys: list[str]) -> dict[str, list]:
    return store.get_online_features(features=refs, entity_rows=keys).to_dict()


def test_apply_is_idempotent_and_registers_the_repo(run):
    settings, store = run
    again = apply_repo(settings)
    assert sorted(fv.name for fv in again.list_feature_views()) == sorted(
        [USER_VIEW, ITEM_VIEW, USER_CATEGORY_VIEW])
    assert (feast_dir(settings) / "feature_store.yaml").exists()
    service = again.get_feature_service("ranker")
    refs = [f"{p.name}:{f.name}" for p in service.feature_view_projections for f in p.features]
    stored = {USER_VIEW: USER_FEATURES + USER_LISTS, ITEM_VIEW: ITEM_FEATURES,
              USER_CATEGORY_VIEW: USER_CATEGORY_STORED}
    assert sorted(refs) == sorted(f"{v}:{n}" for v, names in stored.items() for n in names)
    assert set(FEATURE_REFS) <= set(refs)  # what a reader fetches: what state is rebuilt from
    uc = again.get_feature_view(USER_CATEGORY_VIEW)
    assert uc.join_keys == ["user_id", "category_id"] and uc.ttl.total_seconds() == 48 * 3600
    assert Path(uc.batch_source.path) == offline_dir(settings) / USER_CATEGORY_VIEW


def test_written_rows_read_back_by_feature_name(run, tag):
    settings, store = run
    writer = FeastStoreWriter(store, settings)
    user, item, category = tag + "u", tag + "i", tag + "c"
    user_values = {"u_clicks_1h": 1.5, "u_clicks_24h": 2.25, "u_carts_24h": 0.0,
                   "u_purchases_24h": 1.0, "u_impressions_24h": 7.0, "u_secs_since_last": 0.0,
                   "last_items": ["i2", "i1"], "last_categories": ["c9"]}
    writer.add(USER_VIEW, (user,), user_values, T0 + 1)
    writer.add(USER_CATEGORY_VIEW, (user, category),
               {"uc_clicks_24h": 3.0, "uc_purchases_24h": 0.5, "uc_affinity": 0.75}, T0 + 2)
    writer.add(ITEM_VIEW, (item,), {name: float(k) for k, name in enumerate(
        ["i_impressions_24h", "i_clicks_1h", "i_clicks_24h", "i_purchases_24h", "i_ctr",
         "i_cvr", "i_secs_since_last"])}, T0 + 3)
    assert writer.flush() == 3 and writer.pending == 0

    got = online(store, [f"{USER_VIEW}:{n}" for n in user_values], user_id=[user])
    assert {n: got[n][0] for n in user_values} == user_values
    got = online(store, [f"{USER_CATEGORY_VIEW}:uc_clicks_24h", f"{USER_CATEGORY_VIEW}:uc_affinity",
                         f"{ITEM_VIEW}:i_ctr", f"{ITEM_VIEW}:i_secs_since_last"],
                 user_id=[user], category_id=[category], item_id=[item])
    assert (got["uc_clicks_24h"], got["uc_affinity"], got["i_ctr"], got["i_secs_since_last"]) == (
        [3.0], [0.75], [4.0], [6.0])
    assert writer.stats.rows_written == {USER_VIEW: 1, USER_CATEGORY_VIEW: 1, ITEM_VIEW: 1}


def test_newest_event_time_wins_end_to_end(run, tag):
    settings, store = run
    writer = FeastStoreWriter(store, settings)
    items = [tag + str(k) for k in range(3)]
    for order in ([30, 10, 20], [10, 30, 20], [20, 10, 30]):
        item = items.pop()
        for t in order:
            writer.add(ITEM_VIEW, (item,), {"i_clicks_24h": float(t)} | {
                n: 0.0 for n in ["i_impressions_24h", "i_clicks_1h", "i_purchases_24h", "i_ctr",
                                 "i_cvr", "i_secs_since_last"]}, T0 + t)
    assert writer.pending == 3
    writer.flush()
    response = store.get_online_features(features=[f"{ITEM_VIEW}:i_clicks_24h"],
                                         entity_rows={"item_id": [tag + str(k) for k in range(3)]})
    assert response.to_dict()["i_clicks_24h"] == [30.0, 30.0, 30.0]
    stamp = response.proto.results[1].event_timestamps[0]
    assert stamp.seconds * 1000 + stamp.nanos // 1_000_000 == T0 + 30
    assert (writer.stats.rows_received, writer.stats.total_written) == (9, 3)
    assert len(writer.stats.recent_lags_ms) == 3 and min(writer.stats.recent_lags_ms) > 0


def test_flush_triggers_on_size_and_on_age(run, tag):
    settings, store = run
    now = [0.0]
    writer = FeastStoreWriter(store, settings.model_copy(update={"feast_batch_rows": 4,
                                                              "feast_flush_ms": 200}),
                           clock=lambda: now[0])
    row = {"uc_clicks_24h": 1.0, "uc_purchases_24h": 0.0, "uc_affinity": 0.5}
    flushed = [writer.add(USER_CATEGORY_VIEW, (tag + "u", f"c{k}"), row, T0) for k in range(4)]
    assert flushed == [0, 0, 0, 4]
    writer.add(USER_CATEGORY_VIEW, (tag + "u", "late"), row, T0)
    now[0] = 0.150
    assert writer.maybe_flush() == 0 and writer.pending == 1
    assert writer.maybe_flush(now_ms=now[0] * 1000 + 60) == 1
    got = online(store, [f"{USER_CATEGORY_VIEW}:uc_affinity"], user_id=[tag + "u"] * 5,
                 category_id=["c0", "c1", "c2", "c3", "late"])
    assert got["uc_affinity"] == [0.5] * 5
    assert (writer.stats.batches, writer.stats.last_batch_rows) == (2, 1)


def test_offline_log_holds_the_written_rows_for_point_in_time_reads(run, tag):
    settings, store = run
    writer = FeastStoreWriter(store, settings)
    item = tag + "i"
    for t in (1, 2):  # two flushes: two parquet files, two versions of the row
        writer.add(ITEM_VIEW, (item,), {n: float(t) for n in [
            "i_impressions_24h", "i_clicks_1h", "i_clicks_24h", "i_purchases_24h", "i_ctr",
            "i_cvr", "i_secs_since_last"]}, T0 + t * HOUR_MS)
        writer.flush()
    log = pd.read_parquet(offline_dir(settings) / ITEM_VIEW)
    assert sorted(log.loc[log.item_id == item, "i_ctr"]) == [1.0, 2.0]
    user = FeatureComputer()
    for n, kind in enumerate(["purchase", "click"]):  # no clicked items yet, then one
        writer.add_rows(user.apply(Event(event_id=str(n), event_type=kind, user_id=tag + "u",
                                         item_id=item, event_time=T0 + n)))
        writer.flush()
    users = pd.read_parquet(offline_dir(settings) / USER_VIEW)
    assert [list(x) for x in users.sort_values("event_timestamp").last_items] == [[], [item]]
    entity_df = pd.DataFrame({"item_id": [item, item], "event_timestamp": pd.to_datetime(
        [T0 + 90 * 60_000, T0 + 3 * HOUR_MS], unit="ms", utc=True)})
    history = store.get_historical_features(
        entity_df=entity_df, features=[f"{ITEM_VIEW}:i_ctr"]).to_df()
    assert sorted(history["i_ctr"]) == [1.0, 2.0]


def test_read_features_equals_the_job_state_read_at_request_time(run, tag):
    """Rows of a Taobao replay, written and read back, give the in-memory state's features."""
    settings, store = run
    sample = pd.read_csv(settings.sample_log, header=None,
                         nrows=3_000, dtype=str, names=["u", "i", "c", "b", "ts"])
    kinds = {"pv": "click", "cart": "add_to_cart", "fav": "favourite", "buy": "purchase"}
    computer, writer = FeatureComputer(), FeastStoreWriter(store, settings)
    for n, r in enumerate(sample.itertuples()):
        event = Event(event_id=str(n), event_type=kinds[r.b], user_id=tag + r.u,
                      item_id=tag + r.i, category_id=tag + r.c, event_time=int(r.ts) * 1000)
        writer.add_rows(computer.apply(event))
    writer.flush()
    assert writer.stats.rows_received == 3 * len(sample) > writer.stats.total_written

    user = max(computer.users, key=lambda u: len(computer.users[u].last_items))
    items = list(computer.users[user].last_items) + [tag + "never-seen"]
    categories = [None if i.endswith("never-seen") else sample.c[sample.i == i[len(tag):]].iloc[0]
                  for i in items]
    categories = [tag + c if c is not None else None for c in categories]
    t = int(sample.ts.astype(int).max()) * 1000 + 2 * HOUR_MS
    got = read_features(store, user, items, categories, t_ms=t)

    u = computer.users[user]
    for row, item, category in zip(got, items, categories):
        uc = computer.user_categories.get((user, category)) or UserCategoryState()
        want = (user_features(u, t) | item_features(computer.items.get(item) or ItemState(), t)
                | user_category_features(uc, u, category, t))
        assert list(row) == list(DENSE_FEATURES)
        assert row == pytest.approx({k: want[k] for k in DENSE_FEATURES}, rel=1e-9, abs=1e-12)
    assert got[0]["uc_in_last_categories"] == 1.0 and got[0]["u_secs_since_last"] > 7_000
    assert got[-1]["i_secs_since_last"] == user_features(UserState(), t)["u_secs_since_last"]


def test_writer_rows_and_write_to_online_store_rows_read_back_the_same(run, tag):
    """The same rows, written by FeastStoreWriter and by write_to_online_store under keys of
    their own, are indistinguishable to get_online_features and to the store's own reads."""
    settings, store = run
    computer = FeatureComputer()
    computed = {(r.view, r.key): r for n, (u, kind, i, c) in enumerate(
        [("u1", "purchase", "i1", "c1"), ("u2", "click", "i1", "c1"),
         ("u2", "click", "i2", "c2"), ("u1", "add_to_cart", "i2", "c2")])
        for r in computer.apply(Event(event_id=str(n), event_type=kind, user_id=tag + u,
                                      item_id=tag + i, category_id=tag + c,
                                      event_time=T0 + 1_500 * n))}
    rows = {side: [r._replace(key=tuple(f"{side}-{k}" for k in r.key))
                   for r in computed.values()] for side in ("fast", "frame")}
    writer = FeastStoreWriter(store, settings)
    writer.add_rows(rows["fast"])
    assert writer.flush() == len(computed) == 8
    specs = view_specs(store)
    for view, spec in specs.items():
        store.write_to_online_store(view, rows_frame(spec, [r for r in rows["frame"]
                                                            if r.view == view]))

    def read(side: str) -> dict[str, tuple[list, list, list]]:
        pairs = [("u1", "i1", "c1"), ("u2", "i2", "c2"), ("u1", "i2", "c2")]
        response = store.get_online_features(features=FEATURE_REFS, entity_rows={
            name: [f"{side}-{tag}{p[k]}" for p in pairs]
            for k, name in enumerate(["user_id", "item_id", "category_id"])}).proto
        return {name: (list(r.values), list(r.statuses), list(r.event_timestamps))
                for name, r in zip(response.metadata.feature_names.val, response.results)
                if not name.endswith("_id")}

    fast = read("fast")
    assert len(fast) == len(FEATURE_REFS) and fast == read("frame")
    assert all(statuses == [FieldStatus.PRESENT] * 3 for _, statuses, _ in fast.values())
    assert [list(v.string_list_val.val) for v in fast["last_items"][0]] == [
        [], [tag + "i2", tag + "i1"], []]
    for view, spec in specs.items():
        read_back = [store.provider.online_read(store.config, spec.view, [
            spec.online_rows([r])[0][0] for r in rows[side] if r.view == view])
            for side in ("fast", "frame")]
        assert read_back[0] == read_back[1] and all(ts is not None for ts, _ in read_back[0])


def test_offline_log_waits_for_its_bounds_or_an_explicit_flush(run, tag):
    settings, store = run
    now = [0.0]
    writer = FeastStoreWriter(store, settings.model_copy(update={"feast_batch_rows": 2}),
                           clock=lambda: now[0], offline_flush_rows=4, offline_flush_ms=1_000)
    values = {name: 1.0 for name in ["i_impressions_24h", "i_clicks_1h", "i_clicks_24h",
                                     "i_purchases_24h", "i_ctr", "i_cvr", "i_secs_since_last"]}
    with pytest.raises(KeyError, match="i_ctr"):
        writer.add(ITEM_VIEW, (tag + "bad",), {"i_clicks_24h": 1.0}, T0)
    assert writer.pending == 0 and writer.stats.rows_received == 0

    def parts() -> int:
        return len(list((offline_dir(settings) / ITEM_VIEW).glob("*.parquet")))

    flushed = [writer.add(ITEM_VIEW, (f"{tag}{k}",), values, T0 + k) for k in range(3)]
    assert flushed == [0, 2, 0] and parts() == 0  # online, not yet in the log
    assert online(store, [f"{ITEM_VIEW}:i_ctr"], item_id=[tag + "1"])["i_ctr"] == [1.0]
    assert writer.add(ITEM_VIEW, (f"{tag}3",), values, T0 + 3) == 2 and parts() == 1  # 4 rows
    writer.add(ITEM_VIEW, (f"{tag}4",), values, T0 + 4)
    writer.add(ITEM_VIEW, (f"{tag}5",), values, T0 + 5)
    assert parts() == 1
    assert writer.maybe_flush(now_ms=1_500) == 0 and parts() == 2  # buffered 1.5 s: due
    writer.add(ITEM_VIEW, (f"{tag}6",), values, T0 + 6)
    writer.flush()
    log = pd.read_parquet(offline_dir(settings) / ITEM_VIEW)
    assert sorted(log.item_id) == [f"{tag}{k}" for k in range(7)]
    assert (parts(), writer.stats.offline_files, writer.stats.total_written) == (3, 3, 7)


def _random_values(spec: ViewSpec, rng: random.Random) -> dict[str, object]:
    floats = [0.0, -0.0, float("nan"), 1e300, -2.5e-310, 1.0]
    out: dict[str, object] = {}
    for f in spec.view.features:
        if f.dtype.to_value_type() == ValueType.STRING_LIST:
            out[f.name] = ["".join(rng.choice("ab\u00e9\u4e2d\U0001f600") for _ in range(3))
                           for _ in range(rng.randrange(4))]
        else:
            out[f.name] = rng.choice(floats) if rng.random() < 0.3 else rng.uniform(-1e6, 1e6)
    return out


def test_the_fast_online_write_stores_the_bytes_feast_stores(run, tag):
    """RedisOnlineWriter writes the hashes Feast's own online_write_batch writes, byte for byte,
    with the same key expiry, for random rows of every view."""
    settings, store = run
    rng = random.Random(11)
    fast = RedisOnlineWriter.for_store(store)
    assert fast is not None
    client = Redis.from_url(settings.redis_url)
    project = store.config.project
    for view, spec in view_specs(store).items():
        rows = [FeatureRow(view, tuple(f"{tag}{n}-{k}" for k in spec.join_keys),
                           _random_values(spec, rng), T0 + rng.randrange(10**9))
                for n in range(30)]
        assert fast.write(view, rows) == len(rows)
        feast_rows = [r._replace(key=tuple("feast-" + k for k in r.key)) for r in rows]
        store.provider.online_write_batch(store.config, spec.view, spec.online_rows(feast_rows),
                                          None)
        for ours, theirs in zip(rows, feast_rows):
            a = redis_key(spec.join_keys, ours.key, project)
            b = redis_key(spec.join_keys, theirs.key, project)
            assert client.hgetall(a) == client.hgetall(b) != {}
            assert abs(client.ttl(a) - client.ttl(b)) <= 2 and client.ttl(a) > 0


def test_the_fast_online_write_keeps_the_newest_row(run, tag):
    """An older row does not overwrite a newer one; a row of the same event time does (the
    later of two rows of one millisecond holds the later state; Feast's own write keeps the
    first)."""
    settings, store = run
    fast = RedisOnlineWriter.for_store(store)
    spec = view_specs(store)[ITEM_VIEW]
    rng = random.Random(3)
    key = (tag + "i1",)
    first = FeatureRow(ITEM_VIEW, key, _random_values(spec, rng), T0 + 5_000)
    older = first._replace(values=_random_values(spec, rng), event_time_ms=T0 + 4_999)
    same = first._replace(values=_random_values(spec, rng))
    newer = first._replace(values={n: i + 0.5 for i, n in enumerate(spec.features)},
                           event_time_ms=T0 + 7_000)
    client = Redis.from_url(settings.redis_url)

    def stored() -> dict[bytes, bytes]:
        return client.hgetall(redis_key(spec.join_keys, key, store.config.project))

    assert fast.write(ITEM_VIEW, [first]) == 1
    after_first = stored()
    assert fast.write(ITEM_VIEW, [older]) == 0 and stored() == after_first
    assert fast.write(ITEM_VIEW, [same]) == 1 and stored() != after_first
    assert fast.write(ITEM_VIEW, [newer]) == 1
    values = online(store, [f"{ITEM_VIEW}:{n}" for n in spec.features], item_id=[key[0]])
    assert {n: values[n][0] for n in spec.features} == newer.values
