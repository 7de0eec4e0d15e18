"""The scorer's feature read: :class:`features.online.OnlineFeatureReader`'s one scripted Redis
read, decoded straight into the float columns that :func:`features.online.inputs_from_vectors`
reads, with the item cache held as one matrix; :meth:`ColumnFeatureReader.read_async` makes
the same read through Feast's asyncio Redis client, for the scorer's event loop.

An item or (user, category) row that Feast's writer stored holds each feature as a serialised
``Value`` of a double (:data:`~features.online.DOUBLE_TAG` and 8 bytes) and its event time as a
``Timestamp`` proto. :func:`double_rows` reads the values of all rows of a reply with one
``numpy.frombuffer``, :func:`timestamps_ms` the times with a few vectorised steps over the
protos' varints; the state vectors (:func:`features.columns.item_vector`, the (user, category)
vector of :mod:`features.online`) follow column by column in the same arithmetic as
:func:`features.rows.item_state` (``float(value or 0.0)``, ``t - round(secs * 1000)``). A reply
that is not in that shape (a missing or non-double value, an unusual time) is decoded row by row
by the reference path instead, so the result is always the reference's, bit for bit
(``tests/integration/test_scorer.py`` compares it with the Feast SDK's on real rows).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from features.columns import FRESH_ITEM, FRESH_USER_CATEGORY, ITEM_COUNTERS
from features.online import (
    DOUBLE_TAG,
    HMGET_ALL,
    VIEW_FEATURES,
    OnlineFeatureReader,
    OnlineInputs,
    _decode,
    _item,
    _user_category,
    inputs_from_vectors,
    script_arguments,
)
from features.rows import ITEM_VIEW, USER_CATEGORY_VIEW, USER_VIEW, user_state
from features.schema import DENSE_FEATURES
from features.state import NO_HISTORY_S

_VALUE = np.dtype([("tag", "u1"), ("value", "<f8")])
_TS_WIDTH = 12
"""Bytes of a ``Timestamp`` proto decoded vectorised: both fields, 5-byte seconds."""
_VARINT_WEIGHTS = np.array([1 << (7 * k) for k in range(5)], dtype=np.int64)
_ITEM_WIDTH = len(FRESH_ITEM)
_UC_WIDTH = len(FRESH_USER_CATEGORY)


def timestamps_ms(raw: Sequence[bytes]) -> np.ndarray:
    """``seconds * 1000 + nanos // 1_000_000`` of serialised ``Timestamp`` protos (int64).

    A time from 1978 to 3058 serialises as the seconds' tag and 5 bytes of varint, then
    the nanos' tag and 1 to 5 bytes of varint unless they are 0: those are read all at once;
    any other serialisation by the proto's own parser.

    >>> from google.protobuf.timestamp_pb2 import Timestamp
    >>> raw = [Timestamp(seconds=1_511_500_000, nanos=123_456_789).SerializeToString(),
    ...        Timestamp(seconds=1_511_500_001).SerializeToString(),
    ...        Timestamp(seconds=7, nanos=1).SerializeToString()]
    >>> timestamps_ms(raw).tolist()
    [1511500000123, 1511500001000, 7000]
    """
    m = len(raw)
    data = np.frombuffer(b"".join([r[:_TS_WIDTH].ljust(_TS_WIDTH, b"\0") for r in raw]),
                         dtype=np.uint8).reshape(m, _TS_WIDTH)
    payload, more = (data & 0x7F).astype(np.int64), data >= 0x80
    seconds = payload[:, 1:6] @ _VARINT_WEIGHTS
    carried = np.cumprod(more[:, 7:12], axis=1)  # the nanos' bytes after the first
    nanos = payload[:, 7] + (payload[:, 8:12] * carried[:, :4]) @ _VARINT_WEIGHTS[1:]
    usual = ((data[:, 0] == 0x08) & more[:, 1:5].all(axis=1) & ~more[:, 5]
             & (((data[:, 6] == 0x10) & ~carried[:, 4].astype(bool))
                | ((data[:, 6] == 0) & ~data[:, 7:].any(axis=1)))
             & (np.fromiter(map(len, raw), np.intp, m) <= _TS_WIDTH))
    out = seconds * 1000 + nanos // 1_000_000
    for k in np.flatnonzero(~usual).tolist():
        ts = Timestamp.FromString(raw[k])
        out[k] = ts.seconds * 1000 + ts.nanos // 1_000_000
    return out


def double_rows(replies: Sequence[Sequence[bytes]], width: int) -> np.ndarray | None:
    """``M X width`` float64: the first ``width`` values of each HMGET reply as doubles, or None
    unless each is a serialised ``Value`` holding a double."""
    try:
        joined = b"".join([v for reply in replies for v in reply[:width]])
    except TypeError:  # a missing value (None)
        return None
    if len(joined) != len(replies) * width * _VALUE.itemsize:
        return None
    values = np.frombuffer(joined, dtype=_VALUE)
    if (values["tag"] != DOUBLE_TAG).any():
        return None
    return values["value"].reshape(len(replies), width) + 0.0  # -0.0 reads as 0.0 (``or``)


class _Plan(NamedTuple):
    """One read: what the item cache held and the ``HMGET`` commands of the rest."""

    item_ids: Sequence[str]
    category_ids: Sequence[str | None]
    t: int
    now: float
    distinct: list[str]
    states: np.ndarray
    hit: np.ndarray
    missing: list[str]
    categories: list[str]
    commands: list[tuple[bytes, list[str | bytes]]]


class ColumnFeatureReader(OnlineFeatureReader):
    """:class:`~features.online.OnlineFeatureReader` decoding whole replies into columns (module
    docstring) and caching item states as rows of one matrix (thread-safe)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        names = self._fields[ITEM_VIEW][0]
        self._item_order = [names.index(f"i_{c}") for c in ITEM_COUNTERS]
        self._item_secs = names.index("i_secs_since_last")
        uc_names = self._fields[USER_CATEGORY_VIEW][0]
        self._uc_order = [uc_names.index(name) for name in VIEW_FEATURES[USER_CATEGORY_VIEW]]
        self._lock = threading.Lock()
        self._slots: dict[str, int] = {}
        self._cached = np.empty((self._max_cached, _ITEM_WIDTH))
        self._fetched = np.empty(self._max_cached)
        self._async_script: Any = None

    def read(self, user_id: str, item_ids: Sequence[str], category_ids: Sequence[str | None],
             t_ms: int | None = None) -> OnlineInputs:
        """As :meth:`OnlineFeatureReader.read`, equal to it for the same stored rows."""
        plan = self._plan(user_id, item_ids, category_ids, t_ms)
        if plan is None:
            return OnlineInputs(np.empty((0, len(DENSE_FEATURES))))
        return self._finish(plan, self._hmget(plan.commands))

    async def read_async(self, user_id: str, item_ids: Sequence[str],
                         category_ids: Sequence[str | None],
                         t_ms: int | None = None) -> OnlineInputs:
        """:meth:`read` on the running event loop: the script call through Feast's asyncio
        Redis client, so a request waits for Redis without holding a thread (on a Redis
        cluster, Feast's pipelined read in a thread)."""
        plan = self._plan(user_id, item_ids, category_ids, t_ms)
        if plan is None:
            return OnlineInputs(np.empty((0, len(DENSE_FEATURES))))
        if self._script is None:
            replies = await asyncio.to_thread(self._hmget, plan.commands)
        else:
            if self._async_script is None:
                client = await self._online._get_client_async(  # noqa: SLF001
                    self._config.online_store)
                self._async_script = client.register_script(HMGET_ALL)
            keys, args = script_arguments(plan.commands)
            replies = await self._async_script(keys=keys, args=args)
        return self._finish(plan, replies)

    async def close_async(self) -> None:
        """Close the asyncio Redis client :meth:`read_async` opened (call on its loop)."""
        if self._async_script is not None:
            await self._async_script.registered_client.aclose()
            self._async_script = None

    def _plan(self, user_id: str, item_ids: Sequence[str], category_ids: Sequence[str | None],
              t_ms: int | None) -> _Plan | None:
        """The cached item states and the rows to read (None: no items)."""
        if len(item_ids) != len(category_ids):
            raise ValueError("item_ids and category_ids must have the same length")
        if not item_ids:
            return None
        t = int(time.time() * 1000) if t_ms is None else t_ms
        distinct = list(dict.fromkeys(item_ids))
        states = np.empty((len(distinct), _ITEM_WIDTH))
        now = self._clock()
        with self._lock:
            slots = np.fromiter(map(self._slots.get, distinct, itertools.repeat(-1)), np.intp,
                                len(distinct))
            hit = slots >= 0
            hit[hit] = now - self._fetched[slots[hit]] < self._ttl_s
            states[hit] = self._cached[slots[hit]]
        missing = list(itertools.compress(distinct, (~hit).tolist()))
        self.cache_hits += len(distinct) - len(missing)
        self.cache_misses += len(missing)
        categories = [c for c in dict.fromkeys(category_ids) if c is not None]
        user_fields, item_fields, uc_fields = (self._fields[v][1] for v in VIEW_FEATURES)
        commands = [(self._cached_keys(USER_VIEW, [(user_id,)])[0], user_fields)]
        commands += [(key, item_fields)
                     for key in self._cached_keys(ITEM_VIEW, [(i,) for i in missing])]
        commands += [(key, uc_fields) for key in self._cached_keys(
            USER_CATEGORY_VIEW, [(user_id, c) for c in categories])]
        return _Plan(item_ids, category_ids, t, now, distinct, states, hit, missing, categories,
                     commands)

    def _finish(self, plan: _Plan, replies: Sequence[Any]) -> OnlineInputs:
        """The inputs of a plan from its replies (caching the items read)."""
        missing, categories, category_ids = plan.missing, plan.categories, plan.category_ids
        states = plan.states
        if missing:
            fetched = self._items_of(replies[1:1 + len(missing)])
            states[~plan.hit] = fetched
            self._keep(missing, fetched, plan.now)
        ucs = self._user_categories(replies[1 + len(missing):])
        uc_at: dict[str | None, int] = dict(zip(categories, range(len(categories))))
        uc_at[None] = len(categories)  # the fresh row
        uc_rows = np.fromiter(map(uc_at.__getitem__, category_ids), np.intp, len(category_ids))
        if len(plan.distinct) < len(plan.item_ids):  # an item more than once: its state again
            at = dict(zip(plan.distinct, range(len(plan.distinct))))
            states = states[np.fromiter(map(at.__getitem__, plan.item_ids), np.intp,
                                        len(plan.item_ids))]
        user_r = _decode(self._fields[USER_VIEW][0], replies[0])
        return inputs_from_vectors(user_state(*user_r) if user_r else None, states,
                                   ucs[uc_rows], category_ids, plan.t, self._state_ttl)

    def _present(self, replies: Sequence[Any]) -> tuple[np.ndarray, list[Any]]:
        present = np.fromiter((bool(r) and bool(r[-1]) for r in replies), bool, len(replies))
        return present, [r for r, p in zip(replies, present.tolist()) if p]

    def _items_of(self, replies: Sequence[Any]) -> np.ndarray:
        """The item vectors (:func:`~features.columns.item_vector`) of item rows' replies."""
        present, rows = self._present(replies)
        out = np.tile(np.asarray(FRESH_ITEM), (len(replies), 1))
        if not rows:
            return out
        k = len(ITEM_COUNTERS)
        values = double_rows(rows, len(VIEW_FEATURES[ITEM_VIEW]))
        times = timestamps_ms([r[-1] for r in rows])
        if values is None:  # not in the usual shape: the reference path
            names = self._fields[ITEM_VIEW][0]
            out[present] = [_item(_decode(names, r)) for r in rows]
            return out
        vectors = np.empty((len(rows), _ITEM_WIDTH))
        vectors[:, :k] = values[:, self._item_order]
        vectors[:, k:2 * k] = times[:, None]
        secs = values[:, self._item_secs]
        vectors[:, 2 * k] = np.where(secs >= NO_HISTORY_S, np.nan,
                                     times - np.rint(secs * 1000.0))
        out[present] = vectors
        return out

    def _user_categories(self, replies: Sequence[Any]) -> np.ndarray:
        """(user, category) vectors of the replies, then one fresh row (no category)."""
        present, rows = self._present(replies)
        out = np.tile(np.asarray(FRESH_USER_CATEGORY), (len(replies) + 1, 1))
        if not rows:
            return out
        names = self._fields[USER_CATEGORY_VIEW][0]
        values = double_rows(rows, len(VIEW_FEATURES[USER_CATEGORY_VIEW]))
        times = timestamps_ms([r[-1] for r in rows])
        mask = np.append(present, False)
        if values is None:
            out[mask] = [_user_category(_decode(names, r)) for r in rows]
            return out
        k = len(self._uc_order)
        vectors = np.empty((len(rows), _UC_WIDTH))
        vectors[:, :k] = values[:, self._uc_order]
        vectors[:, k:] = times[:, None]
        out[mask] = vectors
        return out

    def _keep(self, items: list[str], vectors: np.ndarray, now: float) -> None:
        """Cache fetched item vectors (when full: drop the expired, then all)."""
        if len(items) > self._max_cached:
            return
        with self._lock:
            slots = self._slots
            new = [i for i in items if i not in slots]
            if len(slots) + len(new) > self._max_cached:
                alive = {i: s for i, s in slots.items() if now - self._fetched[s] < self._ttl_s}
                if len(alive) + len(new) > self._max_cached:
                    alive = {}
                order = list(alive)
                if order:
                    rows = np.fromiter(alive.values(), np.intp, len(alive))
                    self._cached[:len(order)] = self._cached[rows]
                    self._fetched[:len(order)] = self._fetched[rows]
                slots = self._slots = {i: k for k, i in enumerate(order)}
            for i in items:
                if i not in slots:
                    slots[i] = len(slots)
            rows = np.fromiter((slots[i] for i in items), np.intp, len(items))
            self._cached[rows] = vectors
            self._fetched[rows] = now
