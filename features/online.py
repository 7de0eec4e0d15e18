"""Dense features for a ranking request, read from Feast's online store.

One ``get_online_features`` call fetches the user row, every candidate's item row and every
(user, category) row: the features of the ``ranker`` feature service, named as feature
references (cheaper than resolving the service object from the registry on every request).
Each row is turned back into state as of its own event timestamp (:mod:`features.rows`) and
read at the request time by :func:`features.model_input.model_features_many`, the function that
gives training examples their features: counters decay and recency grow exactly as if the
state were read in the job. A missing row reads as a fresh state; ``uc_affinity`` and
``uc_in_last_categories`` come from the current user row.

:func:`read_features` is the plain Feast SDK path; :class:`OnlineFeatureReader` is the
scorer's (one pipelined read through Feast's Redis online store, item rows cached briefly).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from feast.protos.feast.serving.ServingService_pb2 import FieldStatus
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value
from google.protobuf.timestamp_pb2 import Timestamp

from features.rows import (
    ITEM_VIEW,
    JOIN_KEYS,
    USER_CATEGORY_STORED,
    USER_CATEGORY_VIEW,
    USER_LISTS,
    USER_VIEW,
    item_state,
    user_category_state,
    user_state,
)
from features.model_input import model_features_many
from features.schema import ITEM_FEATURES, USER_FEATURES
from features.state import ItemState, UserCategoryState, UserState

if TYPE_CHECKING:
    from feast import FeatureStore
    from feast.online_response import OnlineResponse

VIEW_FEATURES: dict[str, tuple[str, ...]] = {
    USER_VIEW: USER_FEATURES + USER_LISTS,
    ITEM_VIEW: ITEM_FEATURES,
    USER_CATEGORY_VIEW: USER_CATEGORY_STORED,
}
"""The stored features of each view (what the ``ranker`` service returns)."""
FEATURE_REFS: list[str] = [f"{view}:{name}" for view, names in VIEW_FEATURES.items()
                           for name in names]
_MISSING = (FieldStatus.NOT_FOUND, FieldStatus.NULL_VALUE, FieldStatus.INVALID)


def _value(value: Value) -> Any:
    """A stored value as Python (a float, a list of IDs, or None); cheaper than ``to_dict``."""
    kind = value.WhichOneof("val")
    if kind is None or kind == "null_val":
        return None
    if kind == "string_list_val":
        return list(value.string_list_val.val)
    return getattr(value, kind)


def _rows(response: OnlineResponse, view: str, n: int) -> list[tuple[dict[str, Any], int] | None]:
    """Per entity row: (feature values, event time in ms) of ``view``, or None if absent."""
    names = VIEW_FEATURES[view]
    index = {name: i for i, name in enumerate(response.proto.metadata.feature_names.val)}
    vectors = [response.proto.results[index[name]] for name in names]
    first = vectors[0]
    rows: list[tuple[dict[str, Any], int] | None] = []
    for j in range(n):
        if first.statuses[j] in _MISSING:
            rows.append(None)
            continue
        ts = first.event_timestamps[j]
        rows.append(({name: _value(vector.values[j]) for name, vector in zip(names, vectors)},
                     ts.seconds * 1000 + ts.nanos // 1_000_000))
    return rows


def read_features(
    store: FeatureStore,
    user_id: str,
    item_ids: Sequence[str],
    category_ids: Sequence[str | None],
    t_ms: int | None = None,
) -> list[dict[str, float]]:
    """Dense features (DENSE_FEATURES order) of showing each item to the user at ``t_ms``.

    ``category_ids[j]`` is item ``j``'s category (None if unknown). ``t_ms`` defaults to the
    wall clock; pass the request's event time when replaying a log.
    """
    if len(item_ids) != len(category_ids):
        raise ValueError("item_ids and category_ids must have the same length")
    if not item_ids:
        return []
    t = int(time.time() * 1000) if t_ms is None else t_ms
    n = len(item_ids)
    response = store.get_online_features(
        features=FEATURE_REFS,
        entity_rows={"user_id": [user_id] * n, "item_id": list(item_ids),
                     "category_id": [c if c is not None else "" for c in category_ids]},
    )
    user_r = _rows(response, USER_VIEW, 1)[0]
    return features_from_rows(user_r, _rows(response, ITEM_VIEW, n),
                           _rows(response, USER_CATEGORY_VIEW, n), category_ids, t)


Row = tuple[dict[str, Any], int] | None
"""A stored row (feature values, event time in ms) or None when absent."""


def features_from_rows(user_r: Row, item_rs: Sequence[Row], uc_rs: Sequence[Row],
                    category_ids: Sequence[str | None], t: int) -> list[dict[str, float]]:
    """Rows turned back into state as of their own times, then read at ``t`` by the function
    that gives training examples their features (:func:`features.model_input.model_features`).
    """
    user = user_state(*user_r) if user_r else UserState()
    candidates = [
        (item_state(*item_r) if item_r else ItemState(),
         user_category_state(*uc_r) if uc_r and category is not None else UserCategoryState(),
         category)
        for category, item_r, uc_r in zip(category_ids, item_rs, uc_rs)]
    return model_features_many(user, candidates, t)


class OnlineFeatureReader:
    """The serving path: one Redis pipeline per request through Feast's Redis online store,
    with item rows cached for ``item_cache_ttl_ms``.

    Keys, field names and the pipeline are Feast's own (``RedisOnlineStore``'s key and field
    encoders and its batched ``HMGET`` read, the one ``get_online_features`` uses), so any
    Feast writer's rows are read; what is skipped is the response protos and the per-call
    registry work of ``get_online_features``. One read per request fetches the user row, the
    (user, category) rows and the item rows not in the cache. The cache holds the item's state
    turned back from its row, which is exact at any later time (aged at read time); it misses
    at most the item's events of the last ``item_cache_ttl_ms``. The cache holds at most ``max_cached_items`` rows.
    """

    def __init__(self, store: FeatureStore, item_cache_ttl_ms: float,
                 max_cached_items: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        from feast.infra.online_stores.redis import RedisOnlineStore

        online = store._get_provider().online_store  # noqa: SLF001 - Feast's configured store
        if not isinstance(online, RedisOnlineStore):
            raise TypeError(f"the serving path reads Feast's Redis online store, not {online!r}")
        self._store, self._online, self._config = store, online, store.config
        self._ttl_s = item_cache_ttl_ms / 1000.0
        self._max_cached = max_cached_items
        self._clock = clock
        self._items: dict[str, tuple[float, ItemState]] = {}
        self._key_bytes: dict[tuple[str, tuple[str, ...]], bytes] = {}
        self._fields: dict[str, tuple[list[str], list[str | bytes]]] = {}
        for view in VIEW_FEATURES:
            fv = store.get_feature_view(view)
            names, fields = online._generate_hset_keys_for_features(  # noqa: SLF001
                fv, list(VIEW_FEATURES[view]))
            self._fields[view] = (names, fields)
        self.cache_hits = 0
        self.cache_misses = 0

    def _keys(self, view: str, keys: Sequence[tuple[str, ...]]) -> list[bytes]:
        join_keys = list(JOIN_KEYS[view])
        protos = [EntityKeyProto(join_keys=join_keys,
                                 entity_values=[Value(string_val=v) for v in key])
                  for key in keys]
        return self._online._generate_redis_keys_for_entities(self._config, protos)  # noqa: SLF001

    def read(self, user_id: str, item_ids: Sequence[str], category_ids: Sequence[str | None],
             t_ms: int | None = None) -> list[dict[str, float]]:
        """Dense features of showing each item to the user at ``t_ms`` (default: now), equal
        to :func:`read_features`'s for the same stored rows."""
        if len(item_ids) != len(category_ids):
            raise ValueError("item_ids and category_ids must have the same length")
        if not item_ids:
            return []
        t = int(time.time() * 1000) if t_ms is None else t_ms
        now = self._clock()
        states: dict[str, ItemState] = {}
        missing: list[str] = []
        for item in dict.fromkeys(item_ids):
            entry = self._items.get(item)
            if entry is not None and now - entry[0] < self._ttl_s:
                states[item] = entry[1]
            else:
                missing.append(item)
        self.cache_hits += len(states)
        self.cache_misses += len(missing)
        categories = [c for c in dict.fromkeys(category_ids) if c is not None]
        user_fields, item_fields, uc_fields = (self._fields[v][1] for v in VIEW_FEATURES)
        commands = [(self._cached_keys(USER_VIEW, [(user_id,)])[0], user_fields)]
        commands += [(key, item_fields)
                     for key in self._cached_keys(ITEM_VIEW, [(i,) for i in missing])]
        commands += [(key, uc_fields) for key in self._cached_keys(
            USER_CATEGORY_VIEW, [(user_id, c) for c in categories])]
        replies = self._online._read_hash_fields(self._config, commands)  # noqa: SLF001
        self._make_room(len(missing), now)
        for item, reply in zip(missing, replies[1:1 + len(missing)]):
            row = _decode(self._fields[ITEM_VIEW][0], reply)
            states[item] = item_state(*row) if row else ItemState()
            self._items[item] = (now, states[item])
        user_r = _decode(self._fields[USER_VIEW][0], replies[0])
        user = user_state(*user_r) if user_r else UserState()
        no_uc = UserCategoryState()
        ucs: dict[str | None, UserCategoryState] = {None: no_uc}
        for c, reply in zip(categories, replies[1 + len(missing):]):
            row = _decode(self._fields[USER_CATEGORY_VIEW][0], reply)
            ucs[c] = user_category_state(*row) if row else no_uc
        return model_features_many(user, [(states[i], ucs[c], c)
                                          for i, c in zip(item_ids, category_ids)], t)

    def _cached_keys(self, view: str, keys: Sequence[tuple[str, ...]]) -> list[bytes]:
        """Feast's Redis keys of ``view``'s rows (kept: encoding one costs more than reading
        it; at most ``2 * max_cached_items`` are kept)."""
        cache = self._key_bytes
        new = [k for k in keys if (view, k) not in cache]
        if new:
            if len(cache) + len(new) > 2 * self._max_cached:
                cache.clear()
            cache.update(zip(((view, k) for k in new), self._keys(view, new)))
        return [cache[(view, k)] for k in keys]

    def _make_room(self, n: int, now: float) -> None:
        if len(self._items) + n > self._max_cached:
            self._items = {k: e for k, e in self._items.items() if now - e[0] < self._ttl_s}
            if len(self._items) + n > self._max_cached:
                self._items.clear()


