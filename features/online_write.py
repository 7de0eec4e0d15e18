"""Feature rows into Feast's Redis online store, in Feast's own layout, without its per-row
Python work: the write half of :mod:`features.online`.

Feast's ``RedisOnlineStore.online_write_batch`` builds an ``EntityKey`` proto and a ``Value``
proto per feature per row, hashes each field name per row, reads every row's stored
timestamp in one pipeline and writes it in a second: ≈ 150 µs of CPU per row in the writer,
most of the Feast writer's time. :class:`RedisOnlineWriter` writes the same hashes (keys from
:func:`features.online.redis_key`, field names hashed once per view, doubles serialised as a
``Value`` by hand, other types through the ``Value`` proto) in one server-side script call per
batch (:data:`HSET_NEWER`) that keeps Feast's rule: a row older than the stored one is not
written, and the key's expiry is renewed (``key_ttl_seconds``). One difference, on purpose:
Feast also skips a row whose event time *equals* the stored one; this writes it, as the
writer's own coalescing does within a batch (rows of a key arrive in order on one partition,
so the later of two rows of one millisecond holds the later state). Checked byte for byte
against Feast's write in ``tests/integration/test_feast_store.py``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any

from feast import FeatureStore, FeatureView
from feast.infra.online_stores.helpers import _mmh3
from feast.infra.online_stores.redis import RedisOnlineStore, _versioned_fv_name
from feast.protos.feast.types.Value_pb2 import Value
from feast.type_map import PYTHON_LIST_VALUE_TYPE_TO_PROTO_VALUE as LIST_TYPES
from feast.type_map import PYTHON_SCALAR_VALUE_TYPE_TO_PROTO_VALUE as SCALAR_TYPES
from feast.types import FeastType
from feast.value_type import ValueType
from google.protobuf.timestamp_pb2 import Timestamp
from redis import Redis

from features.online import DOUBLE_TAG, redis_key
from features.rows import FeatureRow

HSET_NEWER = """
-- KEYS: hashes. ARGV: the view's timestamp field, the key TTL in seconds (0: none), then per
-- key: its row's timestamp seconds and nanos, the timestamp's bytes, its field count, then
-- fields and values. Writes a row unless the stored timestamp is newer; returns rows written.
local function stamp(b)
  local s, n, i = 0, 0, 1
  while i <= #b do
    local tag = string.byte(b, i)
    local v, m, c = 0, 1, 128
    i = i + 1
    while c >= 128 do
      c = string.byte(b, i)
      v = v + (c % 128) * m
      m = m * 128
      i = i + 1
    end
    if tag == 8 then s = v elseif tag == 16 then n = v end
  end
  return s, n
end
local tsf, ttl, a, written = ARGV[1], tonumber(ARGV[2]), 3, 0
for k = 1, #KEYS do
  local sec, nanos, n = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 3])
  local prev = redis.call('HGET', KEYS[k], tsf)
  local newer = true
  if prev then
    local ps, pn = stamp(prev)
    newer = sec > ps or (sec == ps and nanos >= pn)
  end
  if newer then
    redis.call('HSET', KEYS[k], tsf, ARGV[a + 2], unpack(ARGV, a + 4, a + 3 + 2 * n))
    if ttl > 0 then redis.call('EXPIRE', KEYS[k], ttl) end
    written = written + 1
  end
  a = a + 4 + 2 * n
end
return written
"""
"""One batch of a view's rows in one call. A ``Timestamp`` proto is its seconds (field 1)
and nanos (field 2) as varints; event times are after 1970 (``min_event_time_ms``), so
both are small non-negative integers, exact in Lua's numbers."""

_DOUBLE = struct.Struct("<Bd")
PLAIN_TYPES = frozenset({
    ValueType.INT32, ValueType.INT64, ValueType.FLOAT, ValueType.DOUBLE, ValueType.STRING,
    ValueType.BYTES, ValueType.INT32_LIST, ValueType.INT64_LIST, ValueType.FLOAT_LIST,
    ValueType.DOUBLE_LIST, ValueType.STRING_LIST, ValueType.BYTES_LIST,
})
"""Value types whose Python values Feast turns into protos without special cases (lists of
Python values, not arrays, and no None items)."""


