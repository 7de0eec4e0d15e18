"""Micro-batched, coalescing writes of feature rows into Feast (online store and offline log).

Rows (:class:`features.rows.FeatureRow`) are coalesced per (view, key) while a batch is open
(:class:`features.rows.Coalescer`: the row with the newest event time wins, whatever the
arrival order; of two with the same event time, the later arrival, which has seen more
events). A batch is flushed when ``settings.feast_batch_rows`` distinct rows are pending or
``settings.feast_flush_ms`` have passed since its first row.

Online writes on Feast's Redis store (not a cluster) are one server-side script call per view
per flush that writes Feast's own layout (:class:`features.online_write.RedisOnlineWriter`: the
same keys, fields and value bytes as Feast's ``online_write_batch``, ≈ 3-4x less CPU per row;
``bench/bench_feast.py``). Elsewhere they go through Feast's provider: one
``Provider.online_write_batch`` call per view per flush, the call
``FeatureStore.write_to_online_store`` ends in, with the rows built directly as Feast's
``EntityKey``/``Value`` protos and each ``FeatureView`` resolved once, when the writer is
built. Both skip ``write_to_online_store``'s registry listing on every call and its DataFrame →
arrow → proto conversion; what lands in the online store is byte for byte the same (checked in
``tests/integration/test_feast_store.py``). A view re-applied with another schema needs a new
writer.

The offline log (parquet part files in each view's batch-source directory; Feast's own
``write_to_offline_store`` rewrites the whole file on every call) is buffered as arrow record
batches and written, one file per view, by :meth:`FeastStoreWriter.flush` (and so on close) or
once ``offline_flush_rows`` rows are buffered or the oldest is ``offline_flush_ms`` old. Durability: the log runs behind the online store by up to those
bounds, and rows still buffered when the process dies never reach it unless the job replays
the events behind them (those after its last checkpoint), so a crash can leave up to
``offline_flush_ms`` of rows out of the log (never out of the online store). A caller that
needs the log complete at some point calls ``flush``; ``offline_flush_rows=0`` writes it on
every online flush, as before (one part file per view per flush).

A failed flush keeps its rows, so the next flush retries them (writes set values: repeating
one is harmless). Rows enter the offline buffer only once every view of their batch is written
online, and a view's buffer is dropped once its file is in place, so retries add no duplicates
to the log.

Instrumentation is plain attributes of :class:`WriterStats` (``writer.stats``), which the job
exports through its own metric system (Flink metric groups, or Prometheus gauges): importing
``feast`` switches ``prometheus_client`` into multiprocess mode for the whole process (its
``feast.metrics`` sets ``PROMETHEUS_MULTIPROC_DIR``), after which metrics of the same name in
different registries share one value, so the writer keeps its own counts.

Every view's offline files share one arrow schema, taken from the view's Feast schema.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import cached_property
from pathlib import Path
from typing import Any, cast

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from feast import FeatureStore, FeatureView, FileSource
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.types import from_feast_to_pyarrow_type

from config import JobSettings
from features.online_write import RedisOnlineWriter, value_converter
from features.rows import FeatureRow

TIMESTAMP_FIELD = "event_timestamp"
RECENT_LAGS = 10_000
OFFLINE_FLUSH_ROWS = 100_000
OFFLINE_FLUSH_MS = 10_000.0
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
Row = tuple[EntityKeyProto, dict[str, ValueProto], datetime, datetime | None]
"""One row as ``online_write_batch`` takes it: entity key, values, event time, created time."""


class Coalescer:
    """Pending rows per (view, key): the newest event time wins, a tie goes to the later row.

    >>> c = Coalescer()
    >>> for t, n in [(5, "b"), (9, "c"), (7, "a")]:
    ...     _ = c.add(FeatureRow("user_features", ("u",), {"n": n}, t))
    >>> len(c), c.rows()["user_features"][0].values
    (1, {'n': 'c'})
    """

    def __init__(self) -> None:
        self._rows: dict[str, dict[tuple[str, ...], FeatureRow]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, row: FeatureRow) -> bool:
        """Take one row; True if it is now the pending row of its key."""
        by_key = self._rows.setdefault(row.view, {})
        old = by_key.get(row.key)
        if old is None:
            self._count += 1
        elif row.event_time_ms < old.event_time_ms:
            return False
        by_key[row.key] = row
        return True

    def rows(self) -> dict[str, list[FeatureRow]]:
        """The pending rows by view."""
        return {view: list(by_key.values()) for view, by_key in self._rows.items() if by_key}

    def clear(self) -> None:
        """Drop every pending row."""
        self._rows.clear()
        self._count = 0


@dataclass
class WriterStats:
    """Counts of a :class:`FeastStoreWriter` since it was built."""

    rows_received: int = 0
    """Rows handed to :meth:`FeastStoreWriter.add`."""
    rows_written: dict[str, int] = field(default_factory=dict)
    """Rows written to the online store per view (after coalescing)."""
    batches: int = 0
    last_batch_rows: int = 0
    flush_seconds: float = 0.0
    """Time spent flushing (online and offline writes), in total."""
    offline_files: int = 0
    """Parquet part files written to the offline log."""
    recent_lags_ms: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT_LAGS))
    """Per written row, newest last: its event time to the end of its online write (wall clock)."""

    @property
    def total_written(self) -> int:
        """Rows written over all views."""
        return sum(self.rows_written.values())


@dataclass(frozen=True)
class ViewSpec:
    """What the writer needs of a feature view, resolved once from the registry."""

    view: FeatureView
    join_keys: tuple[str, ...]
    features: tuple[str, ...]
    offline_dir: Path
    schema: pa.Schema
    """Arrow schema of the offline log: join keys, features, ``event_timestamp``."""
    key_converters: tuple[Callable[[Any], ValueProto], ...]
    value_converters: tuple[Callable[[Any], ValueProto], ...]

    @cached_property
    def feature_set(self) -> frozenset[str]:
        """The feature names, as a set."""
        return frozenset(self.features)

    def online_rows(self, rows: list[FeatureRow]) -> list[Row]:
        """``rows`` as the quadruples of ``online_write_batch`` (created time unset)."""
        join_keys, features = list(self.join_keys), self.features
        keys, convs = self.key_converters, self.value_converters
        return [
            (EntityKeyProto(join_keys=join_keys,
                            entity_values=[c(k) for c, k in zip(keys, r.key)]),
             {name: c(r.values[name]) for name, c in zip(features, convs)},
             EPOCH + timedelta(milliseconds=r.event_time_ms), None)
            for r in rows]

    def offline_batch(self, rows: list[FeatureRow]) -> pa.RecordBatch:
        """``rows`` as one record batch of the offline log's schema."""
        columns: list[list[Any]] = [[r.key[i] for r in rows] for i in range(len(self.join_keys))]
        columns += [[r.values[name] for r in rows] for name in self.features]
        columns.append([r.event_time_ms * 1_000_000 for r in rows])
        return pa.RecordBatch.from_arrays(
            [pa.array(c, type=f.type, from_pandas=True) for c, f in zip(columns, self.schema)],
            schema=self.schema)