def _decode(names: Sequence[str], values: Sequence[bytes | None]) -> Row:
    """One HMGET reply (features then the ``_ts:<view>`` field) as a row, None if absent."""
    ts_bytes = values[-1]
    if not ts_bytes:
        return None
    ts = Timestamp()
    ts.ParseFromString(ts_bytes)
    row: dict[str, Any] = {}
    for name, raw in zip(names, values):
        if raw is not None and len(raw) == 9 and raw[0] == _DOUBLE_TAG:
            row[name] = _DOUBLE.unpack_from(raw, 1)[0]  # a serialised Value holding a double
            continue
        value = Value()
        if raw:
            value.ParseFromString(raw)
        row[name] = _value(value)
    return row, ts.seconds * 1000 + ts.nanos // 1_000_000


_DOUBLE = struct.Struct("<d")
_DOUBLE_TAG = (Value.DESCRIPTOR.fields_by_name["double_val"].number << 3) | 1
"""A ``Value`` whose oneof is ``double_val`` serialises as this key byte (field number, wire
type 1: 64-bit) and the double's 8 little-endian bytes; anything else goes through the proto."""


class SdkFeatureReader:
    """The plain path, :func:`read_features` (``get_online_features``) per request, behind
    the same interface as :class:`OnlineFeatureReader`: for any Feast online store, and the
    baseline the scorer benchmark compares with."""

    def __init__(self, store: FeatureStore) -> None:
        self._store = store
        self.cache_hits = 0
        self.cache_misses = 0

    def read(self, user_id: str, item_ids: Sequence[str], category_ids: Sequence[str | None],
             t_ms: int | None = None) -> list[dict[str, float]]:
        """:func:`read_features` of the request."""
        self.cache_misses += len(item_ids)
        return read_features(self._store, user_id, item_ids, category_ids, t_ms)
