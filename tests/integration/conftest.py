"""Fixtures of the job tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from config import Settings
from tests.integration.child_jobs import ChildJob, start_job


@pytest.fixture
def child_jobs(tmp_path: Path) -> Iterator[Callable[..., ChildJob]]:
    """Starts job runs (``start(job, settings, *flags)``); kills what is left of them at the
    end."""
    started: list[ChildJob] = []

    def start(job: str, settings: Settings, *flags: str) -> ChildJob:
        started.append(start_job(job, settings, tmp_path / f"{job}-{len(started)}.log", *flags))
        return started[-1]

    yield start
    for run in started:
        run.kill()
