"""How streamrank's Flink jobs run: one configured environment, Kafka sources and sinks.

Choices (figures from ``bench/bench_ingest.py`` on this 2-core machine):

* **Python execution mode**: ``thread`` by default. The Python functions run inside the task's
  JVM (pemja), so records do not travel to a Python worker over gRPC: the ingest job used ~10 %
  less CPU per event than in ``process`` mode. ``process`` mode stays an option (functions that
  need their own process; its Python worker runs beside the JVM, so with a spare core its rate
  can be higher while it costs more CPU). The embedded interpreter does not see the venv by itself: ``python.pythonpath``
  gives it this venv's site-packages and the project root (the same works on a cluster whose
  task managers share this machine's paths).
* **Checkpoints**: every ``settings.checkpoint_interval_ms``, ``EXACTLY_ONCE`` mode. The
  barriers are aligned, so keyed state (feature counters, pending impressions) reflects each
  input record exactly once after a restore; sinks are ``AT_LEAST_ONCE`` (Kafka writes are
  flushed at each checkpoint, without transactions), which downstream consumers tolerate
  because the DLQ is for people and Feast writes are last-value-wins. Checkpoints go to
  ``<run_dir>/checkpoints/<job>`` and are retained on cancellation, so ``restore=True`` resumes
  from the latest one (Kafka offsets and state).
* **Restarts**: ``failure-rate``: up to 5 failures in 5 minutes, 2 s apart. A transient broker
  hiccup is survived; a crash loop ends the job, so a detached run exits visibly instead of
  restarting forever.
* **Sink batching**: Kafka sinks linger up to :data:`SINK_PRODUCER` ``linger.ms`` and batch
  up to its ``batch.size`` per partition: fewer, larger produce requests for the producers'
  network threads and the broker, for at most that much delay per record.
* **Loopback only**: the MiniCluster's REST endpoint, RPC and data ports bind 127.0.0.1.
* **Bytes**: Kafka values are read and written as Java ``byte[]`` (PyFlink's
  :class:`ByteArraySchema`), which arrive in Python as ``bytes``: a record that is not UTF-8
  reaches the validator unaltered (``SimpleStringSchema`` would replace bad bytes with U+FFFD).
"""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path
from typing import Literal

from pyflink.common import Configuration, Types
from pyflink.common.serialization import ByteArraySchema
from pyflink.datastream import StreamExecutionEnvironment
from pyflink.datastream.connectors import DeliveryGuarantee, Sink
from pyflink.datastream.connectors.kafka import (
    KafkaOffsetsInitializer,
    KafkaRecordSerializationSchema,
    KafkaSink,
    KafkaSource,
)
from pyflink.java_gateway import get_gateway

from config import Settings

ExecutionMode = Literal["thread", "process"]
DEFAULT_MODE: ExecutionMode = "thread"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
JAR_DIR = PROJECT_ROOT / "ops" / "jars" / "flink"
JARS = ("flink-connector-kafka-5.0.0-2.2.jar", "kafka-clients-4.1.1.jar")
BYTES = Types.PRIMITIVE_ARRAY(Types.BYTE())
"""Type of raw Kafka values in a DataStream (Java ``byte[]``, Python ``bytes``)."""


def jar_urls() -> list[str]:
    """``file://`` URLs of the Flink Kafka connector jars (``pipeline.jars``).

    >>> [u.rsplit("/", 1)[1] for u in jar_urls()]
    ['flink-connector-kafka-5.0.0-2.2.jar', 'kafka-clients-4.1.1.jar']
    """
    return [(JAR_DIR / name).as_uri() for name in JARS]


def python_path() -> str:
    """What a task's Python needs on its path (``python.pythonpath``): this environment's
    site-packages (pyflink, pemja, the libraries) and the project root (our modules)."""
    return os.pathsep.join([sysconfig.get_paths()["purelib"], str(PROJECT_ROOT)])


def checkpoint_dir(job: str, settings: Settings) -> Path:
    """Where ``job`` keeps its checkpoints (absolute; one sub-directory per Flink job id)."""
    return (settings.run_dir / "checkpoints" / job).resolve()


def latest_checkpoint(job: str, settings: Settings) -> Path | None:
    """The most recent completed, retained checkpoint of ``job`` (a ``chk-N`` directory)."""
    done = checkpoint_dir(job, settings).glob("*/chk-*/_metadata")
    newest = max(done, key=lambda p: p.stat().st_mtime, default=None)
    return newest.parent if newest else None


def flink_options(
    job: str,
    settings: Settings,
    *,
    mode: ExecutionMode = DEFAULT_MODE,
    restore_from: Path | None = None,
    rest_port: int | None = None,
) -> dict[str, str]:
    """The Flink configuration of a streamrank job.

    >>> from config import Settings
    >>> opts = flink_options("features", Settings(run_dir=Path("/srv/run")))
    >>> opts["execution.checkpointing.dir"], opts["python.execution-mode"]
    ('file:///srv/run/checkpoints/features', 'thread')
    >>> "execution.state-recovery.path" in opts
    False
    """
    opts = {
        "pipeline.name": f"streamrank-{job}",
        "pipeline.jars": ";".join(jar_urls()),
        "parallelism.default": str(settings.job_parallelism),
        "python.execution-mode": mode,
        "python.pythonpath": python_path(),
        "rest.bind-address": "127.0.0.1",
        "metrics.fetcher.update-interval": "1000",  # REST metrics at most 1 s old
        "jobmanager.bind-host": "127.0.0.1",
        "taskmanager.bind-host": "127.0.0.1",
        "taskmanager.host": "127.0.0.1",
        "execution.checkpointing.interval": f"{settings.checkpoint_interval_ms} ms",
        "execution.checkpointing.mode": "EXACTLY_ONCE",
        "execution.checkpointing.dir": checkpoint_dir(job, settings).as_uri(),
        "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
        "execution.checkpointing.num-retained": "2",
        "restart-strategy.type": "failure-rate",
        "restart-strategy.failure-rate.max-failures-per-interval": "5",
        "restart-strategy.failure-rate.failure-rate-interval": "5 min",
        "restart-strategy.failure-rate.delay": "2 s",
    }
    if restore_from is not None:
        opts["execution.state-recovery.path"] = restore_from.resolve().as_uri()
    if rest_port is not None:  # an embedded run's web UI and REST API (metrics)
        opts["rest.port"] = opts["rest.bind-port"] = str(rest_port)
    return opts


