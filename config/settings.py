"""The one typed configuration of streamrank, in sections.

Each section is a small typed model of the knobs one part reads; :class:`Settings` composes
them all (it *is* each section, so a :class:`Settings` goes wherever a section is asked for)
and loads every field from the environment as ``STREAMRANK_<FIELD>`` (upper case), e.g.
``STREAMRANK_KAFKA_BOOTSTRAP=10.0.0.5:9092``. Defaults run the local single-machine stack.
The CLI loads the root once and passes it down; library code takes the section it needs (or a
few values) and never reads ``os.environ`` itself.

>>> s = Settings(attribution_window_ms=60_000)
>>> isinstance(s, FeatureSettings), s.attribution_window_ms
(True, 60000)
>>> FeatureSettings().attribution_window_ms == 10 * MINUTE_MS
True
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
ENV_PREFIX = "STREAMRANK_"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StackSettings(_Section):
    """Where the local stack listens and keeps its run-time data."""

    run_dir: Path = Path(".streamrank")
    """Run-time data: logs, pids, broker and Redis data, checkpoints, snapshots, reports."""
    kafka_controller_port: int = 9093
    redis_url: str = "redis://127.0.0.1:6379/0"
    flink_rest: str = "127.0.0.1:8081"
    """REST address (``host:port``) of the Flink cluster that ``job submit``, ``job stop`` and
    ``job list`` talk to by default, and where ``cluster up`` serves it."""
    cluster_rpc_port: int = 6123
    """The JobManager's RPC port of ``cluster up`` (its other ports are free ones the OS picks)."""
    cluster_taskmanagers: int = 2
    """TaskManagers of ``cluster up``."""
    cluster_slots: int = 2
    """Task slots per TaskManager of ``cluster up``."""
    scorer_port: int = 8000
    sample_log: Path = REPO_ROOT / "data" / "taobao_user_behavior_sample.csv"
    """The real Taobao sample (in the repository, ``data/``) that replay, evaluate, the demo and
    benchmarks default to."""
    snapshot_store: str = ""
    """fsspec URL of the model snapshot store; empty means ``<run_dir>/snapshots``."""

    @property
    def snapshot_url(self) -> str:
        """The snapshot store as an fsspec URL."""
        return self.snapshot_store or str((self.run_dir / "snapshots").resolve())

    def path(self, *parts: str) -> Path:
        """A path inside the run directory (its parent created on demand)."""
        p = self.run_dir.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p


class KafkaSettings(_Section):
    """The broker and the topics."""

    kafka_bootstrap: str = "127.0.0.1:9092"
    topic_events: str = "events"
    topic_dlq: str = "events.dlq"
    topic_examples: str = "training.examples"
    topic_deltas: str = "model.deltas"
    topic_feature_rows: str = "features.rows"
    """Feature rows from the features job to the Feast writer (compacted; keyed by view + key)."""
    topic_items: str = "items"
    """The item catalog (compacted; keyed by item_id): ``streamrank catalog load`` writes it,
    scorers follow it for ``/search``."""
    events_partitions: int = 4
    """Partitions of ``events`` (and ``training.examples``, ``features.rows``); keyed by user_id."""
    topic_retention_bytes: int = 1 << 30
    """Retention per partition (by size: records carry event times, often old ones)."""
    max_message_bytes: int = 900_000
    """Model messages above this are chunked (Kafka's default limit is 1 MiB)."""
    kafka_security_protocol: Literal["PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL", "SSL"] = \
        "PLAINTEXT"
    """How every Kafka client (CLI, writer, trainer, scorers, the Flink jobs' sources and sinks)
    connects. ``stack up`` runs its broker with SASL/PLAIN when this is ``SASL_PLAINTEXT``."""
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    kafka_sasl_username: str = ""
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_ca_location: str = ""
    """A PEM file of the CA that signed the broker's certificate (``*_SSL``); empty: the system's."""


class FeatureSettings(_Section):
    """Event validation, event time, features and the label join (the reference's knobs)."""

    max_event_bytes: int = 16_384
    """Records larger than this go to the dead-letter topic as oversize."""
    min_event_time_ms: int = 946_684_800_000
    """Event times before 2000-01-01 are absurd and dead-lettered."""
    max_future_ms: int = 24 * HOUR_MS
    """Event times further than this ahead of the wall clock are dead-lettered."""
    max_out_of_orderness_ms: int = 5_000
    """Bounded out-of-orderness of the watermark."""
    allowed_lateness_ms: int = MINUTE_MS
    """Events later than the watermark by more than this are dead-lettered as late."""
    attribution_window_ms: int = 10 * MINUTE_MS
    """A click/purchase counts for an impression only within this long after it."""
    impressions_per_request: int = 5
    """For logs without impressions: the clicked item plus this many minus one sampled items."""
    popularity_window: int = 10_000
    """Negatives are sampled uniformly from the items of the next N clicks of the log."""
    sampling_seed: int = 7
    feature_state_ttl_ms: int = 48 * HOUR_MS
    """Keyed feature state idle this long (event time) is dropped; Feast's views keep rows as
    long."""


