"""The training job: ``training.examples`` -> online trainer -> ``model.deltas`` and snapshots.

Graph::

    KafkaSource(topic_examples) -> TrainerFunction -> (bad records) KafkaSink(topic_dlq)

One subtask trains (one model), chained to the source: each record crosses from the JVM into
Python once. (A ``key_by`` for Flink's timers costs PyFlink a Python key-selector operator in
the source's task, a second crossing per record under the same interpreter lock: the job ran
at 0.45 of the trainer's rate with it.) In it:

* **Decode**: each raw record is parsed as a :class:`~connectors.training_examples.TrainingExample`; a
  bad one goes to ``topic_dlq`` with its reason (``not_utf8``, ``bad_json``, ``invalid_field``)
  and its original bytes (:func:`connectors.events.dead_letter`). Nothing is dropped silently.
  Decoding sits in the trainer's task on purpose: handing decoded examples from a separate
  decode task across the key-by costs a pickle round trip per example, slower than the
  decoding itself (``bench/bench_training_job.py`` measures the job against the trainer alone).
* **Search text**: with ``text_features`` on, the task follows the ``items`` topic into a
  catalog (:class:`~models.catalog.CatalogFollower`, a daemon thread) and gives each example of
  a search (one with a ``query``) its query–item text features through
  :class:`~models.catalog.SearchText`, the scorer's own path: what the model learns from is what
  it is served. The task reads the catalog as of its start before it trains (at most
  ``CATALOG_WAIT_S``); an item the catalog does not have yet has zeros, as at serving.
* **Train**: :class:`~models.loop.TrainingLoop` (the one training loop, in ``models/``) drops
  duplicate ``example_id``s (bounded: the last ``dedup_window_examples``; the examples sink
  of the features job is at-least-once, see :mod:`models.loop`), buffers mini-batches of
  ``batch_size``, runs each through progressive validation (score, online metrics, learn) and
  cuts versions with :class:`~models.versions.VersionCutter`; each is sent to
  ``topic_deltas`` (:class:`~connectors.model_updates.ModelUpdatePublisher`, flushed per
  version; snapshots also land in the snapshot store). A tick every
  ``min(1 s, delta_interval_s)`` (a daemon thread of the task, under the same lock as the
  records; it never calls into the JVM) learns a partial batch, cuts a version when one is
  due (so versions keep coming when the input goes idle) and rewrites :func:`status_path` (examples,
  examples/s, version, watermark, online metrics, drifts, duplicates); the counters
  ``examples``, ``duplicates`` and ``dead_letters`` are Flink metrics of the trainer's
  operator (on the job's REST endpoint). When the task closes
  (end of a bounded input, cancellation) the loop learns what is buffered and cuts a final
  version if anything was learned since the last one.
* **Versions** only go up, also across restarts: the trainer resumes from the store's latest
  snapshot and the first version it cuts is a full snapshot with a new number
  (:meth:`~models.versions.VersionCutter.resume`).
* **Thread mode** (PyFlink 2.3): the trainer must be the only Python function of its task.
  PyFlink follows a side output with a Python identity map; chained into the trainer's task it
  runs on the same thread under a second interpreter thread state, and importing torch there
  deadlocks (its pybind11 module init calls ``PyGILState_Ensure``, which picks the other thread
  state and waits for the GIL this thread holds). So the dead-letter branch runs unchained.
  torch and River are imported in :meth:`TrainerFunction.open`, not by the client that only
  builds the graph.

Delivery semantics after a crash (``--restore``). Flink's checkpoint (every
``checkpoint_interval_ms``) holds the source's Kafka offsets, not the model: the weights and
optimiser state (tens of MB) live in the snapshot store, written with every full snapshot
(every ``snapshot_every`` versions), because a Python function gets no hook at the checkpoint
barrier to store them consistently with the offsets. On restore the source resumes at the
checkpoint's offsets ``C`` and the trainer at the latest snapshot ``S``. So:

* examples read after ``S`` and before ``C`` are **skipped**: what the trainer learned from
  them died with the crashed weights, and the source does not read them again (less than
  ``snapshot_every`` version intervals' worth, since ``S`` is the latest snapshot);
* examples after ``C`` are read again and learned once by the surviving weights (the weights
  that had learned them are gone);
* if ``S`` was cut after ``C`` (a snapshot in the last checkpoint interval before the crash),
  the examples between ``C`` and ``S`` are **learned twice** (at most one checkpoint
  interval's worth).

The de-duplication window (:mod:`models.loop`) lives in the task's memory and starts empty
after a restart, so what the source reads again is learned as described above. That is at-most-once with a bounded loss in the usual case; online learning shrugs it off, and
a smaller ``snapshot_every`` shrinks the window. A start without ``--restore`` resumes at the
consumer group's committed offsets (committed at each completed checkpoint), i.e. the same.
Versions cut after ``S`` by the crashed run are superseded by the new snapshot, whose number is
higher (followers apply a newer snapshot whatever they serve). Dead letters are written at
least once (they may repeat after a restore). ``tests/integration/test_training_job.py``
kills a run with SIGKILL and checks the count: restored examples + those after the checkpoint.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyflink.common import WatermarkStrategy
from pyflink.datastream import (
    OutputTag,
    ProcessFunction,
    RuntimeContext,
    StreamExecutionEnvironment,
)

from config import Settings
from connectors.errors import DecodeError
from connectors.events import dead_letter
from connectors.training_examples import decode_example
from jobs.flink import BYTES, discarding_sink, group_id, kafka_sink, kafka_source

if TYPE_CHECKING:
    from connectors.model_updates import ModelUpdatePublisher
    from models.catalog import CatalogFollower, SearchText
    from models.loop import TrainingLoop
    from models.trainer import OnlineTrainer
    from models.versions import VersionCutter

JOB = "training"
DEAD_LETTERS = OutputTag("dead-letters", BYTES)
STATUS_INTERVAL_S = 1.0
CATALOG_WAIT_S = 30.0
"""How long the trainer waits, when it opens, for the catalog as of its start."""


def status_path(settings: Settings) -> Path:
    """The trainer's status file, ``<run_dir>/metrics/training-model.json``."""
    return settings.run_dir.resolve() / "metrics" / f"{JOB}-model.json"


