"""`stack up` / `stack down` on a private run directory and ports: nothing is left behind, not
even the jobs started detached from that run directory."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from config import Settings
from jobs import processes
from streamrank import stack
from jobs.launch import run_job, running_pid

pytestmark = pytest.mark.integration


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports nothing listens on right now."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture
def private(tmp_path: Path) -> Settings:
    """Settings of a stack of its own: a fresh run directory and free ports."""
    kafka, controller, redis = free_ports(3)
    return Settings(run_dir=tmp_path / "run", kafka_bootstrap=f"127.0.0.1:{kafka}",
                    kafka_controller_port=controller, redis_url=f"redis://127.0.0.1:{redis}/0")


def processes_of(run_dir: Path) -> list[int]:
    """Live processes whose command line or environment names ``run_dir``."""
    needle = str(run_dir.resolve()).encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if (needle in (proc / "cmdline").read_bytes() or needle in (proc / "environ").read_bytes()) \
                    and processes.alive(int(proc.name)):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_stack_down_leaves_no_process(private: Settings) -> None:
    settings = private
    kafka_port = int(settings.kafka_bootstrap.rsplit(":", 1)[1])
    state = stack.up(settings)
    assert state == {"kafka": "started", "redis": "started"}
    rows = {r["service"]: r for r in stack.status(settings)}
    pids = [int(rows[name]["pid"]) for name in ("kafka", "redis")]  # type: ignore[arg-type]
    assert all(rows[name]["answers"] for name in ("kafka", "redis"))
    assert stack.up(settings) == {"kafka": "running", "redis": "running"}  # idempotent

    stack.down(settings)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not stack.listening("127.0.0.1", kafka_port)
    assert not list((settings.run_dir / "pids").glob("*.pid"))
    assert processes_of(settings.run_dir) == []


def test_a_detached_job_is_stopped_by_stack_down(private: Settings) -> None:
    settings = private
    stack.up(settings)
    try:
        # A pid file left by a run that died does not stop a new detached run from starting.
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        processes.pid_file(settings, "job-validate").write_text(f"{dead.pid}\n")
        assert running_pid("validate", settings) is None

        run = run_job("validate", settings, detach=True)
        assert running_pid("validate", settings) == run.pid
        rows = {r["service"]: r for r in stack.status(settings)}
        assert rows["job validate"]["pid"] == run.pid and rows["job validate"]["answers"]
        assert run.pid in processes_of(settings.run_dir)
    finally:
        stopped = stack.down(settings)
    assert stopped["job validate"] == f"stopped (pid {run.pid})"
    assert list(stopped)[0] == "job validate"  # before the broker it needs
    assert processes_of(settings.run_dir) == []
    assert {r["service"] for r in stack.status(settings)} == {"kafka", "redis"}
