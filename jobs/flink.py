"""How streamrank's Flink jobs run: one configured environment, Kafka sources and sinks.

Choices (figures in ``docs/benchmarks.md``, "PyFlink execution mode"):

* **Python execution mode**: ``thread`` by default. The Python functions run inside the task's
  JVM (pemja), so records do not travel to a Python worker over gRPC: the ingest job used ~10 %
  less CPU per event than in ``process`` mode. ``process`` mode stays an option (functions that
  need their own process; its Python worker runs beside the JVM, so with a spare core its rate
  can be higher while it costs more CPU). The embedded interpreter does not see the venv by itself: ``python.pythonpath``
  gives an embedded run's tasks this venv's site-packages and the project root; a job submitted
  to a cluster leaves it to the cluster's configuration (``docs/cluster.md``).
* **Checkpoints**: every ``settings.checkpoint_interval_ms``, ``EXACTLY_ONCE`` mode. The
  barriers are aligned, so keyed state (feature counters, pending impressions) reflects each
  input record exactly once after a restore; sinks are ``AT_LEAST_ONCE`` (Kafka writes are
  flushed at each checkpoint, without transactions), which downstream consumers tolerate
  because the DLQ is for people and Feast writes are last-value-wins. Checkpoints go to
  ``<checkpoint_url>/<job>`` (``<run_dir>/checkpoints/<job>`` by default; any Flink filesystem
  URL) and are retained on cancellation, so ``restore=True`` resumes from the latest one
  (Kafka offsets and state). The state backend is ``settings.state_backend``: ``hashmap``
  writes each checkpoint whole, ``rocksdb``/``forst`` incrementally.
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
import sys
import sysconfig
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlparse

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
from connectors.kafka_config import java_security_properties

ExecutionMode = Literal["thread", "process"]
DEFAULT_MODE: ExecutionMode = "thread"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
JARS = ("flink-connector-kafka-5.0.0-2.2.jar", "kafka-clients-4.1.1.jar")
BYTES = Types.PRIMITIVE_ARRAY(Types.BYTE())
"""Type of raw Kafka values in a DataStream (Java ``byte[]``, Python ``bytes``)."""


def jar_urls(settings: Settings) -> list[str]:
    """``file://`` URLs of the Flink Kafka connector jars (``pipeline.jars``), in
    ``settings.jars_dir``.

    >>> [u.rsplit("/", 1)[1] for u in jar_urls(Settings())]
    ['flink-connector-kafka-5.0.0-2.2.jar', 'kafka-clients-4.1.1.jar']
    """
    return [(settings.jars_dir.resolve() / "flink" / name).as_uri() for name in JARS]


def python_path() -> str:
    """What a task's Python needs on its path (``python.pythonpath``): this environment's
    site-packages (pyflink, pemja, the libraries) and the project root (our modules)."""
    return os.pathsep.join([sysconfig.get_paths()["purelib"], str(PROJECT_ROOT)])


def storage_url(configured: str, settings: Settings, local: str) -> str:
    """A configured Flink filesystem URL, or ``<run_dir>/<local>`` as a ``file://`` URL.

    >>> storage_url("", Settings(run_dir=Path("/srv/run")), "savepoints")
    'file:///srv/run/savepoints'
    >>> storage_url("s3://bucket/cp/", Settings(), "checkpoints")
    's3://bucket/cp'
    """
    return (configured or (settings.run_dir / local).resolve().as_uri()).rstrip("/")


def checkpoint_url(job: str, settings: Settings) -> str:
    """Where ``job`` keeps its checkpoints (one sub-directory per Flink job id)."""
    return f"{storage_url(settings.checkpoint_url, settings, 'checkpoints')}/{job}"


def checkpoint_dir(job: str, settings: Settings) -> Path | None:
    """:func:`checkpoint_url` as a local path (``None`` unless it is a ``file://`` URL)."""
    url = urlparse(checkpoint_url(job, settings))
    return Path(unquote(url.path)) if url.scheme == "file" else None


def latest_checkpoint(job: str, settings: Settings) -> Path | None:
    """The most recent completed, retained checkpoint of ``job`` (a ``chk-N`` directory) in a
    local checkpoint directory."""
    base = checkpoint_dir(job, settings)
    done = base.glob("*/chk-*/_metadata") if base else ()
    newest = max(done, key=lambda p: p.stat().st_mtime, default=None)
    return newest.parent if newest else None


def flink_options(
    job: str,
    settings: Settings,
    *,
    mode: ExecutionMode = DEFAULT_MODE,
    restore_from: str | None = None,
    rest_port: int | None = None,
    jobmanager: str | None = None,
) -> dict[str, str]:
    """The Flink configuration of a streamrank job: embedded (a MiniCluster on loopback, whose
    tasks find Python through this environment), or submitted to the cluster whose REST
    endpoint is ``jobmanager`` (``host:port``; its tasks are told this environment's Python and
    site-packages, as the local cluster has them; a cluster with Python elsewhere sets
    ``python.*`` in ``settings.flink_options``). ``restore_from`` is a checkpoint's or savepoint's path or URL;
    ``settings.flink_options`` come last.

    >>> from config import Settings
    >>> opts = flink_options("features", Settings(run_dir=Path("/srv/run")))
    >>> opts["execution.checkpointing.dir"], opts["python.execution-mode"]
    ('file:///srv/run/checkpoints/features', 'thread')
    >>> "execution.state-recovery.path" in opts
    False
    >>> remote = flink_options("features", Settings(state_backend="rocksdb"),
    ...                        jobmanager="10.0.0.5:8081")
    >>> remote["execution.target"], remote["rest.port"], "python.pythonpath" in remote
    ('remote', '8081', True)
    >>> remote["state.backend.type"], remote["execution.checkpointing.incremental"]
    ('rocksdb', 'true')
    """
    opts = {
        "pipeline.name": f"streamrank-{job}",
        "pipeline.jars": ";".join(jar_urls(settings)),
        "parallelism.default": str(settings.job_parallelism),
        "python.execution-mode": mode,
        "metrics.fetcher.update-interval": "1000",  # REST metrics at most 1 s old
        "execution.checkpointing.interval": f"{settings.checkpoint_interval_ms} ms",
        "execution.checkpointing.mode": "EXACTLY_ONCE",
        "execution.checkpointing.dir": checkpoint_url(job, settings),
        "execution.checkpointing.savepoint-dir": storage_url(settings.savepoint_url, settings,
                                                             "savepoints"),
        "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
        "execution.checkpointing.num-retained": "2",
        "state.backend.type": settings.state_backend,
        "execution.checkpointing.incremental": str(settings.state_backend != "hashmap").lower(),
        "restart-strategy.type": "failure-rate",
        "restart-strategy.failure-rate.max-failures-per-interval": "5",
        "restart-strategy.failure-rate.failure-rate-interval": "5 min",
        "restart-strategy.failure-rate.delay": "2 s",
    }
    if jobmanager is None:
        opts |= {"python.pythonpath": python_path(), "rest.bind-address": "127.0.0.1",
                 "jobmanager.bind-host": "127.0.0.1", "taskmanager.bind-host": "127.0.0.1",
                 "taskmanager.host": "127.0.0.1"}
    else:
        host, _, port = jobmanager.rpartition(":")
        # the tasks' Python is this environment's (a cluster elsewhere sets its own through
        # STREAMRANK_FLINK_OPTIONS): a job's python.* options take precedence over the
        # cluster's, and PyFlink otherwise asks a bare `python` on the TaskManager's PATH
        opts |= {"execution.target": "remote", "rest.address": host, "rest.port": port,
                 "python.executable": sys.executable, "python.client.executable": sys.executable,
                 "python.pythonpath": python_path()}
    if restore_from is not None:
        opts["execution.state-recovery.path"] = restore_from
    if rest_port is not None:  # an embedded run's web UI and REST API (metrics)
        opts["rest.port"] = opts["rest.bind-port"] = str(rest_port)
    return opts | settings.flink_options


def create_env(
    job: str,
    settings: Settings,
    *,
    mode: ExecutionMode = DEFAULT_MODE,
    restore: bool = False,
    restore_from: str | None = None,
    rest_port: int | None = None,
    jobmanager: str | None = None,
) -> StreamExecutionEnvironment:
    """A streaming environment for ``job`` configured by :func:`flink_options`.

    With ``restore``, the job resumes from :func:`latest_checkpoint` (``FileNotFoundError`` if
    there is none); with ``restore_from``, from that checkpoint or savepoint. Without
    ``jobmanager`` it runs on an embedded MiniCluster; with it, ``execute_async`` submits it to
    that cluster.
    """
    if restore:
        latest = latest_checkpoint(job, settings)
        if latest is None:
            raise FileNotFoundError(f"no retained checkpoint of {job!r} under "
                                    f"{checkpoint_url(job, settings)}")
        restore_from = latest.resolve().as_uri()
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
                                     rest_port=rest_port, jobmanager=jobmanager).items():
        config.set_string(key, value)
    if jobmanager is None:
        return StreamExecutionEnvironment.get_execution_environment(config)
    # getExecutionEnvironment makes a local environment whatever the target; the constructor
    # keeps ``execution.target: remote``
    j_env = get_gateway().jvm.org.apache.flink.streaming.api.environment \
        .StreamExecutionEnvironment(config._j_configuration)
    return StreamExecutionEnvironment(j_env)


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
    for key, value in java_security_properties(settings).items():
        builder.set_property(key, value)
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
    for key, value in (SINK_PRODUCER | java_security_properties(settings)).items():
        builder.set_property(key, value)
    if guarantee == DeliveryGuarantee.EXACTLY_ONCE:
        builder.set_transactional_id_prefix(f"streamrank-{topic}")
    return builder.build()


def discarding_sink() -> Sink:
    """A sink that drops its input: the end of a branch whose work is done in its functions."""
    return Sink(get_gateway().jvm.org.apache.flink.streaming.api.functions.sink.v2
                .DiscardingSink())
