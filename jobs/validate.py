"""The ``validate`` job: the ``features`` job's validation alone — valid events are discarded,
every other record goes to the dead-letter topic with its reason. For whoever needs only the
checks (a producer's first run, a benchmark of the ingest step)."""

from __future__ import annotations

from pyflink.datastream import DataStream, StreamExecutionEnvironment

from config import Settings
from jobs.features import build_validated, input_topic
from jobs.flink import discarding_sink

JOB = "validate"
__all__ = ["JOB", "build_job", "input_topic"]


def build_job(env: StreamExecutionEnvironment, settings: Settings, *,
              bounded: bool = False) -> None:
    """Validation and the dead-letter sink; a discarding sink of the valid events."""
    valid = build_validated(env, settings, job=JOB, bounded=bounded)
    DataStream(valid).sink_to(discarding_sink()).name("valid events")
