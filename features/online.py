"""The model's online inputs for a ranking request, read from Feast's online store.

One ``get_online_features`` call fetches the user row, every candidate's item row and every
(user, category) row: the stored values that state is rebuilt from
(:data:`features.rows.STATE_FIELDS`), named as feature references (cheaper than resolving the
``ranker`` feature service from the registry on every request).
Each row is turned back into state as of its own event timestamp (:mod:`features.rows`) and
read at the request time as the example builder reads its state for an impression
(:class:`features.example_builder.ExampleBuilder`): the state expiry :func:`features.state.alive`
(``feature_state_ttl_ms``), then :func:`~features.state.user_features` for the user, and the
numpy ports of :func:`~features.state.item_features` and
:func:`~features.state.user_category_features` (:mod:`features.columns`) for all candidates
at once; counters decay and recency grow exactly as if the state were read in the job. The
user's recent clicked items and categories (the model's pooled history) are the user row's
``last_items``/``last_categories``, newest first, as
:meth:`~features.example_builder.ExampleBuilder.recent` gives them to an example. A missing or expired
row reads as a fresh state; ``uc_affinity`` and ``uc_in_last_categories`` come from the
current user row; a candidate without a category has no (user, category) state.

:func:`read_features` is the plain Feast SDK path; :class:`OnlineFeatureReader` is the
scorer's (one read through Feast's Redis online store, item rows cached briefly).
"""

from __future__ import annotations

import functools
import itertools
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from feast.infra.key_encoding_utils import serialize_entity_key_prefix
from feast.protos.feast.serving.ServingService_pb2 import FieldStatus
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value, ValueType
from google.protobuf.timestamp_pb2 import Timestamp
from redis import Redis

from features.columns import (
    FRESH_ITEM,
    FRESH_USER_CATEGORY,
    item_feature_columns,
    item_vector,
    user_category_feature_columns,
    user_category_vector,
)
from features.rows import (
    DEFAULT_TTL_MS,
    ITEM_VIEW,
    JOIN_KEYS,
    STATE_FIELDS,
    USER_CATEGORY_VIEW,
    USER_VIEW,
    item_state,
    user_category_state,
    user_state,
)
from features.schema import DENSE_FEATURES, ITEM_FEATURES, USER_FEATURES
from features.state import UserState, alive, user_features

if TYPE_CHECKING:
    from feast import FeatureStore
    from feast.online_response import OnlineResponse

VIEW_FEATURES: dict[str, tuple[str, ...]] = STATE_FIELDS
"""The stored features read of each view: those its state is rebuilt from."""
FEATURE_REFS: list[str] = [f"{view}:{name}" for view, names in VIEW_FEATURES.items()
                           for name in names]
_MISSING = (FieldStatus.NOT_FOUND, FieldStatus.NULL_VALUE, FieldStatus.INVALID)
_ITEM_COLUMNS = slice(len(USER_FEATURES), len(USER_FEATURES) + len(ITEM_FEATURES))
_USER_CATEGORY_COLUMNS = slice(_ITEM_COLUMNS.stop, len(DENSE_FEATURES))


Row = tuple[dict[str, Any], int] | None
"""A stored row (feature values, event time in ms) or None when absent."""
Vector = tuple[float, ...]
"""A state as floats (:func:`features.columns.item_vector`, ``user_category_vector``)."""


class OnlineInputs(NamedTuple):
    """What the model reads from the online store for one request: the dense features of each
    candidate (``N X len(DENSE_FEATURES)``, float64, :data:`~features.schema.DENSE_FEATURES`
    order) and the user's recent clicked items and categories, newest first (a training
    example's ``recent_items`` and ``recent_categories``)."""

    dense: np.ndarray
    recent_items: tuple[str, ...] = ()
    recent_categories: tuple[str, ...] = ()

    @property
    def features(self) -> list[dict[str, float]]:
        """Each candidate's dense features by name (a training example's ``features``)."""
        return [dict(zip(DENSE_FEATURES, row)) for row in self.dense.tolist()]


