"""Feast on the local Redis: write and read speed, and what coalescing saves on the Taobao replay.

    .venv/bin/python bench/bench_feast.py [--events 20000] [--rows 6000] [--repeats 200]

Old and new write paths are timed in one run, interleaved chunk by chunk on fresh keys of
their own, so that their ratio holds on a noisy machine: the old path builds a DataFrame and
calls ``FeatureStore.write_to_online_store``; the protos path builds Feast's protos directly and
calls the provider's ``online_write_batch``; "Feast alone" is that call with the protos
prebuilt: the ceiling of any write that goes through Feast's Redis store. The new one
(``FeastStoreWriter`` now, :class:`features.online_write.RedisOnlineWriter`) writes the same bytes in
one server-side script call per batch. End to end, :class:`FeastStoreWriter` runs beside
:class:`EarlierWriter`, the same coalescing and flushes built from the writer's public parts,
with each earlier online write.

Needs Redis at ``STREAMRANK_REDIS_URL`` (``streamrank stack up``). Works in a private run
directory and writes only entity keys prefixed ``bench-<id>-``, so a running pipeline's keys are
untouched. Prints figures; asserts nothing about timings.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from feast import FeatureStore, FeatureView, FileSource, PushSource
from rich.table import Table
from support import console, table

from config import Settings, load_settings
from connectors.events import Event
from connectors.logs import read_log
from features.feature_repo import repo
from features.online import read_features
from features.online_write import RedisOnlineWriter
from features.rows import ITEM_VIEW, FeatureComputer, FeatureRow
from features.store import apply_repo
from features.writer import (
    Coalescer,
    FeastStoreWriter,
    ViewSpec,
    WriterStats,
    rows_frame,
    view_specs,
)

FLUSH_MS = 200
SPEEDS = (1, 60, 600)


def replay_rows(events: list[Event]) -> list[list[FeatureRow]]:
    """The rows each event produces, in event order."""
    computer = FeatureComputer()
    return [computer.apply(e) for e in events]


def tagged(events: list[Event], tag: str) -> list[Event]:
    """The events with every entity ID prefixed by ``tag``."""
    return [e.model_copy(update={"user_id": tag + e.user_id, "item_id": tag + e.item_id,
                                 "category_id": tag + (e.category_id or "")}) for e in events]


OnlineWrite = Callable[[ViewSpec, list[FeatureRow]], object]
"""One view's coalesced rows into the online store."""


def dataframe_write(store: FeatureStore) -> OnlineWrite:
    """The writer's first path: a DataFrame through ``FeatureStore.write_to_online_store``."""
    return lambda spec, rows: store.write_to_online_store(spec.view.name, rows_frame(spec, rows))


def provider_write(store: FeatureStore) -> OnlineWrite:
    """Protos built per row through the provider's ``online_write_batch``: the writer's path
    before the server-side script, and still its path off a single Redis."""
    provider, config = store.provider, store.config
    return lambda spec, rows: provider.online_write_batch(config, spec.view,
                                                          spec.online_rows(rows), None)