def create_env(
    job: str,
    settings: Settings,
    *,
    mode: ExecutionMode = DEFAULT_MODE,
    restore: bool = False,
    rest_port: int | None = None,
) -> StreamExecutionEnvironment:
    """A streaming environment for ``job`` configured by :func:`flink_options`.

    With ``restore``, the job resumes from :func:`latest_checkpoint` (``FileNotFoundError`` if
    there is none). Embedded runs get a MiniCluster; under ``flink run`` the same call returns
    the cluster's environment.
    """
    restore_from = latest_checkpoint(job, settings) if restore else None
    if restore and restore_from is None:
        raise FileNotFoundError(f"no retained checkpoint of {job!r} under "
                                f"{checkpoint_dir(job, settings)}")
    # Read when the gateway JVM starts (first use of PyFlink in this process): Flink's own log
    # goes under the run directory, and thread mode skips PyFlink's loopback worker server,
    # which only process mode uses and which listens on all interfaces.
    log_dir = settings.run_dir.resolve() / "logs" / f"flink-{job}"
    log_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("FLINK_LOG_DIR", str(log_dir))
    if mode == "thread":
        os.environ.setdefault("_python_worker_execution_mode", "process")
    config = Configuration()
    for key, value in flink_options(job, settings, mode=mode, restore_from=restore_from,
                                     rest_port=rest_port).items():
        config.set_string(key, value)
    return StreamExecutionEnvironment.get_execution_environment(config)


def _committed_or_earliest() -> KafkaOffsetsInitializer:
    # PyFlink's KafkaOffsetResetStrategy names the class shaded inside the fat SQL connector
    # jar; with the plain connector and kafka-clients it is the unshaded one.
    jvm = get_gateway().jvm
    return KafkaOffsetsInitializer(
        jvm.org.apache.flink.connector.kafka.source.enumerator.initializer.OffsetsInitializer
        .committedOffsets(jvm.org.apache.kafka.clients.consumer.OffsetResetStrategy.EARLIEST))


def group_id(job: str) -> str:
    """The Kafka consumer group of ``job``'s source (offsets committed at each checkpoint)."""
    return f"streamrank-{job}"


def kafka_source(
    settings: Settings, topic: str, group_id: str, *, bounded: bool = False
) -> KafkaSource:
    """A source of raw ``bytes`` values of ``topic``.

    It starts from the group's committed offsets (committed at each checkpoint), or from the
    earliest offset for a new group. ``bounded`` stops at the offsets that were the latest
    when the job started (benchmarks, tests, backfills).
    """
    builder = (
        KafkaSource.builder()
        .set_bootstrap_servers(settings.kafka_bootstrap)
        .set_topics(topic)
        .set_group_id(group_id)
        .set_starting_offsets(_committed_or_earliest())
        .set_value_only_deserializer(ByteArraySchema())
        .set_property("partition.discovery.interval.ms", "10000")
    )
    if bounded:
        builder.set_bounded(KafkaOffsetsInitializer.latest())
    return builder.build()


SINK_PRODUCER = {"linger.ms": "20", "batch.size": str(512 * 1024)}
"""Producer properties of every Kafka sink (see the module docstring)."""


def kafka_sink(
    settings: Settings,
    topic: str,
    *,
    guarantee: DeliveryGuarantee = DeliveryGuarantee.AT_LEAST_ONCE,
) -> KafkaSink:
    """A sink writing ``bytes`` records as the values of ``topic`` (no key).

    ``AT_LEAST_ONCE`` flushes at every checkpoint; ``EXACTLY_ONCE`` would add Kafka
    transactions (readers then need ``isolation.level=read_committed`` and see records only
    after each checkpoint).
    """
    builder = (
        KafkaSink.builder()
        .set_bootstrap_servers(settings.kafka_bootstrap)
        .set_record_serializer(
            KafkaRecordSerializationSchema.builder()
            .set_topic(topic)
            .set_value_serialization_schema(ByteArraySchema())
            .build())
        .set_delivery_guarantee(guarantee)
    )
    for key, value in SINK_PRODUCER.items():
        builder.set_property(key, value)
    if guarantee == DeliveryGuarantee.EXACTLY_ONCE:
        builder.set_transactional_id_prefix(f"streamrank-{topic}")
    return builder.build()


def discarding_sink() -> Sink:
    """A sink that drops its input: the end of a branch whose work is done in its functions."""
    return Sink(get_gateway().jvm.org.apache.flink.streaming.api.functions.sink.v2
                .DiscardingSink())