def inputs_from_vectors(user: UserState | None, items: Sequence[Vector],
                        user_categories: Sequence[Vector], category_ids: Sequence[str | None],
                        t: int, ttl_ms: int = DEFAULT_TTL_MS) -> OnlineInputs:
    """The inputs of showing each candidate to ``user`` at ``t``, read as the example builder
    reads its state for an impression at ``t`` (``ExampleBuilder.user_side``, ``recent`` and
    the item part): each state through :func:`~features.state.alive` first, a missing or
    expired one fresh. ``items[j]`` and ``user_categories[j]`` are candidate ``j``'s states as
    floats (:data:`~features.columns.FRESH_ITEM`, ``FRESH_USER_CATEGORY``: no state).

    >>> from features.state import DAY_MS, apply_user
    >>> u = apply_user(UserState(), "click", 0, "i1", "c1")
    >>> x = inputs_from_vectors(u, [FRESH_ITEM], [FRESH_USER_CATEGORY], ["c1"], 1_000)
    >>> x.dense.shape == (1, len(DENSE_FEATURES)), x.recent_items, x.recent_categories
    (True, ('i1',), ('c1',))
    >>> inputs_from_vectors(u, [FRESH_ITEM], [FRESH_USER_CATEGORY], ["c1"], 3 * DAY_MS,
    ...                     ttl_ms=2 * DAY_MS).recent_items
    ()
    """
    u = alive(user, t, ttl_ms) or UserState()
    base = user_features(u, t)
    dense = np.empty((len(items), len(DENSE_FEATURES)))
    dense[:, :len(USER_FEATURES)] = [base[name] for name in USER_FEATURES]
    dense[:, _ITEM_COLUMNS] = item_feature_columns(
        np.array(items, dtype=np.float64).reshape(len(items), -1), t, ttl_ms)
    dense[:, _USER_CATEGORY_COLUMNS] = user_category_feature_columns(
        np.array(user_categories, dtype=np.float64).reshape(len(items), -1), u, category_ids,
        t, ttl_ms)
    return OnlineInputs(dense, u.last_items, u.last_categories)


def no_inputs(category_ids: Sequence[str | None], t: int) -> OnlineInputs:
    """The inputs of candidates when nothing is known of the user or the items (fresh states):
    what a scorer uses when the online store cannot be read."""
    n = len(category_ids)
    return inputs_from_vectors(None, [FRESH_ITEM] * n, [FRESH_USER_CATEGORY] * n,
                               category_ids, t)


def _item(row: Row) -> Vector:
    return item_vector(item_state(*row)) if row else FRESH_ITEM


def _user_category(row: Row) -> Vector:
    """A (user, category) row back as state, its last event time the row's time (the row is
    written as of the user's latest event when the pair's own event came: the pair's latest
    event time unless that event was out of order), so that :func:`alive` can expire it."""
    if row is None:
        return FRESH_USER_CATEGORY
    return (*user_category_vector(user_category_state(*row))[:-1], float(row[1]))


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


def read_inputs(
    store: FeatureStore,
    user_id: str,
    item_ids: Sequence[str],
    category_ids: Sequence[str | None],
    t_ms: int | None = None,
    ttl_ms: int = DEFAULT_TTL_MS,
) -> OnlineInputs:
    """The inputs (:class:`OnlineInputs`) of showing each item to the user at ``t_ms``.

    ``category_ids[j]`` is item ``j``'s category (None if unknown). ``t_ms`` defaults to the
    wall clock; pass the request's event time when replaying a log. ``ttl_ms``: the state
    expiry (``settings.feature_state_ttl_ms``).
    """
    if len(item_ids) != len(category_ids):
        raise ValueError("item_ids and category_ids must have the same length")
    t = int(time.time() * 1000) if t_ms is None else t_ms
    if not item_ids:
        return OnlineInputs(np.empty((0, len(DENSE_FEATURES))))
    n = len(item_ids)
    response = store.get_online_features(
        features=FEATURE_REFS,
        entity_rows={"user_id": [user_id] * n, "item_id": list(item_ids),
                     "category_id": [c if c is not None else "" for c in category_ids]},
    )
    user_r = _rows(response, USER_VIEW, 1)[0]
    return inputs_from_rows(user_r, _rows(response, ITEM_VIEW, n),
                            _rows(response, USER_CATEGORY_VIEW, n), category_ids, t, ttl_ms)