class EarlierWriter:
    """:class:`FeastStoreWriter`'s coalescing and flushes with another online write, built
    from the writer's public parts: rows coalesced per view and key, flushed at
    ``feast_batch_rows`` distinct rows or ``feast_flush_ms`` after a batch's first row; the
    offline log one parquet file per view at every flush (``offline_each_flush``) or at
    :meth:`flush`. It skips the checks :meth:`FeastStoreWriter.add` makes of each row."""

    def __init__(self, store: FeatureStore, settings: Settings, write: OnlineWrite, *,
                 offline_each_flush: bool) -> None:
        self._views = view_specs(store)
        self._write = write
        self._batch_rows, self._flush_ms = settings.feast_batch_rows, settings.feast_flush_ms
        self._offline_each_flush = offline_each_flush
        self._pending = Coalescer()
        self._opened: float | None = None
        self._offline: dict[str, list[pa.RecordBatch]] = {}
        self._prefix = f"part-{uuid.uuid4().hex[:12]}"
        self.stats = WriterStats()

    def add_rows(self, rows: Iterable[FeatureRow]) -> None:
        """Take rows; flush when a batch is due."""
        for row in rows:
            self.stats.rows_received += 1
            self._pending.add(row)
            now = time.monotonic()
            if self._opened is None:
                self._opened = now
            if (len(self._pending) >= self._batch_rows
                    or (now - self._opened) * 1000 >= self._flush_ms):
                self._flush_online()

    def flush(self) -> None:
        """Write what is pending online, then the offline log."""
        self._flush_online()
        self._flush_offline()

    def _flush_online(self) -> None:
        batch = self._pending.rows()
        if not batch:
            return
        started = time.perf_counter()
        for view, rows in batch.items():
            spec = self._views[view]
            self._write(spec, rows)
            self.stats.rows_written[view] = self.stats.rows_written.get(view, 0) + len(rows)
            self._offline.setdefault(view, []).append(spec.offline_batch(rows))
        self._pending.clear()
        self._opened = None
        self.stats.batches += 1
        self.stats.flush_seconds += time.perf_counter() - started
        if self._offline_each_flush:
            self._flush_offline()

    def _flush_offline(self) -> None:
        started = time.perf_counter()
        for view, batches in self._offline.items():
            spec = self._views[view]
            spec.offline_dir.mkdir(parents=True, exist_ok=True)
            self.stats.offline_files += 1
            pq.write_table(pa.Table.from_batches(batches, schema=spec.schema),
                           spec.offline_dir / f"{self._prefix}-{self.stats.offline_files:08d}"
                                              ".parquet")
        self._offline.clear()
        self.stats.flush_seconds += time.perf_counter() - started


