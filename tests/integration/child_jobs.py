"""Helpers of the job tests: jobs run as ``python -m jobs run NAME`` child processes, and
polling with a deadline."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from config import Settings, settings_env
from jobs.flink import latest_checkpoint

WAIT_S = 300.0


def wait_for(what: str, check: Callable[[], Any], timeout_s: float = WAIT_S,
             run: ChildJob | None = None) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout_s``, or as soon as
    ``run`` ends."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := check():
            return result
        if run is not None and run.proc.poll() is not None:
            pytest.fail(f"job exited ({run.proc.returncode}) before {what}:\n{run.tail()}")
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}" + (f":\n{run.tail()}" if run else ""))


@dataclass
class ChildJob:
    """A job run in a child process of its own session (the client and its Flink JVM)."""

    job: str
    settings: Settings
    proc: subprocess.Popen
    log: Path

    def tail(self) -> str:
        """The end of the run's output."""
        return self.log.read_text()[-3000:]

    def kill(self) -> None:
        """SIGKILL the run's whole session and reap it."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)

    def wait_for(self, what: str, check: Callable[[], Any], timeout_s: float = WAIT_S) -> Any:
        """Poll ``check`` until it returns something truthy; fail if the run ends first."""
        return wait_for(what, check, timeout_s, run=self)

    def finish(self, timeout_s: float = WAIT_S) -> None:
        """Wait for a bounded run to end; fail unless it ends well in time."""
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the run did not finish in {timeout_s:.0f} s:\n{self.tail()}")
        assert code == 0, self.tail()

    def checkpoint_id(self) -> int:
        """The number of the job's latest completed checkpoint (-1 when none)."""
        latest = latest_checkpoint(self.job, self.settings)
        return int(latest.name.removeprefix("chk-")) if latest else -1


def start_job(job: str, settings: Settings, log: Path, *flags: str) -> ChildJob:
    """``python -m jobs run JOB [flags]`` with ``settings`` in its environment; output to
    ``log``."""
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "jobs", "run", job, *flags], stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **settings_env(settings)})
    return ChildJob(job, settings, proc, log)