def read_features(
    store: FeatureStore,
    user_id: str,
    item_ids: Sequence[str],
    category_ids: Sequence[str | None],
    t_ms: int | None = None,
    ttl_ms: int = DEFAULT_TTL_MS,
) -> list[dict[str, float]]:
    """Dense features (DENSE_FEATURES order) of showing each item to the user at ``t_ms``:
    :func:`read_inputs`' ``features``."""
    return read_inputs(store, user_id, item_ids, category_ids, t_ms, ttl_ms).features


def inputs_from_rows(user_r: Row, item_rs: Sequence[Row], uc_rs: Sequence[Row],
                     category_ids: Sequence[str | None], t: int,
                     ttl_ms: int = DEFAULT_TTL_MS) -> OnlineInputs:
    """Rows turned back into state as of their own times, then read at ``t`` by
    :func:`inputs_from_vectors` (a missing row: no state)."""
    return inputs_from_vectors(
        user_state(*user_r) if user_r else None, [_item(r) for r in item_rs],
        [_user_category(r) if c is not None else FRESH_USER_CATEGORY
         for c, r in zip(category_ids, uc_rs)], category_ids, t, ttl_ms)


class OnlineFeatureReader:
    """The serving path: one Redis pipeline per request through Feast's Redis online store,
    with item rows cached for ``item_cache_ttl_ms``.

    Keys and field names are Feast's own (``RedisOnlineStore``'s key and field encoders), so
    any Feast writer's rows are read; what is skipped is the response protos and the per-call
    registry work of ``get_online_features``. One read per request fetches the user row, the
    (user, category) rows and the item rows not in the cache: the ``HMGET`` of each row, all
    in one server-side script call (:data:`HMGET_ALL`) on a single Redis, Feast's pipelined
    read (``_read_hash_fields``) on a cluster, whose keys may live on several nodes. The cache
    holds the item's state turned back from its row (as floats), which is exact at any later
    time (aged at read time); it misses at most the item's events of the last
    ``item_cache_ttl_ms``; the state expiry (``state_ttl_ms``) is applied at every read, not
    when caching. The cache holds at most ``max_cached_items`` rows.
    """

    def __init__(self, store: FeatureStore, item_cache_ttl_ms: float,
                 max_cached_items: int = 100_000,
                 clock: Callable[[], float] = time.monotonic,
                 state_ttl_ms: int = DEFAULT_TTL_MS) -> None:
        from feast.infra.online_stores.redis import RedisOnlineStore

        online = store._get_provider().online_store  # noqa: SLF001 - Feast's configured store
        if not isinstance(online, RedisOnlineStore):
            raise TypeError(f"the serving path reads Feast's Redis online store, not {online!r}")
        self._store, self._online, self._config = store, online, store.config
        self._ttl_s = item_cache_ttl_ms / 1000.0
        self._state_ttl = state_ttl_ms
        self._max_cached = max_cached_items
        self._clock = clock
        self._items: dict[str, tuple[float, Vector]] = {}
        self._key_bytes: dict[str, dict[tuple[str, ...], bytes]] = {v: {} for v in VIEW_FEATURES}
        self._fields: dict[str, tuple[list[str], list[str | bytes]]] = {}
        client = online._get_client(self._config.online_store)  # noqa: SLF001
        self._script = client.register_script(HMGET_ALL) if isinstance(client, Redis) else None
        for view in VIEW_FEATURES:
            fv = store.get_feature_view(view)
            names, fields = online._generate_hset_keys_for_features(  # noqa: SLF001
                fv, list(VIEW_FEATURES[view]))
            self._fields[view] = (names, fields)
        self.cache_hits = 0
        self.cache_misses = 0

    def _keys(self, view: str, keys: Sequence[tuple[str, ...]]) -> list[bytes]:
        join_keys = JOIN_KEYS[view]
        if self._config.entity_key_serialization_version == 3:
            return redis_keys(join_keys, keys, self._config.project)
        protos = [EntityKeyProto(join_keys=list(join_keys),
                                 entity_values=[Value(string_val=v) for v in key])
                  for key in keys]
        return self._online._generate_redis_keys_for_entities(self._config, protos)  # noqa: SLF001

    def read(self, user_id: str, item_ids: Sequence[str], category_ids: Sequence[str | None],
             t_ms: int | None = None) -> OnlineInputs:
        """The inputs of showing each item to the user at ``t_ms`` (default: now), equal to
        :func:`read_inputs`' for the same stored rows."""
        if len(item_ids) != len(category_ids):
            raise ValueError("item_ids and category_ids must have the same length")
        if not item_ids:
            return OnlineInputs(np.empty((0, len(DENSE_FEATURES))))
        t = int(time.time() * 1000) if t_ms is None else t_ms
        now = self._clock()
        states: dict[str, Vector] = {}
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
        replies = self._hmget(commands)
        self._make_room(len(missing), now)
        item_names = self._fields[ITEM_VIEW][0]
        for item, reply in zip(missing, replies[1:1 + len(missing)]):
            states[item] = _item(_decode(item_names, reply))
            self._items[item] = (now, states[item])
        user_r = _decode(self._fields[USER_VIEW][0], replies[0])
        uc_names = self._fields[USER_CATEGORY_VIEW][0]
        ucs: dict[str | None, Vector] = {None: FRESH_USER_CATEGORY}
        for c, reply in zip(categories, replies[1 + len(missing):]):
            ucs[c] = _user_category(_decode(uc_names, reply))
        return inputs_from_vectors(user_state(*user_r) if user_r else None,
                                   [states[i] for i in item_ids],
                                   [ucs[c] for c in category_ids], category_ids, t,
                                   self._state_ttl)

    def _hmget(self, commands: list[tuple[bytes, list[str | bytes]]]) -> list[Any]:
        """One ``HMGET`` reply per ``(key, fields)``, in order, in one round trip (None or
        the fields' values)."""
        if self._script is None:
            return self._online._read_hash_fields(self._config, commands)  # noqa: SLF001
        keys, args = script_arguments(commands)
        return self._script(keys=keys, args=args)

    def _cached_keys(self, view: str, keys: Sequence[tuple[str, ...]]) -> list[bytes]:
        """Feast's Redis keys of ``view``'s rows (kept: encoding one costs more than reading
        it; at most ``2 * max_cached_items`` are kept). A cache emptied to make room keeps
        this call's keys, so that none of them is looked up after being dropped."""
        caches = self._key_bytes
        cache = caches[view]
        new = [k for k in keys if k not in cache]
        if new and sum(map(len, caches.values())) + len(new) > 2 * self._max_cached:
            for held in caches.values():
                held.clear()
            new = list(keys)
        if new:
            cache.update(zip(new, self._keys(view, new)))
        return list(map(cache.__getitem__, keys))

    def _make_room(self, n: int, now: float) -> None:
        if len(self._items) + n > self._max_cached:
            self._items = {k: e for k, e in self._items.items() if now - e[0] < self._ttl_s}
            if len(self._items) + n > self._max_cached:
                self._items.clear()