def online_table(store: FeatureStore, rows: list[FeatureRow], per_method: int) -> Table:
    """Online rows/s per view and batch size of the old path, the protos path, Feast alone and
    the script path (the writer's now).

    Each method writes the same rows under keys of its own (new keys), chunk by chunk in turn.
    40 rows is about one view's flush of 200 ms at the log's own pace (see the coalescing table).
    """
    provider, config = store.provider, store.config
    old, protos = dataframe_write(store), provider_write(store)
    methods = ("old: DataFrame + write_to_online_store", "protos + online_write_batch",
               "Feast alone (protos prebuilt)", "new: one script call (RedisOnlineWriter)")
    script = RedisOnlineWriter.for_store(store)
    assert script is not None, "the script path needs Feast's store on a single Redis"
    out = []
    for view, spec in view_specs(store).items():
        latest = list({r.key: r for r in rows if r.view == view}.values())[:per_method]
        for batch in (40, 1_000):
            wall, cpu = [0.0] * len(methods), [0.0] * len(methods)
            for i in range(0, len(latest), batch):
                own = [[r._replace(key=tuple(f"{k}-{batch}-{m}" for k in r.key))
                        for r in latest[i:i + batch]] for m in range(len(methods))]
                prebuilt = spec.online_rows(own[2])
                writes = (lambda: old(spec, own[0]), lambda: protos(spec, own[1]),
                          lambda: provider.online_write_batch(config, spec.view, prebuilt, None),
                          lambda: script.write(view, own[3]))
                turns = range(len(methods))
                for m in (turns if i // batch % 2 else reversed(turns)):
                    started, started_cpu = time.perf_counter(), time.process_time()
                    writes[m]()
                    wall[m] += time.perf_counter() - started
                    cpu[m] += time.process_time() - started_cpu
            out.append([view, f"{batch:,}",
                        *[f"{len(latest) / w:,.0f} ({c / len(latest) * 1e6:,.0f} us)"
                          for w, c in zip(wall, cpu)],
                        f"{wall[0] / wall[3]:.2f}x, {cpu[0] / cpu[3]:.2f}x",
                        f"{wall[2] / wall[3]:.2f}x, {cpu[2] / cpu[3]:.2f}x"])
    return table(f"Online write rows/s, wall (CPU us per row of this process), new keys, "
                 f"{per_method:,} rows per cell, methods taking turns",
                 ["view", "batch rows", *methods, "new/old (wall, CPU)",
                  "new/Feast alone (wall, CPU)"], out)


def coalescing_table(
    per_event: list[list[FeatureRow]], events: list[Event], batch_rows: int
) -> Table:
    """Rows before and after coalescing per micro-batch, for the writer's two triggers."""
    out = []

    def report(label: str, batches: list[tuple[int, int]]) -> None:
        rows_in, rows_out = sum(b[0] for b in batches), sum(b[1] for b in batches)
        out.append([label, f"{len(batches):,}", f"{rows_in:,}", f"{rows_out:,}",
                    f"{rows_in / rows_out:.2f}", f"{rows_in / len(batches):,.1f}"])

    c, received, batches = Coalescer(), 0, []
    for row in itertools.chain.from_iterable(per_event):
        c.add(row)
        received += 1
        if len(c) >= batch_rows:
            batches.append((received, len(c)))
            c.clear()
            received = 0
    if len(c):
        batches.append((received, len(c)))
    report(f"{batch_rows:,} rows (max speed)", batches)
    for speed in SPEEDS:
        window = FLUSH_MS * speed
        batches = []
        for _, group in itertools.groupby(zip(events, per_event),
                                          key=lambda pair: pair[0].event_time // window):
            c = Coalescer()
            rows = [row for _, event_rows in group for row in event_rows]
            for row in rows:
                c.add(row)
            batches.append((len(rows), len(c)))
        report(f"{FLUSH_MS} ms at {speed}x", batches)
    return table(f"Coalescing on the Taobao replay ({len(events):,} events)",
                 ["micro-batch", "batches", "rows in", "rows written", "in/written",
                  "rows in/batch"], out)


def writer_table(
    store: FeatureStore, settings: Settings, events: list[Event], tag: str, segments: int = 20
) -> Table:
    """FeatureComputer rows through the earlier writers (:class:`EarlierWriter`) and
    FeastStoreWriter (coalescing, online and offline writes), each on keys of its own (``tag``
    + its number), taking turns segment by segment. CPU time is this process's alone (Redis's
    own work is not in it): the steadier figure on a busy machine."""
    writers: dict[str, EarlierWriter | FeastStoreWriter] = {
        "old (DataFrame path)": EarlierWriter(store, settings, dataframe_write(store),
                                              offline_each_flush=True),
        "protos (provider path)": EarlierWriter(store, settings, provider_write(store),
                                                offline_each_flush=False),
        "new (script path)": FeastStoreWriter(store, settings)}
    inputs = [replay_rows(tagged(events, f"{tag}w{n}-")) for n in range(len(writers))]
    gc.collect()
    gc.freeze()
    wall, cpu = [0.0] * len(writers), [0.0] * len(writers)
    step = -(-len(events) // segments)
    for start in range(0, len(events), step):
        order = list(enumerate(writers.values()))
        for n, writer in (order if start // step % 2 else order[::-1]):
            started, started_cpu = time.perf_counter(), time.process_time()
            for rows in inputs[n][start:start + step]:
                writer.add_rows(rows)
            if start + step >= len(events):
                writer.flush()
            wall[n] += time.perf_counter() - started
            cpu[n] += time.process_time() - started_cpu
    out = []
    for (label, writer), sec, cpu_s in zip(writers.items(), wall, cpu):
        s = writer.stats
        out.append([label, f"{len(events) / sec:,.0f}", f"{s.rows_received / sec:,.0f}",
                     f"{cpu_s / len(events) * 1e6:,.0f}", f"{s.total_written:,}",
                     f"{s.batches:,}", f"{s.offline_files:,}", f"{s.flush_seconds / sec:.0%}",
                     f"{wall[0] / sec:.2f}x, {cpu[0] / cpu_s:.2f}x"])
    return table(f"FeastStoreWriter end to end, {len(events):,} events "
                 f"(batch {settings.feast_batch_rows:,} rows, taking turns)",
                 ["path", "events/s", "rows in/s", "CPU ms per 1k events", "rows written",
                  "flushes", "offline files", "flush time share", "speed-up (wall, CPU)"], out)


def offline_table(settings: Settings, rows: list[FeatureRow], flushes: int = 50) -> Table:
    """Feast's write_to_offline_store (one parquet file) against one new file per flush."""
    store = apply_repo(settings)
    frames = [rows_frame(view_specs(store)[ITEM_VIEW], rows[i:i + 1_000])
              for i in range(0, flushes * 1_000, 1_000)]
    single = settings.run_dir / "single" / "item_features.parquet"
    single.parent.mkdir(parents=True)
    schema = pa.Table.from_pandas(frames[0], preserve_index=False).schema
    pq.write_table(schema.empty_table(), single)
    log = FileSource(name="item_single_log", path=str(single), timestamp_field="event_timestamp")
    view = FeatureView(name="item_single", entities=[repo.item], ttl=timedelta(hours=48),
                       schema=repo.item_features.schema, online=False,
                       source=PushSource(name="item_single_push", batch_source=log))
    store.apply([view])
    parts = settings.run_dir / "parts"
    parts.mkdir()

    def timed(write: Callable[[int, pd.DataFrame], None]) -> list[float]:
        out = []
        for n, frame in enumerate(frames):
            started = time.perf_counter()
            write(n, frame)
            out.append((time.perf_counter() - started) * 1000)
        return out

    feast_ms = timed(lambda n, f: store.write_to_offline_store(view.name, f))
    part_ms = timed(lambda n, f: pq.write_table(pa.Table.from_pandas(f, preserve_index=False),
                                                parts / f"part-{n:04d}.parquet"))
    return table(f"Offline append, {flushes} flushes of 1,000 rows (ms per flush)",
                 ["method", "first", "last", "mean"],
                 [[label, f"{ms[0]:.1f}", f"{ms[-1]:.1f}", f"{statistics.fmean(ms):.1f}"]
                  for label, ms in (("Feast write_to_offline_store (rewrites the file)", feast_ms),
                                    ("one new parquet file per flush", part_ms))])


def percentiles(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """p50 and p99 of ``fn``'s latency in ms (after a warm-up call)."""
    fn()
    ms = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - started) * 1000)
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return q[49], q[98]


def read_table(store: FeatureStore, events: list[Event], repeats: int) -> Table:
    """p50 and p99 of Feast's item read and of the scorers' read, for 1 and 100 items."""
    user = events[-1].user_id
    items = list(dict.fromkeys(e.item_id for e in events))[:100]
    categories = {e.item_id: e.category_id for e in events}
    rows = []
    for n in (1, 100):
        ids = items[:n]
        p50, p99 = percentiles(lambda: store.get_online_features(
            features=[f"{ITEM_VIEW}:i_ctr", f"{ITEM_VIEW}:i_clicks_24h"],
            entity_rows={"item_id": ids}), repeats)
        rows.append(["get_online_features, item view, 2 features", f"{n}", f"{p50:.2f}",
                     f"{p99:.2f}"])
    for n in (1, 100):
        ids = items[:n]
        cats = [categories[i] for i in ids]
        p50, p99 = percentiles(lambda: read_features(store, user, ids, cats), repeats)
        rows.append(["read_features (user + items + user x category)", f"1 + {n} + {n}",
                     f"{p50:.2f}", f"{p99:.2f}"])
    return table(f"Reads ({repeats} calls each)", ["call", "entities", "p50 ms", "p99 ms"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000,
                        help="Taobao events written through Feast (coalescing uses all)")
    parser.add_argument("--rows", type=int, default=6_000,
                        help="rows per view, batch size and method in the online write table")
    parser.add_argument("--repeats", type=int, default=200, help="calls per read figure")
    args = parser.parse_args()
    base = load_settings()
    with tempfile.TemporaryDirectory(prefix="bench-feast-") as tmp:
        settings = base.model_copy(update={"run_dir": Path(tmp) / "run"})
        store = apply_repo(settings)

        all_events = list(read_log(base.sample_log, "taobao", settings=base)[0])
        per_event = replay_rows(all_events)
        console.print(coalescing_table(per_event, all_events, settings.feast_batch_rows))

        tag = f"bench-{uuid.uuid4().hex[:8]}-"
        events = tagged(all_events[:args.events], tag)
        rows = list(itertools.chain.from_iterable(replay_rows(events)))
        gc.collect()
        gc.freeze()  # the log in memory is not traversed again: no full collection lands in a cell
        console.print(online_table(store, rows, args.rows))
        console.print(writer_table(store, settings, all_events[:args.events], tag))
        console.print(offline_table(settings.model_copy(update={"run_dir": Path(tmp) / "offline"}),
                                    [r for r in rows if r.view == ITEM_VIEW]))
        console.print(read_table(store, events, args.repeats))
        console.print(f"Redis {settings.redis_url}; events from {base.sample_log.name}; "
                      f"load average {Path('/proc/loadavg').read_text().split()[0]}")


if __name__ == "__main__":
    main()