def view_spec(fv: FeatureView) -> ViewSpec:
    """What the writer needs of ``fv``.

    >>> from features.feature_repo.repo import user_category_features
    >>> spec = view_spec(user_category_features)
    >>> spec.join_keys, spec.schema.names[-2:]
    (('user_id', 'category_id'), ['uc_affinity', 'event_timestamp'])
    """
    fields = [*fv.entity_columns, *fv.features]
    schema = pa.schema([(f.name, from_feast_to_pyarrow_type(f.dtype)) for f in fields]
                       + [(TIMESTAMP_FIELD, pa.timestamp("ns", tz="UTC"))])
    return ViewSpec(
        fv, tuple(c.name for c in fv.entity_columns), tuple(f.name for f in fv.features),
        Path(cast(FileSource, fv.batch_source).path), schema,
        tuple(value_converter(c.dtype) for c in fv.entity_columns),
        tuple(value_converter(f.dtype) for f in fv.features))


def view_specs(store: FeatureStore) -> dict[str, ViewSpec]:
    """The writable views of ``store``, from its cached registry."""
    return {fv.name: view_spec(fv) for fv in store.list_feature_views(allow_cache=True)}


def rows_frame(spec: ViewSpec, rows: list[FeatureRow]) -> pd.DataFrame:
    """One view's rows as the DataFrame ``FeatureStore.write_to_online_store`` ingests (join
    keys, features, event_timestamp): the reference path the writer's output is checked against."""
    columns: dict[str, object] = {
        name: [r.key[i] for r in rows] for i, name in enumerate(spec.join_keys)}
    for name in spec.features:
        columns[name] = [r.values[name] for r in rows]
    columns[TIMESTAMP_FIELD] = pd.to_datetime([r.event_time_ms for r in rows], unit="ms", utc=True)
    return pd.DataFrame(columns)