def script_arguments(commands: Sequence[tuple[bytes, list[str | bytes]]]
                     ) -> tuple[list[bytes], list[int | str | bytes]]:
    """The keys and arguments of :data:`HMGET_ALL` for ``(key, fields)`` commands (those of a
    group of consecutive commands share one ``fields`` list object)."""
    keys: list[bytes] = []
    args: list[int | str | bytes] = []
    for _, group in itertools.groupby(commands, key=lambda c: id(c[1])):
        rows = list(group)
        fields = rows[0][1]
        keys += [key for key, _ in rows]
        args += [len(rows), len(fields), *fields]
    return keys, args


def redis_key(join_keys: Sequence[str], values: Sequence[str], project: str) -> bytes:
    """The Redis key of a row of string entity keys in Feast's layout, entity key
    serialisation version 3: Feast's ``_redis_key(project, EntityKey(join_keys, values))``.

    Feast builds ``EntityKey`` and ``Value`` protos for every key (≈ 20 µs each; a request
    needs one per (user, category) pair, rarely the same twice); this writes the same bytes:
    Feast's own encoding of the sorted join keys, then each value's type, length and UTF-8
    bytes, then the project (checked against Feast in ``tests/unit/test_online_keys.py``).
    """
    return redis_keys(join_keys, [values], project)[0]


