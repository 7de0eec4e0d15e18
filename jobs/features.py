"""The ``features`` job: events -> validation/DLQ -> feature rows and training examples, with no
Python on the per-event path.

Graph (every operator is Java, from ``ops/flink-udfs``; this module only wires them through
PyFlink's JVM gateway)::

    KafkaSource(events) -> Validate --dead letters--> KafkaSink(events.dlq)
        -> key_by(item_id) -> ItemStage --rows--> RowCoalescer -> KafkaSink(features.rows)
        -> key_by(user_id) -> UserStage --rows--> RowCoalescer -> KafkaSink(features.rows)
        -> (same key) LabelJoin -> KafkaSink(training.examples)

Three tasks: the item stage and the user stage are behind a shuffle each; each stage's rows
sink is chained to it, and the label join, keyed as the user stage is, is chained to the user
stage (``DataStreamUtils.reinterpretAsKeyedStream``: no shuffle, no copy of the records).

It follows the pure reference, :class:`features.example_builder.ExampleBuilder`, stage for
stage; the golden suite (``tests/golden``: pytest against the reference, JUnit against the
Java stages) holds both to the same expected outputs:

* **Validate** (chained to the source): :func:`connectors.events.decode_event`'s checks and
  reason codes in one pass over the bytes, and ``late`` against the watermark; the dead letter
  is :func:`connectors.events.dead_letter`'s JSON (the detail words differ from pydantic's).
* **ItemStage** (keyed by item): drops a repeated ``(item_id, event_id)`` before it touches any
  state; applies each event on arrival to the item's online state and makes the item row at
  once; forwards the event. A settled copy of the item's state takes the item's events in
  event-time order once the watermark passes their millisecond plus the allowed lateness; then
  each impression of that millisecond gets the item's features as of its earlier milliseconds,
  sent on to the label join.
* **UserStage** (keyed by user): reads an impression's user and user x category features and
  the user's last clicked items and categories as of the impression; applies the event; makes
  the user and user x category rows at once (arrival order).
* **RowCoalescer** (chained to each stage): sends each key's newest row at most once per
  ``features_rows_interval_ms`` (a processing-time timer per interval) and every waiting row
  before each checkpoint barrier and at the end of a bounded input, so a hot key's rows become
  one per interval and no row waits across a checkpoint: on ``features.rows`` a key's rows are
  some of the reference's rows of it, in order, always with its last.
* **LabelJoin** (keyed by user): :class:`features.labels.LabelJoiner`'s rules per user, on
  event-time timers: a label is matched once the watermark passes its time plus the lateness
  and the out-of-orderness, an impression finished once it passes its time plus ``wait_ms``
  (window + lateness + out-of-orderness), with its price and recent clicks.

**State TTL** in event time, as in the reference (:func:`features.state.alive`): an event more
than ``feature_state_ttl_ms`` after its key's latest one sees a fresh state; an event-time
timer (rounded to the hour) frees a key's state once the watermark has passed its latest event
by the TTL plus the allowed lateness.

**Checkpoints** every ``settings.features_checkpoint_interval_ms`` (the heap state is
written whole at each one); network buffers wait at most :data:`BUFFER_TIMEOUT_MS`; the Kafka
sinks batch as :data:`jobs.flink.SINK_PRODUCER` says.

**Object reuse** is on: no Java function keeps or changes a record it has emitted to a
chained operator, so records pass between chained operators without a copy.

Watermarks are made per Kafka partition by ``EagerWatermarks``: bounded out-of-orderness,
emitted with each event that raises the maximum (not every 200 ms), so lateness follows every
event as :class:`~features.labels.LabelJoiner` does. A partition with no record for
``source_idle_timeout_ms`` stops holding the watermark back.

**Parallelism**: the source, validation, user stage and label join run at the job's
parallelism (``job_parallelism``, ``job submit --parallelism``), the item stage as one
subtask. The user stage must see each user's events in their partition's order (a user's
last clicked items, and an impression's user features, which must not count the click it
leads to, depend on it); each reaches it through the item stage, whose one subtask takes
every partition's events over one channel each, in order. Item stages in parallel would
interleave a user's events from several channels: a click could overtake its own impression
(label leakage). Running the item stage in parallel needs the user stage to take the events
from the source directly (dropping repeats itself). Operators have fixed ``uid``s: a
savepoint restores at any parallelism and across changes of the graph around them.

Semantics equal the Python reference (``features/``) when the job sees the events in the
order of the log: one ``events`` partition, or a log whose late events are late in any
interleaving (``docs/design.md``). Rows go to ``settings.topic_feature_rows`` in
the encoding of :func:`connectors.feature_rows.encode_row` (the Feast writer,
:mod:`features.writer_service`, consumes them), examples to ``settings.topic_examples`` (at least
once: the trainer de-duplicates by ``example_id``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pyflink.common import WatermarkStrategy
from pyflink.datastream import DataStream, StreamExecutionEnvironment
from pyflink.datastream.connectors import DeliveryGuarantee
from pyflink.java_gateway import get_gateway

from config import Settings
from connectors.admin import ensure_topics
from connectors.kafka_config import java_security_properties
from jobs.flink import SINK_PRODUCER, group_id, kafka_sink, kafka_source

JOB = "features"
BUFFER_TIMEOUT_MS = 10
"""How long a network buffer between the job's tasks may wait to fill (Flink's default is
100 ms, on each of the two shuffles a user row passes): fresher rows for slightly more
flushes."""
UDF_JAR = "streamrank-flink-udfs.jar"
"""The Java functions, built by ``ops/setup.sh`` from ``ops/flink-udfs`` into
``<jars_dir>/udfs/``."""


def udf_jar(settings: Settings) -> Path:
    """The built jar of ``ops/flink-udfs`` (``FileNotFoundError`` if ``ops/setup.sh`` has not
    built it)."""
    jar = settings.jars_dir.resolve() / "udfs" / UDF_JAR
    if not jar.is_file():
        raise FileNotFoundError(f"{jar} is missing: run `bash ops/setup.sh`")
    return jar


def input_topic(settings: Settings) -> str:
    """The topic the job reads."""
    return settings.topic_events


def _functions() -> Any:
    return get_gateway().jvm.streamrank.flink


def build_validated(env: StreamExecutionEnvironment, settings: Settings, *, job: str,
                    bounded: bool = False) -> Any:
    """Valid, on-time events (a Java ``DataStream<EventRecord>``) of ``settings.topic_events``;
    every other record goes to ``settings.topic_dlq``."""
    env.add_jars(udf_jar(settings).as_uri())
    env.get_config().enable_object_reuse()
    fn = _functions()
    source = kafka_source(settings, input_topic(settings), group_id(job), bounded=bounded)
    strategy = WatermarkStrategy(fn.EagerWatermarks.strategy(
        settings.max_out_of_orderness_ms, settings.source_idle_timeout_ms))
    raw = env.from_source(source, strategy, "events").uid("events")
    valid = raw._j_data_stream.process(fn.Validate(
        settings.min_event_time_ms, settings.max_future_ms, settings.max_event_bytes,
        settings.allowed_lateness_ms, settings.topic_events)).name("validate").uid("validate")
    DataStream(valid.getSideOutput(fn.Validate.deadLetters())) \
        .sink_to(kafka_sink(settings, settings.topic_dlq)).name("dead letters") \
        .uid("dead-letters")
    return valid


def rows_sink(settings: Settings) -> Any:
    """A Kafka sink of (key, value) feature rows to ``settings.topic_feature_rows``."""
    jvm = get_gateway().jvm
    builder = (jvm.org.apache.flink.connector.kafka.sink.KafkaSink.builder()
               .setBootstrapServers(settings.kafka_bootstrap)
               .setRecordSerializer(_functions().RowRecords(settings.topic_feature_rows))
               .setDeliveryGuarantee(DeliveryGuarantee.AT_LEAST_ONCE._to_j_delivery_guarantee()))
    for key, value in (SINK_PRODUCER | java_security_properties(settings)).items():
        builder.setProperty(key, value)
    return builder.build()


def build_job(env: StreamExecutionEnvironment, settings: Settings, *,
              bounded: bool = False) -> None:
    """The ``features`` job (see the module docstring): validation, feature rows and training
    examples."""
    ensure_topics(settings, {settings.topic_feature_rows: settings.events_partitions})
    env.enable_checkpointing(settings.features_checkpoint_interval_ms)
    env.set_buffer_timeout(BUFFER_TIMEOUT_MS)
    fn = _functions()
    valid = build_validated(env, settings, job=JOB, bounded=bounded)
    # one item subtask (see "Parallelism" in the module docstring)
    items = valid.keyBy(fn.Keys.item()).process(
        fn.ItemStage(settings.allowed_lateness_ms, settings.feature_state_ttl_ms)) \
        .name("item features").uid("item-features").setParallelism(1)
    users = items.keyBy(fn.Keys.user()).process(
        fn.UserStage(settings.allowed_lateness_ms, settings.feature_state_ttl_ms)) \
        .name("user features").uid("user-features")
    interval = settings.features_rows_interval_ms
    fn.RowCoalescer.coalesce(items.getSideOutput(fn.Rows.tag()), interval, "newest item rows") \
        .uid("newest-item-rows").setParallelism(1) \
        .sinkTo(rows_sink(settings)).name("item rows").uid("item-rows").setParallelism(1)
    fn.RowCoalescer.coalesce(users.getSideOutput(fn.Rows.tag()), interval, "newest user rows") \
        .uid("newest-user-rows") \
        .sinkTo(rows_sink(settings)).name("user rows").uid("user-rows")
    same_users = get_gateway().jvm.org.apache.flink.streaming.api.datastream.DataStreamUtils \
        .reinterpretAsKeyedStream(users, fn.Keys.user())
    examples = same_users.process(
        fn.LabelJoin(settings.attribution_window_ms, settings.allowed_lateness_ms,
                     settings.max_out_of_orderness_ms)).name("label join").uid("label-join")
    DataStream(examples).sink_to(kafka_sink(settings, settings.topic_examples)) \
        .name("training examples").uid("training-examples")

