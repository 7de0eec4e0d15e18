"""The features job: valid events -> feature rows (for the Feast writer) and training examples.

Graph::

    ingest (validate, watermarks, DLQ) -> key_by(item_id) -> ItemStage -> key_by(user_id)
        -> UserStage -> KafkaSink(training.examples)
    ItemStage, UserStage --(side output: feature rows)--> Kafka table sink (features.rows)

It follows the pure reference, :class:`features.examples.ExampleBuilder`, with the same
per-key functions (:mod:`features.rows`, :mod:`features.state`), keyed:

* **ItemStage** (keyed by item) drops a repeated ``event_id`` of the item before it touches
  any state (IDs are kept until the watermark passes their time plus the allowed lateness;
  a repeat after that is dead-lettered as late by the ingest step). It applies each event on
  arrival to the item's state and sends the item's row at once (online features follow events
  in arrival order: decayed counters do not depend on it), and forwards the event to the user
  stage (so each user's events keep their partition's order). A second, *settled* copy of the
  item's state takes the item's events in event-time order once the watermark passes their
  millisecond plus the allowed lateness (no earlier event can be accepted after that): then
  every impression of that millisecond gets the item's features as of its earlier
  milliseconds, sent to the user stage.
* **UserStage** (keyed by user) keeps the user's state, the user x category states (a map by
  category), the user's :class:`~features.labels.LabelJoiner` (on Flink's watermark only,
  ``follow_events=False``) and the item features of its pending impressions. For an impression
  it reads the user and user x category features as of the impression, then applies the event
  (rows for the user and the user x category) and feeds the joiner. An event-time timer at
  ``impression time + joiner.wait_ms`` (window + lateness + out-of-orderness) advances the
  joiner to the watermark, which emits the finished examples with their item features, which
  arrived when the watermark passed ``impression time + lateness``.

**Feature rows** leave through Flink's Kafka table sink (raw key and value,
:mod:`connectors.feature_rows`), at least once and flushed at every checkpoint, into the
compacted ``features.rows`` topic; the Feast writer (:mod:`jobs.feast_writer`) keeps Feast's
online store and offline log in step with it. A restored run re-sends the rows since its
checkpoint: the same values (they depend only on the events), so the writer converges to the
same store.

**Idleness**: a partition holds the watermark back until it has been silent for
:data:`IDLE_TIMEOUT_MS` (10 minutes, not the ingest step's 30 s). Under backpressure (a
replay, or this job's per-event keyed state costs) a partition that is merely slow to be read
would otherwise be marked idle, the watermark would jump with the other partitions, and its
records would then be dead-lettered as late. The price: a truly silent partition delays the
watermark, and so the examples, by up to 10 minutes.

**State TTL** in event time, as in the reference (:func:`features.state.alive`): an event more
than ``feature_state_ttl_ms`` after its key's latest one sees a fresh state; an event-time
timer (rounded to the hour, so at most one per key and hour) frees the key's state once the
watermark has passed its latest event by the TTL plus the allowed lateness.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pyflink.common import Row, Types
from pyflink.datastream import (
    DataStream,
    KeyedProcessFunction,
    OutputTag,
    StreamExecutionEnvironment,
)
from pyflink.datastream.state import MapStateDescriptor, ValueStateDescriptor
from pyflink.table import StreamTableEnvironment

from connectors.events import Event
from connectors.examples import encode_example
from connectors.feature_rows import encode_row
from features.labels import NO_RECENT, LabelJoiner
from features.rows import FeatureRow, feeds_state, update_item, update_user, update_user_category
from features.schema import DENSE_FEATURES
from features.state import (
    HOUR_MS,
    ItemState,
    UserCategoryState,
    UserState,
    alive,
    item_features,
    user_category_features,
    user_features,
)
from jobs import ingest
from jobs.ingest import EVENT_FIELDS, build_ingest
from jobs.runtime import BYTES, StatsFile, kafka_sink, side_output, stats_dir, subtask_index
from streamrank.config import Settings

JOB = "features"
IDLE_TIMEOUT_MS = 600_000
"""A partition silent this long no longer holds the watermark back (see the docstring)."""
ENRICHED = Types.PICKLED_BYTE_ARRAY()
"""(user_id, Event, None) or (user_id, impression event_id, item features) between the stages."""
ROW_RECORD = Types.ROW_NAMED(["k", "v"], [BYTES, BYTES])
"""A feature row as its Kafka key and value (:func:`connectors.feature_rows.encode_row`)."""
ROWS = OutputTag("feature-rows", ROW_RECORD)


def _event(row: Row) -> Event:
    return Event.model_construct(**{name: row[i] for i, name in enumerate(EVENT_FIELDS)})


def _record(row: FeatureRow) -> tuple[OutputTag, Row]:
    return ROWS, Row(*encode_row(row))


def expiry_timer(last_ms: int, ttl_ms: int, lateness_ms: int) -> int:
    """When a key whose latest event is at ``last_ms`` can be freed: the first hour boundary
    after the watermark can pass ``last_ms + ttl + lateness`` (see the module docstring).

    >>> expiry_timer(10, 2 * HOUR_MS, 60_000) == 3 * HOUR_MS
    True
    """
    due = last_ms + ttl_ms + lateness_ms + 1
    return -(-due // HOUR_MS) * HOUR_MS


class _Stage(KeyedProcessFunction):
    """What both stages share: settings, stats, the expiry timer."""

    part = "stage"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def open(self, runtime_context: Any) -> None:
        self._ttl = self._settings.feature_state_ttl_ms
        self._lateness = self._settings.allowed_lateness_ms
        self._stats = StatsFile(stats_dir(JOB, self._settings), self.part,
                                subtask_index(runtime_context), runtime_context.get_metrics_group())

    def _expiry(self, before: int | None, after: int | None,
                ctx: KeyedProcessFunction.Context) -> None:
        """Register the expiry timer of a key whose latest event moved from ``before``."""
        if after is None:
            return
        due = expiry_timer(after, self._ttl, self._lateness)
        if before is None or expiry_timer(before, self._ttl, self._lateness) != due:
            ctx.timer_service().register_event_time_timer(due)

    def _expired(self, last_ms: int | None, passed: int) -> bool:
        """Whether no acceptable event can see a state whose latest event is at ``last_ms``
        once the watermark has passed ``passed`` (a timer's time, see ``UserStage._expire``)."""
        return last_ms is not None and last_ms + self._ttl + self._lateness < passed

    def close(self) -> None:
        self._stats.close()


class ItemStage(_Stage):
    """Keyed by item: duplicates dropped, item rows on arrival, item features as of impressions.

    Emits ``(user_id, event, None)`` for each new event on arrival, ``(user_id, impression
    event_id, item features)`` once the watermark passes the impression's time plus the
    allowed lateness, and the item's rows on :data:`ROWS`.
    """

    part = "items"

    def open(self, runtime_context: Any) -> None:
        super().open(runtime_context)
        pickled = Types.PICKLED_BYTE_ARRAY()
        self._online = runtime_context.get_state(ValueStateDescriptor("online", pickled))
        self._settled = runtime_context.get_state(ValueStateDescriptor("settled", pickled))
        self._held = runtime_context.get_map_state(
            MapStateDescriptor("held", Types.LONG(), pickled))
        self._seen = runtime_context.get_map_state(
            MapStateDescriptor("seen", Types.STRING(), Types.LONG()))

    def process_element(self, row: Row, ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
        event = _event(row)
        if self._seen.contains(event.event_id):
            self._stats.add("duplicates")
            return
        t = event.event_time
        self._seen.put(event.event_id, t)
        self._held.put(t, (self._held.get(t) or []) + [event])
        ctx.timer_service().register_event_time_timer(t + self._lateness + 1)
        self._stats.add("events")
        if feeds_state(event):
            before: ItemState | None = self._online.value()
            state, feature_row = update_item(before, event, self._ttl)
            self._online.update(state)
            self._expiry(before.last_ms if before else None, state.last_ms, ctx)
            self._stats.add("rows")
            yield _record(feature_row)
        yield event.user_id, event, None

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator[Any]:
        t = timestamp - self._lateness - 1
        events: list[Event] | None = self._held.get(t)
        if events:
            self._held.remove(t)
            before: ItemState | None = self._settled.value()
            as_of = item_features(alive(before, t, self._ttl) or ItemState(), t)
            state = before
            for event in events:
                self._seen.remove(event.event_id)
                if event.event_type == "impression":
                    yield event.user_id, event.event_id, as_of
                if feeds_state(event):
                    state = update_item(state, event, self._ttl)[0]
            if state is not before:
                self._settled.update(state)
        online: ItemState | None = self._online.value()
        if online is not None and self._expired(online.last_ms, timestamp):
            self._online.clear()
            self._settled.clear()
            self._stats.add("expired_keys")


class UserStage(_Stage):
    """Keyed by user: user and user x category features and rows, and the label join."""

    part = "users"

    def open(self, runtime_context: Any) -> None:
        super().open(runtime_context)
        pickled = Types.PICKLED_BYTE_ARRAY()
        self._user = runtime_context.get_state(ValueStateDescriptor("user", pickled))
        self._categories = runtime_context.get_map_state(
            MapStateDescriptor("categories", Types.STRING(), pickled))
        self._joiner = runtime_context.get_state(ValueStateDescriptor("joiner", pickled))
        self._item_features = runtime_context.get_map_state(
            MapStateDescriptor("item_features", Types.STRING(), pickled))
        self._wait = LabelJoiner(self._settings).wait_ms

    def _load_joiner(self) -> LabelJoiner:
        return self._joiner.value() or LabelJoiner(self._settings, follow_events=False)

    def process_element(self, value: tuple[str, Any, dict[str, float] | None],
                        ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
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
            before = alive(user, t, self._ttl) or UserState()
            features = (user_features(before, t)
                        | user_category_features(alive(uc, t, self._ttl) or UserCategoryState(),
                                                 before, category, t))
            recent = (before.last_items, before.last_categories)
            ctx.timer_service().register_event_time_timer(t + self._wait + 1)
        if feeds_state(event):
            new_user, user_row = update_user(user, event, self._ttl)
            self._user.update(new_user)
            self._expiry(user.last_ms if user else None, new_user.last_ms, ctx)
            yield _record(user_row)
            if category is not None:
                new_uc, uc_row = update_user_category(uc, new_user, event, self._ttl)
                self._categories.put(category, new_uc)
                yield _record(uc_row)
            self._stats.add("rows", 1 + (category is not None))
        self._stats.add("events")
        joiner = self._load_joiner()
        joiner.add(event, features, recent)
        self._joiner.update(joiner)

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator[Any]:
        watermark = ctx.timer_service().current_watermark()
        joiner = self._load_joiner()
        finished = joiner.advance(watermark)
        self._stats.add("examples", len(finished))
        for example in finished:
            merged = example.features | (self._item_features.get(example.example_id) or {})
            self._item_features.remove(example.example_id)
            yield encode_example(example.model_copy(
                update={"features": {name: merged[name] for name in DENSE_FEATURES}}))
        held = joiner.held()
        if held["pending_impressions"] or held["waiting_labels"] or held["seen_ids"]:
            self._joiner.update(joiner)
        else:
            self._joiner.clear()
        self._expire(timestamp)

    def _expire(self, passed: int) -> None:
        """Free what expired before ``passed``, a time the watermark has passed (a timer's: the
        watermark itself jumps to the end of time at the end of a bounded input, while the
        timers it passed still fire one by one)."""
        user: UserState | None = self._user.value()
        if user is not None and self._expired(user.last_ms, passed):
            self._user.clear()
            self._stats.add("expired_keys")
        stale = [c for c, s in self._categories.items() if self._expired(s.last_ms, passed)]
        for category in stale:
            self._categories.remove(category)


def input_topic(settings: Settings) -> str:
    """The topic the job reads (through the ingest step)."""
    return ingest.input_topic(settings)


def feature_rows_sink(env: StreamExecutionEnvironment, rows: DataStream,
                      settings: Settings) -> None:
    """``rows`` (:data:`ROW_RECORD`) into ``settings.topic_feature_rows`` through Flink's Kafka
    table sink: raw key and value, at least once (flushed at every checkpoint)."""
    t_env = StreamTableEnvironment.create(env)
    t_env.execute_sql(f"""
        CREATE TEMPORARY TABLE feature_rows (k BYTES, v BYTES) WITH (
          'connector' = 'kafka',
          'topic' = '{settings.topic_feature_rows}',
          'properties.bootstrap.servers' = '{settings.kafka_bootstrap}',
          'key.format' = 'raw', 'key.fields' = 'k',
          'value.format' = 'raw', 'value.fields-include' = 'EXCEPT_KEY',
          'sink.delivery-guarantee' = 'at-least-once')""")
    statements = t_env.create_statement_set()
    statements.add_insert("feature_rows", t_env.from_data_stream(rows))
    statements.attach_as_datastream()


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
    rows = side_output(enriched, ROWS).union(side_output(examples, ROWS))
    feature_rows_sink(env, rows, settings)