def redis_keys(join_keys: Sequence[str], rows: Iterable[Sequence[str]],
               project: str) -> list[bytes]:
    """:func:`redis_key` of each row of values, the shared parts encoded once."""
    order = sorted(range(len(join_keys)), key=join_keys.__getitem__)
    prefix = _key_prefix(tuple(join_keys[i] for i in order))
    tail = project.encode("utf8")
    length = _LENGTH.pack
    out = []
    for r in rows:
        parts = [prefix]
        for i in order:
            raw = r[i].encode("utf8")
            parts += (_STRING_TYPE, length(len(raw)), raw)
        parts.append(tail)
        out.append(b"".join(parts))
    return out


@functools.lru_cache(maxsize=64)
def _key_prefix(sorted_join_keys: tuple[str, ...]) -> bytes:
    return serialize_entity_key_prefix(list(sorted_join_keys), entity_key_serialization_version=3)


_STRING_TYPE = struct.pack("<I", ValueType.STRING)
_LENGTH = struct.Struct("<I")


def _decode(names: Sequence[str], values: Sequence[bytes | None] | None) -> Row:
    """One HMGET reply (features then the ``_ts:<view>`` field) as a row, None if absent
    (no timestamp, or no reply: :data:`HMGET_ALL`)."""
    if not values or not values[-1]:
        return None
    ts_bytes = values[-1]
    ts = Timestamp()
    ts.ParseFromString(ts_bytes)
    row: dict[str, Any] = {}
    for name, raw in zip(names, values):
        if raw is not None and len(raw) == 9 and raw[0] == DOUBLE_TAG:
            row[name] = _DOUBLE.unpack_from(raw, 1)[0]  # a serialised Value holding a double
            continue
        value = Value()
        if raw:
            value.ParseFromString(raw)
        row[name] = _value(value)
    return row, ts.seconds * 1000 + ts.nanos // 1_000_000


HMGET_ALL = """
-- KEYS: hashes; ARGV: per group of consecutive keys, its key count, field count and fields
local out, k, a = {}, 1, 1
while a <= #ARGV do
  local nkeys, nfields = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local fields = {unpack(ARGV, a + 2, a + 1 + nfields)}
  for _ = 1, nkeys do
    local row = redis.call('HMGET', KEYS[k], unpack(fields))
    out[k] = row[nfields] and row or false  -- no timestamp: no row, one nil in the reply
    k = k + 1
  end
  a = a + 2 + nfields
end
return out
"""
"""Every ``HMGET`` of a read in one call: the server runs them back to back and the client
parses one reply, instead of a pipeline's per-command Python work (≈ 6x less CPU in the
scorer for a 146-row read); a row without its timestamp field (absent) comes back as one nil.
Read only, so safe on replicas and under ``SCRIPT KILL``. The last field of each group must
be the view's ``_ts:<view>`` field."""

_DOUBLE = struct.Struct("<d")
DOUBLE_TAG = (Value.DESCRIPTOR.fields_by_name["double_val"].number << 3) | 1
"""A ``Value`` whose oneof is ``double_val`` serialises as this key byte (field number, wire
type 1: 64-bit) and the double's 8 little-endian bytes; anything else goes through the proto."""


class SdkFeatureReader:
    """The plain path, :func:`read_features` (``get_online_features``) per request, behind
    the same interface as :class:`OnlineFeatureReader`: for any Feast online store, and the
    baseline the scorer benchmark compares with."""

    def __init__(self, store: FeatureStore, state_ttl_ms: int = DEFAULT_TTL_MS) -> None:
        self._store = store
        self._state_ttl = state_ttl_ms
        self.cache_hits = 0
        self.cache_misses = 0

    def read(self, user_id: str, item_ids: Sequence[str], category_ids: Sequence[str | None],
             t_ms: int | None = None) -> OnlineInputs:
        """:func:`read_inputs` of the request."""
        self.cache_misses += len(item_ids)
        return read_inputs(self._store, user_id, item_ids, category_ids, t_ms, self._state_ttl)


def user_row_time(store: FeatureStore, user_id: str) -> int | None:
    """The event time (ms) of ``user_id``'s row in the online store, ``None`` if it has none."""
    response = store.get_online_features(
        features=[f"{USER_VIEW}:{name}" for name in VIEW_FEATURES[USER_VIEW]],
        entity_rows=[{"user_id": user_id}])
    row = _rows(response, USER_VIEW, 1)[0]
    return None if row is None else row[1]