class JobSettings(_Section):
    """How the Flink jobs and the Feast writer run."""

    job_parallelism: int = 1
    jars_dir: Path = REPO_ROOT / "ops" / "jars"
    """The jobs' jars: ``flink/`` (the Kafka connector) and ``udfs/`` (the Java functions), built
    by ``ops/setup.sh``; shipped with every job."""
    state_backend: Literal["hashmap", "rocksdb", "forst"] = "hashmap"
    """Flink's keyed state backend: ``hashmap`` (on the heap, each checkpoint whole) or
    ``rocksdb``/``forst`` (on disk, incremental checkpoints)."""
    checkpoint_url: str = ""
    """Where the jobs' checkpoints go, any Flink filesystem URL (``file://``, ``s3://``,
    ``hdfs://``), one sub-directory per job; empty means ``<run_dir>/checkpoints``."""
    savepoint_url: str = ""
    """Where ``job stop --savepoint`` writes, as ``checkpoint_url``; empty means
    ``<run_dir>/savepoints``."""
    flink_options: dict[str, str] = {}
    """More Flink options for every job (JSON), e.g. ``python.archives`` and
    ``python.executable`` to ship a Python environment, or a filesystem's credentials."""
    checkpoint_interval_ms: int = 2_000
    """The training job's checkpoints (its Kafka offsets)."""
    features_checkpoint_interval_ms: int = Field(
        10_000, validation_alias=AliasChoices(
            "features_checkpoint_interval_ms", f"{ENV_PREFIX}FEATURES_CHECKPOINT_INTERVAL_MS",
            f"{ENV_PREFIX}FEATURES_FAST_CHECKPOINT_INTERVAL_MS"))
    """The ``features`` job's checkpoints: its heap state (mostly the impressions waiting for
    their labels) is written whole at each one, a quarter of its CPU at 2 s. Its sinks send
    as records come, so this bounds only the replay after a failure and how often the source
    commits its offsets. (``STREAMRANK_FEATURES_FAST_CHECKPOINT_INTERVAL_MS`` is read too.)"""
    features_rows_interval_ms: int = 200
    """The ``features`` job sends each key's newest feature row at most once per this long
    (and before every checkpoint): a hot key's rows within it become one. 0 sends every row."""
    source_idle_timeout_ms: int = 30_000
    """A Kafka partition of ``events`` with no record for this long stops holding the
    watermark back (a slower partition's events may then arrive ``late``)."""
    feast_batch_rows: int = 1_000
    feast_flush_ms: int = 50
    """The Feast writer waits at most this long for more rows before it writes (a poll of
    rows costs one script call per view: small batches are cheap)."""
    feast_commit_ms: int = 5_000
    """The Feast writer writes the offline log and commits its offsets this often."""


class TrainerSettings(_Section):
    """The model, the online trainer and the deltas it publishes."""

    model_id: str = "streamrank-wide-deep"
    embedding_dim: int = 16
    hash_buckets: int = 200_003
    """Rows per hashed ID embedding table (bounds memory)."""
    learning_rate: float = 0.05
    """Adagrad's learning rate for the deep part."""
    deep: bool = True
    """Train the deep part; off, the ranker is its wide part alone (FTRL logistic regression)."""
    text_features: bool = True
    """Feed the query–item text features (``features.query_item``) to the model (wide and
    deep); off, the model leaves them out."""
    wide_alpha: float = 0.1
    """FTRL-Proximal's alpha for the wide part (River's default is 0.05; the wide part's rows
    see few examples each, so it learns them faster)."""
    wide_beta: float = 1.0
    wide_l1: float = 1.0
    """FTRL-Proximal's L1 for the wide part: a row (e.g. a cross seen once) stays at 0 until
    its |z| passes it."""
    wide_l2: float = 1.0
    wide_intercept_lr: float = 0.01
    """The wide intercept's SGD learning rate (River's LogisticRegression default)."""
    dedup_window_examples: int = 200_000
    """The training job drops an example whose example_id was among the last this many."""
    batch_size: int = 256
    seed: int = 0
    delta_interval_s: float = 1.0
    delta_interval_examples: int = 5_000
    snapshot_every: int = 20
    """A full snapshot every this many versions."""
    dense_every: int = 1
    """Dense tensors travel in every Nth delta (sparse rows in every one)."""
    delta_hmac_key: SecretStr | None = None