class TrainerFunction(ProcessFunction):
    """Decodes, learns and publishes inside the job (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.tick_ms = max(10, int(min(STATUS_INTERVAL_S, settings.delta_interval_s) * 1000))
        self.opened = False

    def open(self, runtime_context: RuntimeContext) -> None:
        # The model's libraries load here, in the task: the client that builds the graph
        # never trains, and importing torch and River costs it seconds.
        import torch

        from connectors.model_updates import ModelUpdatePublisher
        from connectors.snapshot_store import SnapshotStore
        from models.catalog import Catalog, CatalogFollower, SearchText
        from models.loop import TrainingLoop
        from models.trainer import OnlineTrainer
        from models.versions import VersionCutter

        torch.set_num_threads(1)
        metrics = runtime_context.get_metrics_group()
        self.counters = {name: metrics.counter(name)
                         for name in ("examples", "duplicates", "dead_letters")}
        self.trainer: OnlineTrainer = OnlineTrainer(self.settings)
        self.publisher: VersionCutter = VersionCutter(self.trainer, self.settings)
        self.restored_version = self.publisher.resume(SnapshotStore.from_settings(self.settings))
        self.updates: ModelUpdatePublisher = ModelUpdatePublisher(self.settings)
        self.loop: TrainingLoop = TrainingLoop(self.trainer, self.settings, self.publisher)
        self.text: SearchText | None = None
        self.catalog_follower: CatalogFollower | None = None
        if self.settings.text_features:
            catalog = Catalog()
            self.text = SearchText(catalog, self.settings.query_cache_size)
            self.catalog_follower = CatalogFollower(self.settings, catalog)
            self.catalog_follower.start()
            if not self.catalog_follower.loaded.wait(CATALOG_WAIT_S):
                logging.getLogger(__name__).warning(
                    "the catalog did not load in %.0f s; training goes on while it does",
                    CATALOG_WAIT_S)
        self.status_file = status_path(self.settings)
        self.status_file.parent.mkdir(parents=True, exist_ok=True)
        self.rate_at = (time.monotonic(), self.trainer.examples_seen)
        self.write_status()
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.ticker = threading.Thread(target=self.tick_until_closed, daemon=True,
                                       name="trainer-tick")
        self.ticker.start()
        self.opened = True

    def process_element(self, value: bytes, ctx: ProcessFunction.Context) -> Iterator[Any]:
        try:
            example = decode_example(value)
        except DecodeError as err:
            self.counters["dead_letters"].inc()
            yield DEAD_LETTERS, dead_letter(value, err.reason, err.detail,
                                            self.settings.topic_examples)
            return
        self.counters["examples"].inc()
        if self.text is not None:
            example = self.text.enrich(example)
        with self.lock:
            duplicates = self.loop.duplicates
            self.send(self.loop.add((example,)))
            dropped = self.loop.duplicates - duplicates
        if dropped:
            self.counters["duplicates"].inc(dropped)

    def tick_until_closed(self) -> None:
        """Every tick: learn a partial batch, publish what is due, rewrite the status."""
        while not self.stopped.wait(self.tick_ms / 1000):
            with self.lock:
                self.send(self.loop.tick())
                self.write_status()

    def close(self) -> None:
        if not self.opened:  # open() failed: its error is the one to see
            return
        self.stopped.set()
        self.ticker.join()
        if self.catalog_follower is not None:
            self.catalog_follower.stop()
        self.send(self.loop.close())
        self.updates.flush()
        self.write_status()

    def send(self, messages: list[bytes]) -> None:
        """Send a version's messages and wait until Kafka has them."""
        if not messages:
            return
        for data in messages:
            self.updates.publish(self.settings.model_id, data)
        self.updates.flush()

    def write_status(self) -> None:
        """Rewrite the status file atomically."""
        now, examples = time.monotonic(), self.trainer.examples_seen
        then, before = self.rate_at
        self.rate_at = (now, examples)
        body = {
            "examples": examples,
            "examples_per_s": (examples - before) / max(now - then, 1e-9),
            "version": self.publisher.version,
            "restored_version": self.restored_version,
            "watermark_ms": self.trainer.watermark_ms,
            "drift_detected": self.trainer.drift_detected,
            "duplicates": self.loop.duplicates,
            "metrics": self.trainer.metrics(),
            "updated_ms": int(time.time() * 1000),
        }
        tmp = self.status_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(body))
        tmp.replace(self.status_file)