def value_converter(dtype: FeastType) -> Callable[[Any], Value]:
    """Python value → Feast ``Value`` proto for a feature of type ``dtype``, as
    ``write_to_online_store`` converts it: None (and NaN) become an unset value.

    >>> from feast.types import Array, Float64, String
    >>> to_double, to_ids = value_converter(Float64), value_converter(Array(String))
    >>> to_double(0.5).double_val, to_double(float("nan")).WhichOneof("val")
    (0.5, None)
    >>> list(to_ids(["i2", "i1"]).string_list_val.val), to_ids([]).HasField("string_list_val")
    (['i2', 'i1'], True)
    """
    value_type = dtype.to_value_type()
    if value_type not in PLAIN_TYPES:
        raise TypeError(f"no direct proto conversion for feature type {dtype}")
    if value_type in LIST_TYPES:
        list_field = LIST_TYPES[value_type][1]

        def to_list(v: Any) -> Value:
            proto = Value()
            if v is not None:  # filled in place: twice as fast as building the list message
                items = getattr(proto, list_field)
                items.SetInParent()
                items.val.extend(v)
            return proto

        return to_list
    scalar_field, convert, _ = SCALAR_TYPES[value_type]
    return lambda v: Value() if v is None or v != v else Value(
        **{scalar_field: convert(v)})


def value_bytes(dtype: FeastType) -> Callable[[Any], bytes]:
    """Python value → the serialised Feast ``Value`` Feast's write stores for a feature of
    type ``dtype`` (None and NaN: an unset value, no bytes).

    >>> from feast.types import Array, Float64, String
    >>> to_double, to_ids = value_bytes(Float64), value_bytes(Array(String))
    >>> to_double(0.5) == Value(double_val=0.5).SerializeToString(), to_double(float("nan"))
    (True, b'')
    >>> Value.FromString(to_ids(["i2", "i1"])).string_list_val.val
    ['i2', 'i1']
    """
    if dtype.to_value_type() == ValueType.DOUBLE:
        pack = _DOUBLE.pack
        return lambda v: b"" if v is None or v != v else pack(DOUBLE_TAG, v)
    convert = value_converter(dtype)
    return lambda v: convert(v).SerializeToString()


def timestamp_args(event_time_ms: int) -> tuple[int, int, bytes]:
    """A row's event time as Feast stores it: seconds, nanos, the ``Timestamp``'s bytes."""
    seconds, ms = divmod(event_time_ms, 1000)
    nanos = ms * 1_000_000
    return seconds, nanos, Timestamp(seconds=seconds, nanos=nanos).SerializeToString()


class _View:
    """What a view's writes need, resolved once."""

    def __init__(self, fv: FeatureView, store: FeatureStore) -> None:
        name = _versioned_fv_name(fv, store.config)
        self.join_keys = tuple(c.name for c in fv.entity_columns)
        self.ts_field = f"_ts:{name}"
        self.features = tuple(f.name for f in fv.features)
        self.fields = tuple(_field(name, f) for f in self.features)
        self.encoders = tuple(value_bytes(f.dtype) for f in fv.features)


def _field(view: str, feature: str) -> bytes:
    return _mmh3(f"{view}:{feature}")


class RedisOnlineWriter:
    """Writes a view's coalesced rows to Feast's Redis online store (module docstring)."""

    def __init__(self, store: FeatureStore, client: Redis) -> None:
        self._project = store.config.project
        self._ttl = store.config.online_store.key_ttl_seconds or 0
        self._views = {fv.name: _View(fv, store)
                       for fv in store.list_feature_views(allow_cache=True)}
        self._script = client.register_script(HSET_NEWER)

    @classmethod
    def for_store(cls, store: FeatureStore) -> RedisOnlineWriter | None:
        """The writer for ``store``, or None where only Feast's own write applies: another
        online store, a Redis cluster, another entity key serialisation version."""
        online = store._get_provider().online_store  # noqa: SLF001 - Feast's configured store
        if (not isinstance(online, RedisOnlineStore)
                or store.config.entity_key_serialization_version != 3):
            return None
        client = online._get_client(store.config.online_store)  # noqa: SLF001
        return cls(store, client) if isinstance(client, Redis) else None

    def write(self, view: str, rows: Sequence[FeatureRow]) -> int:
        """Write ``rows`` of ``view`` (one per key); the rows written (not older than what is
        stored)."""
        if not rows:
            return 0
        spec = self._views[view]
        keys: list[bytes] = []
        args: list[Any] = [spec.ts_field, self._ttl]
        n = len(spec.fields)
        for row in rows:
            keys.append(redis_key(spec.join_keys, row.key, self._project))
            args += timestamp_args(row.event_time_ms)
            args.append(n)
            values = row.values
            for field, name, encode in zip(spec.fields, spec.features, spec.encoders):
                args += (field, encode(values[name]))
        return int(self._script(keys=keys, args=args))