class ScorerSettings(_Section):
    """The scorers: serving, batching, the feature read and the guard."""

    admin_token: SecretStr | None = None
    """When set, ``/admin/...`` requests need ``Authorization: Bearer <token>``."""
    rank_token: SecretStr | None = None
    """When set, ``/rank`` requests need ``Authorization: Bearer <token>`` (401 without)."""
    scorer_workers: int = Field(default=0, ge=0)
    """Scorer processes ``streamrank serve`` runs behind its port (0: one per core)."""
    scorer_host: str = "127.0.0.1"
    """The interface ``streamrank serve`` listens on (``0.0.0.0`` in a container)."""
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``."""
    max_batch_wait_ms: float = 2.0
    """A scorer waits at most this long to gather concurrent requests into one forward pass."""
    max_batch_candidates: int = Field(default=0, ge=0)
    """Candidates of one forward pass at most (requests beyond wait for the next); 0: the
    device's (16,384 on a CPU, 131,072 on a GPU)."""
    max_candidates: int = 2_000
    """Candidates of one ``/rank`` request at most (more: 422)."""
    max_request_bytes: int = 1 << 20
    """Body of one ``/rank`` request at most (more: 413)."""
    feature_reader: str = "redis"
    """How a scorer reads Feast: ``redis`` (one pipelined read through Feast's Redis online
    store, item cache) or ``sdk`` (``get_online_features``, any online store, no cache)."""
    swap_wait_ms: float = Field(default=20.0, ge=0)
    """A scorer applies a model update when no request is in flight, waiting at most this long
    for such a moment per poll of updates (0: at once)."""
    item_cache_ttl_ms: float = 1_000.0
    """A scorer reuses an item's Feast row for this long (item features lag by at most it)."""
    guard_min_auc: float | None = None
    """Quality guard: hold the last good version when an update reports a rolling click AUC
    below this (off when unset)."""
    guard_max_logloss: float | None = None
    """Quality guard: hold the last good version when an update reports a rolling click log
    loss above this (off when unset)."""
    purchase_weight: float = 1.0
    """A scorer ranks by ``score = p_click + purchase_weight * p_purchase``."""
    scorer_history: int = 200
    """Versions of deltas a scorer keeps to rebuild a version for pin/rollback."""
    search_recall: int = Field(default=200, ge=1)
    """``/search`` recalls this many catalog items (at least ``k``) by text embedding before
    it filters and ranks them."""
    search_max_k: int = Field(default=100, ge=1)
    """``/search`` returns at most this many items (a larger ``k``: 422)."""
    search_blocked_items: list[str] = []
    """Item IDs ``/search`` never returns (JSON list)."""
    search_blocked_categories: list[str] = []
    """Categories whose items ``/search`` never returns (JSON list)."""
    query_cache_size: int = Field(default=10_000, ge=0)
    """Query embeddings a scorer keeps (least recently used ones are dropped)."""


class Settings(BaseSettings, StackSettings, KafkaSettings, FeatureSettings, JobSettings,
               TrainerSettings, ScorerSettings):
    """All settings: every section's fields, each overridable by ``STREAMRANK_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True,
                                      populate_by_name=True)


def load_settings(**overrides: object) -> Settings:
    """Settings from defaults, ``STREAMRANK_*`` environment variables, then ``overrides``."""
    return Settings(**overrides)  # type: ignore[arg-type]


def settings_env(settings: Settings) -> dict[str, str]:
    """``STREAMRANK_*`` variables that reproduce ``settings`` in a child process (secrets
    included: a child needs them; never log the result).

    >>> env = settings_env(Settings(topic_events="events-x", run_dir=Path("/srv/run")))
    >>> env["STREAMRANK_TOPIC_EVENTS"], env["STREAMRANK_RUN_DIR"]
    ('events-x', '/srv/run')
    """
    env: dict[str, str] = {}
    for field in Settings.model_fields:
        value = getattr(settings, field)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, Path):
            value = value.resolve()
        env[f"{ENV_PREFIX}{field.upper()}"] = (json.dumps(value) if isinstance(value, dict | list)
                                               else str(value))
    return env