def input_topic(settings: Settings) -> str:
    """The topic the job reads."""
    return settings.topic_examples


def build_training(env: StreamExecutionEnvironment, settings: Settings,
                   bounded: bool = False) -> None:
    """Add the training job's graph to ``env`` (see the module docstring).

    ``bounded`` stops at the examples topic's end offsets as of the start (backfills, tests,
    benchmarks); the trainer then cuts a final version and the job finishes.
    """
    settings = settings.model_copy(update={"run_dir": settings.run_dir.resolve()})
    trained = (
        env.from_source(kafka_source(settings, input_topic(settings), group_id(JOB),
                                     bounded=bounded),
                        WatermarkStrategy.no_watermarks(), "training-examples")
        .uid("training-examples-source").set_parallelism(1)
        .process(TrainerFunction(settings)).name("trainer").uid("trainer").set_parallelism(1)
    )
    trained.sink_to(discarding_sink()).name("trainer-done").uid("trainer-done").set_parallelism(1)
    # get_side_output adds a Python identity map; chained into the trainer's task it would be a
    # second Python operator on the trainer's thread, where importing torch deadlocks (see
    # the module docstring), so it runs in a task of its own.
    (trained.get_side_output(DEAD_LETTERS).name("dead-letters").uid("training-dead-letters")
     .set_parallelism(1).disable_chaining()
     .sink_to(kafka_sink(settings, settings.topic_dlq))
     .name("dead-letters-sink").uid("training-dead-letters-sink").set_parallelism(1))


build_job = build_training
"""The name :mod:`jobs.launch` runs (``streamrank job run training``)."""
