"""The ingest step that every job starts with: raw ``events`` records in, valid events out.

``build_ingest`` reads the ``events`` topic with the Flink Kafka connector (``KafkaSource``) and
returns a stream of valid, on-time events as plain tuples in :data:`EVENT_FIELDS` order (see
:func:`event_record`). Every other record goes to ``events.dlq`` through a side output, as
:func:`connectors.events.dead_letter` of its original bytes with the reason: the decoder's
(``oversize``, ``bad_json``, ``invalid_field``, ``absurd_time``) or ``late``.

Costs measured on this machine (``bench/bench_ingest.py``) shaped three choices: events travel
between operators as pickled tuples (handing a typed ``Row`` from Python to the JVM cost ~20 µs
more per event); the dead-letter side output goes straight to the Java Kafka sink (PyFlink's
``get_side_output`` would add a Python identity map); and the validator itself counts valid
events, because PyFlink does not chain a Python operator after one with side outputs, so a
separate counting sink would cost a JVM-Python round trip per event.

Event time and watermarks:

* Watermarks are generated **in the source, per Kafka partition**, from the record timestamps,
  bounded out-of-orderness ``settings.max_out_of_orderness_ms``; a partition silent for
  :data:`IDLE_TIMEOUT_MS` stops holding the watermark back. Producers therefore set each
  record's Kafka timestamp to its ``event_time`` (``connectors.producer`` does). Per-partition
  watermarks stay right when one subtask catches up on a backlog of several partitions, which
  it reads in large per-partition chunks; a watermark taken after the source from the parsed
  ``event_time`` would then run ahead and drop whole chunks as late.
* An event is ``late`` when its ``event_time`` is more than ``settings.allowed_lateness_ms``
  behind the watermark at the validator. A producer that leaves the Kafka timestamp at the
  send time gets arrival-time watermarks: live traffic still works, a replay of old events is
  dead-lettered as late, with a detail that says why.
* The DLQ ``source`` is ``<topic> timestamp=<kafka timestamp>``: PyFlink's ``KafkaSource``
  hands Python only the record value and its timestamp, not partition and offset (those would
  need a Java ``KafkaRecordDeserializationSchema``; the SQL connector's metadata columns have
  them but cost ~3x the CPU per record here). The timestamp finds the record with
  ``offsetsForTimes``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pyflink.common import Duration, Types, WatermarkStrategy
from pyflink.datastream import DataStream, OutputTag, ProcessFunction, StreamExecutionEnvironment

from connectors.errors import DecodeError
from connectors.events import Event, dead_letter, decoder
from jobs.runtime import (
    BYTES,
    StatsFile,
    discarding_sink,
    group_id,
    kafka_sink,
    kafka_source,
    side_output,
    stats_dir,
    subtask_index,
)
from streamrank.config import Settings

EVENT_FIELDS: tuple[str, ...] = tuple(Event.model_fields)
"""The fields of :class:`~connectors.events.Event`, in the order of an event record."""
EVENTS = Types.PICKLED_BYTE_ARRAY()
"""Type of the valid-event stream (tuples, see :func:`event_record`)."""
DEAD_LETTERS = OutputTag("dead-letters", BYTES)
IDLE_TIMEOUT_MS = 30_000
"""A partition without records for this long no longer holds the watermark back."""


def event_record(event: Event) -> tuple[Any, ...]:
    """The event as the tuple that travels between operators: its fields in :data:`EVENT_FIELDS`
    order (pickling it costs ~2 µs; a NamedTuple ~8 µs, the pydantic model ~35 µs).

    >>> record = event_record(Event(event_id="e1", event_type="click", user_id="u1",
    ...                             item_id="i9", event_time=1511658000000))
    >>> record[EVENT_FIELDS.index("user_id")], record[EVENT_FIELDS.index("event_time")]
    ('u1', 1511658000000)
    >>> Event(**dict(zip(EVENT_FIELDS, record))).item_id
    'i9'
    """
    fields = event.__dict__
    return tuple([fields[name] for name in EVENT_FIELDS])


def watermarks(settings: Settings, idle_timeout_ms: int = IDLE_TIMEOUT_MS) -> WatermarkStrategy:
    """Per-partition watermarks from Kafka record timestamps (= ``event_time``)."""
    return (WatermarkStrategy
            .for_bounded_out_of_orderness(Duration.of_millis(settings.max_out_of_orderness_ms))
            .with_idleness(Duration.of_millis(idle_timeout_ms)))


class Validate(ProcessFunction):
    """Decode and check each raw record: valid, on-time events go on as :func:`event_record`
    tuples; every other record goes to :data:`DEAD_LETTERS` with its original bytes and reason.

    Counts ``valid``, ``invalid`` and ``reason.<code>`` (Flink counters and meters, and the
    job's stats files, see :class:`jobs.runtime.StatsFile`).
    """

    def __init__(self, settings: Settings, job: str) -> None:
        self._settings = settings
        self._job = job

    def open(self, runtime_context: Any) -> None:
        self._decode = decoder(self._settings)
        self._lateness = self._settings.allowed_lateness_ms
        self._topic = self._settings.topic_events
        self._stats = StatsFile(stats_dir(self._job, self._settings), "ingest",
                                subtask_index(runtime_context),
                                runtime_context.get_metrics_group())

    def process_element(self, raw: bytes, ctx: ProcessFunction.Context) -> Iterator[Any]:
        try:
            event = self._decode(raw)
        except DecodeError as err:
            yield self._reject(raw, err.reason, err.detail, ctx)
            return
        watermark = ctx.timer_service().current_watermark()
        if event.event_time < watermark - self._lateness:
            behind = watermark - event.event_time
            hint = ("" if ctx.timestamp() == event.event_time else
                    f"; its Kafka timestamp {ctx.timestamp()} is not its event_time")
            yield self._reject(raw, "late", f"event_time {event.event_time} is {behind} ms behind "
                               f"the watermark {watermark} (allowed lateness {self._lateness} ms)"
                               f"{hint}", ctx)
            return
        self._stats.add("valid")
        yield event_record(event)

    def _reject(self, raw: bytes, reason: str, detail: str,
                ctx: ProcessFunction.Context) -> tuple[OutputTag, bytes]:
        self._stats.add("invalid")
        self._stats.add(f"reason.{reason}")
        return DEAD_LETTERS, dead_letter(raw, reason, detail,
                                         f"{self._topic} timestamp={ctx.timestamp()}")

    def close(self) -> None:
        self._stats.close()


def input_topic(settings: Settings) -> str:
    """The topic the job reads."""
    return settings.topic_events


def build_ingest(
    env: StreamExecutionEnvironment,
    settings: Settings,
    *,
    job: str = "ingest",
    bounded: bool = False,
    idle_timeout_ms: int = IDLE_TIMEOUT_MS,
) -> DataStream:
    """Valid, on-time events of ``settings.topic_events`` as :func:`event_record` tuples, with
    event-time timestamps and watermarks; bad and late records go to ``settings.topic_dlq``.

    ``job`` names the consumer group (``streamrank-<job>``) and the stats directory; ``bounded``
    stops at the offsets that were the latest at start.
    """
    source = kafka_source(settings, input_topic(settings), group_id(job), bounded=bounded)
    raw = env.from_source(source, watermarks(settings, idle_timeout_ms), "events")
    valid = raw.process(Validate(settings, job), EVENTS).name("validate")
    side_output(valid, DEAD_LETTERS).sink_to(kafka_sink(settings, settings.topic_dlq)) \
        .name("dead letters")
    return valid


def build_job(env: StreamExecutionEnvironment, settings: Settings, *,
              bounded: bool = False) -> None:
    """The ``ingest`` job: :func:`build_ingest`, whose validator counts the valid events
    (Flink counter ``valid`` and meter ``valid_per_s``; ``<run_dir>/metrics/ingest``), into a
    discarding sink."""
    build_ingest(env, settings, job="ingest", bounded=bounded) \
        .sink_to(discarding_sink()).name("valid events")