class FeastStoreWriter:
    """Coalesces feature rows and writes them through Feast in micro-batches.

    Cheap to construct (reads the cached registry once) and free of Flink and Kafka: the Feast
    writer process (:mod:`jobs.feast_writer`) calls :meth:`add_rows` per poll, then
    :meth:`flush_online`, and :meth:`flush` before it commits its offsets.
    ``offline_flush_rows`` and ``offline_flush_ms`` bound how far the offline log may lag the
    online store when :meth:`maybe_flush` drives the flushes.
    """

    def __init__(
        self,
        store: FeatureStore,
        settings: JobSettings,
        clock: Callable[[], float] = time.monotonic,
        *,
        offline_flush_rows: int = OFFLINE_FLUSH_ROWS,
        offline_flush_ms: float = OFFLINE_FLUSH_MS,
    ) -> None:
        self._store = store
        self._provider = store.provider
        self._views = view_specs(store)
        self._redis = RedisOnlineWriter.for_store(store)
        self._batch_rows = settings.feast_batch_rows
        self._flush_ms = settings.feast_flush_ms
        self._offline_rows = offline_flush_rows
        self._offline_ms = offline_flush_ms
        self._clock = clock
        self._pending = Coalescer()
        self._opened_ms: float | None = None
        self._offline: dict[str, list[pa.RecordBatch]] = {}
        self._offline_count = 0
        self._offline_opened_ms: float | None = None
        self._file_prefix = f"part-{uuid.uuid4().hex[:12]}"
        self._files = 0
        self.stats = WriterStats()

    @property
    def pending(self) -> int:
        """Distinct (view, key) rows waiting for the next flush."""
        return len(self._pending)

    def add(self, view: str, key: tuple[str, ...], values: dict[str, object],
            event_time_ms: int) -> int:
        """Take one row update; flush if a batch is due. Returns the rows flushed (often 0)."""
        spec = self._views.get(view)
        if spec is None:
            raise KeyError(f"unknown feature view {view!r}; known: {sorted(self._views)}")
        if len(key) != len(spec.join_keys):
            raise ValueError(f"{view} is keyed by {spec.join_keys}, got {key!r}")
        if not values.keys() >= spec.feature_set:
            raise KeyError(f"{view} row lacks {sorted(spec.feature_set - values.keys())}")
        self.stats.rows_received += 1
        if self._opened_ms is None:
            self._opened_ms = self._clock() * 1000.0
        self._pending.add(FeatureRow(view, key, values, event_time_ms))
        return self.maybe_flush()

    def add_rows(self, rows: Iterable[FeatureRow]) -> int:
        """:meth:`add` for each row; the rows flushed."""
        return sum(self.add(*row) for row in rows)

    def maybe_flush(self, now_ms: float | None = None) -> int:
        """Flush if the batch is full or older than ``feast_flush_ms``; the rows flushed.

        Also writes the offline log once ``offline_flush_rows`` rows are buffered or the
        oldest is ``offline_flush_ms`` old.
        """
        if self._opened_ms is None and self._offline_opened_ms is None:
            return 0
        now = self._clock() * 1000.0 if now_ms is None else now_ms
        written = 0
        if self._opened_ms is not None and (len(self._pending) >= self._batch_rows
                                            or now - self._opened_ms >= self._flush_ms):
            written = self.flush_online()
        if self._offline_opened_ms is not None and (self._offline_count >= self._offline_rows
                                                    or now - self._offline_opened_ms
                                                    >= self._offline_ms):
            self._flush_offline()
        return written

    def flush(self) -> int:
        """Write every pending row online, then everything buffered to the offline log; the
        rows written online."""
        written = self.flush_online()
        self._flush_offline()
        return written

    def close(self) -> None:
        """Flush what is pending."""
        self.flush()

    def flush_online(self) -> int:
        """Write every pending row online now (the offline buffer keeps them); the rows written."""
        batch = self._pending.rows()
        if not batch:
            self._opened_ms = None
            return 0
        started = time.perf_counter()
        done: list[tuple[str, list[FeatureRow], float, pa.RecordBatch]] = []
        for view, rows in batch.items():
            spec = self._views[view]
            self._write_online(spec, rows)
            done.append((view, rows, time.time() * 1000.0, spec.offline_batch(rows)))
        for view, rows, done_ms, record_batch in done:
            self.stats.recent_lags_ms.extend(done_ms - row.event_time_ms for row in rows)
            self.stats.rows_written[view] = self.stats.rows_written.get(view, 0) + len(rows)
            self._offline.setdefault(view, []).append(record_batch)
        if self._offline_opened_ms is None:
            self._offline_opened_ms = self._clock() * 1000.0
        written = len(self._pending)
        self._offline_count += written
        self._pending.clear()
        self._opened_ms = None
        self.stats.batches += 1
        self.stats.last_batch_rows = written
        self.stats.flush_seconds += time.perf_counter() - started
        return written

    def _write_online(self, spec: ViewSpec, rows: list[FeatureRow]) -> None:
        """One view's coalesced rows into the online store: one script call on Feast's Redis
        (:class:`features.online_write.RedisOnlineWriter`), else one provider call."""
        if self._redis is not None:
            self._redis.write(spec.view.name, rows)
            return
        self._provider.online_write_batch(self._store.config, spec.view, spec.online_rows(rows),
                                          None)

    def _flush_offline(self) -> None:
        started = time.perf_counter()
        for view in list(self._offline):
            spec = self._views[view]
            self._files += 1
            name = f"{self._file_prefix}-{self._files:08d}.parquet"
            spec.offline_dir.mkdir(parents=True, exist_ok=True)
            tmp = spec.offline_dir / f".{name}.tmp"
            pq.write_table(pa.Table.from_batches(self._offline[view], schema=spec.schema), tmp)
            tmp.replace(spec.offline_dir / name)
            del self._offline[view]
            self.stats.offline_files += 1
        self._offline_count = 0
        self._offline_opened_ms = None
        self.stats.flush_seconds += time.perf_counter() - started
