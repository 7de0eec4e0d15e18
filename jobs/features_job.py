"""The features job: valid events -> Feast features (online + offline) and training examples.

Graph::

    ingest (validate, watermarks, DLQ) -> key_by(item_id) -> ItemStage -> key_by(user_id)
        -> UserStage -> KafkaSink(training.examples)

* **ItemStage** (keyed by item) forwards every event at once (so each user's events reach the
  next stage in their partition's order) and holds a copy per item until the watermark passes
  its time. Then it applies the item's events in event-time order (arrival order within one
  millisecond) to its :class:`~features.state.ItemState`, hands the rows to a
  :class:`~features.writer.FeatureWriter`, and for each impression sends the item features
  *as of* the impression (read before the impression is applied) to the user's stage. Events
  of one item come from several partitions, read in chunks: applied in arrival order, an
  impression would see the item's later events. The features as of an impression are those
  of the item's events of earlier milliseconds (:mod:`features.state`): the order of events
  within one millisecond is not defined across partitions. Synthetic impressions change no
  state (:func:`~features.rows.feeds_state`).
* **UserStage** (keyed by user) keeps the user's state, the user x category states (a map by
  category), the user's :class:`~features.labels.LabelJoiner` and the item features of its
  pending impressions. For an impression it reads the user and user x category features as of
  the impression, then applies the event (Feast rows for the user and the user x category) and
  feeds the joiner. An event-time timer at ``impression time + attribution window +
  out-of-orderness`` advances the joiner to the watermark, which emits the finished examples
  (labelled, or negative) with their item features added: these arrived when the item stage's
  watermark passed the impression, before this timer's.

Both stages write through Feast in micro-batches (``feast_batch_rows`` rows or
``feast_flush_ms``), collapsing the updates of one key inside a batch into one write (newest
event time wins); a processing-time timer flushes a batch when input pauses.

**Idleness**: a partition holds the watermark back until it has been silent for
:data:`IDLE_TIMEOUT_MS` (10 minutes, not the ingest step's 30 s). Under backpressure (a
replay, or this job's per-event keyed state costs) a partition that is merely slow to be read
would otherwise be marked idle, the watermark would jump with the other partitions, and its
records would then be dead-lettered as late. The price: a truly silent partition delays the
watermark, and so the label join's negatives, by up to 10 minutes.

**Allowed lateness**: events later than the watermark by more than ``allowed_lateness_ms`` never
get here (the ingest step dead-letters them as ``late``); within it they update the counters
exactly (decayed counters do not depend on arrival order). **State TTL**: keyed state idle for
``feature_state_ttl_ms`` of processing time is dropped (Flink's TTL runs on processing time).
**Restore**: Feast writes are upserts of values that depend only on the events, so replaying
from a checkpoint rewrites the same values. A writer's buffer is not Flink state (PyFlink gives
Python functions no hook before a checkpoint barrier), so a row is safe once flushed, at most
``feast_flush_ms`` after it was buffered. A process that dies within ``feast_flush_ms`` after a
checkpoint's barrier passed may lose the rows buffered before that barrier, for keys that
receive no later event (their values stay those of an earlier row until then). Closing that
window needs the rows to travel through a checkpointed sink (a Kafka topic read by a writer).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from typing import Any

from pyflink.common import Row, Time, Types
from pyflink.datastream import KeyedProcessFunction, StreamExecutionEnvironment, TimeDomain
from pyflink.datastream.state import MapStateDescriptor, StateTtlConfig, ValueStateDescriptor

from connectors.events import Event
from connectors.examples import TrainingExample, encode_example
from features.labels import NO_RECENT, LabelJoiner
from features.rows import feeds_state, update_item, update_user, update_user_category
from features.schema import DENSE_FEATURES
from features.state import (
    ItemState,
    UserCategoryState,
    UserState,
    item_features,
    user_category_features,
    user_features,
)
from jobs import ingest
from jobs.ingest import EVENT_FIELDS, build_ingest
from jobs.runtime import BYTES, StatsFile, kafka_sink, stats_dir, subtask_index
from streamrank.config import Settings

JOB = "features"
IDLE_TIMEOUT_MS = 600_000
"""A partition silent this long no longer holds the watermark back (see the docstring)."""
ENRICHED = Types.PICKLED_BYTE_ARRAY()
"""(user_id, Event, None) or (user_id, impression event_id, item features) between the stages."""


def _event(row: Row) -> Event:
    return Event.model_construct(**{name: row[i] for i, name in enumerate(EVENT_FIELDS)})


class _WritingStage(KeyedProcessFunction):
    """Shared plumbing of the two stages: Feast writer, its flush timer, stats, state TTL."""

    part = "stage"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def _ttl(self) -> StateTtlConfig:
        return (StateTtlConfig.new_builder(Time.milliseconds(self._settings.feature_state_ttl_ms))
                .set_update_type(StateTtlConfig.UpdateType.OnCreateAndWrite).build())

    def open(self, runtime_context: Any) -> None:
        from features.store import open_store
        from features.writer import FeatureWriter

        self._writer = FeatureWriter(open_store(self._settings), self._settings)
        self._flush_at: float | None = None
        self._stats = StatsFile(stats_dir(JOB, self._settings), self.part,
                                subtask_index(runtime_context), runtime_context.get_metrics_group())
        gc.collect()
        gc.freeze()  # long-lived start-up objects leave the collector's full passes

    def _write(self, row: Any, ctx: KeyedProcessFunction.Context) -> None:
        self._writer.add(*row)
        self._writer.maybe_flush()
        self._schedule_flush(ctx)

    def _schedule_flush(self, ctx: KeyedProcessFunction.Context) -> None:
        """A processing-time timer that flushes the batch if no later record does."""
        if self._writer.pending and self._flush_at is None:
            self._flush_at = time.time() * 1000 + self._settings.feast_flush_ms
            ctx.timer_service().register_processing_time_timer(int(self._flush_at))

    def _on_flush_timer(self, ctx: KeyedProcessFunction.Context) -> None:
        self._flush_at = None
        self._writer.maybe_flush()
        self._schedule_flush(ctx)
        self._stats.tick()

    def close(self) -> None:
        self._writer.close()
        stats = self._writer.stats
        self._stats.add("rows_written", stats.total_written)
        self._stats.close()


class ItemStage(_WritingStage):
    """Keyed by item: item state and rows in event-time order, item features as of impressions.

    Emits ``(user_id, event, None)`` for each event on arrival and ``(user_id, impression
    event_id, item features)`` once the watermark passes the impression.
    """

    part = "items"

    def open(self, runtime_context: Any) -> None:
        super().open(runtime_context)
        ttl = self._ttl()
        item = ValueStateDescriptor("item", Types.PICKLED_BYTE_ARRAY())
        held = MapStateDescriptor("held", Types.LONG(), Types.PICKLED_BYTE_ARRAY())
        for desc in (item, held):
            desc.enable_time_to_live(ttl)
        self._item = runtime_context.get_state(item)
        self._held = runtime_context.get_map_state(held)

    def process_element(self, row: Row, ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
        event = _event(row)
        t = event.event_time
        self._held.put(t, (self._held.get(t) or []) + [event])
        ctx.timer_service().register_event_time_timer(t)
        self._stats.add("events")
        yield event.user_id, event, None

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator[Any]:
        if ctx.time_domain() == TimeDomain.PROCESSING_TIME:
            self._on_flush_timer(ctx)
            return
        events: list[Event] = self._held.get(timestamp) or []
        self._held.remove(timestamp)
        before: ItemState | None = self._item.value()
        as_of = item_features(before or ItemState(), timestamp)  # the events of earlier ms
        state = before
        for event in events:
            if event.event_type == "impression":
                yield event.user_id, event.event_id, as_of
            if feeds_state(event):
                state, feature_row = update_item(state, event)
                self._write(feature_row, ctx)
        if state is not before:
            self._item.update(state)


class UserStage(_WritingStage):
    """Keyed by user: user and user x category features and rows, and the label join."""

    part = "users"

    def open(self, runtime_context: Any) -> None:
        super().open(runtime_context)
        ttl = self._ttl()
        user = ValueStateDescriptor("user", Types.PICKLED_BYTE_ARRAY())
        categories = MapStateDescriptor("categories", Types.STRING(), Types.PICKLED_BYTE_ARRAY())
        joiner = ValueStateDescriptor("joiner", Types.PICKLED_BYTE_ARRAY())
        items = MapStateDescriptor("item_features", Types.STRING(), Types.PICKLED_BYTE_ARRAY())
        for desc in (user, categories, joiner, items):
            desc.enable_time_to_live(ttl)
        self._user = runtime_context.get_state(user)
        self._categories = runtime_context.get_map_state(categories)
        self._joiner = runtime_context.get_state(joiner)
        self._item_features = runtime_context.get_map_state(items)
        self._wait = self._settings.attribution_window_ms + self._settings.max_out_of_orderness_ms

    def _load_joiner(self) -> LabelJoiner:
        return self._joiner.value() or LabelJoiner(self._settings)

    def _emit(self, joiner: LabelJoiner, finished: list[TrainingExample]) -> Iterator[bytes]:
        self._joiner.update(joiner)
        self._stats.add("examples", len(finished))
        for example in finished:
            merged = example.features | (self._item_features.get(example.example_id) or {})
            self._item_features.remove(example.example_id)
            yield encode_example(example.model_copy(
                update={"features": {name: merged[name] for name in DENSE_FEATURES}}))

    def process_element(self, value: tuple[str, Any, dict[str, float] | None],
                        ctx: KeyedProcessFunction.Context) -> Iterator[bytes]:
        _, event, item_as_of = value
        if item_as_of is not None:  # the item features of impression ``event`` (an event_id)
            self._item_features.put(event, item_as_of)
            return
        t, category = event.event_time, event.category_id
        user: UserState | None = self._user.value()
        uc: UserCategoryState | None = (self._categories.get(category)
                                        if category is not None else None)
        features, recent = None, NO_RECENT
        if event.event_type == "impression":
            before = user or UserState()
            features = (user_features(before, t)
                        | user_category_features(uc or UserCategoryState(), before, category, t))
            recent = (before.last_items, before.last_categories)
            ctx.timer_service().register_event_time_timer(t + self._wait + 1)
        if feeds_state(event):
            new_user, user_row = update_user(user, event)
            self._user.update(new_user)
            self._write(user_row, ctx)
            if category is not None:
                new_uc, uc_row = update_user_category(uc, new_user, event)
                self._categories.put(category, new_uc)
                self._write(uc_row, ctx)
        self._stats.add("events")
        joiner = self._load_joiner()
        yield from self._emit(joiner, joiner.add(event, features, recent))

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator[bytes]:
        if ctx.time_domain() == TimeDomain.PROCESSING_TIME:
            self._on_flush_timer(ctx)
            return
        joiner = self._load_joiner()
        yield from self._emit(joiner, joiner.advance(ctx.timer_service().current_watermark()))


def input_topic(settings: Settings) -> str:
    """The topic the job reads (through the ingest step)."""
    return ingest.input_topic(settings)


def build_job(env: StreamExecutionEnvironment, settings: Settings, *,
              bounded: bool = False) -> None:
    """The ``features`` job (see the module docstring)."""
    events = build_ingest(env, settings, job=JOB, bounded=bounded,
                          idle_timeout_ms=IDLE_TIMEOUT_MS)
    enriched = (events.key_by(lambda row: row[3], key_type=Types.STRING())
                .process(ItemStage(settings), ENRICHED).name("item features"))
    examples = (enriched.key_by(lambda value: value[0], key_type=Types.STRING())
                .process(UserStage(settings), BYTES).name("user features + label join"))
    examples.sink_to(kafka_sink(settings, settings.topic_examples)).name("training examples")
