"""Background processes of a run directory, known by the pid files under ``<run_dir>/pids/``.

The stack's services (``kafka.pid``, ``redis.pid``) and detached job runs (``job-<name>.pid``)
are recorded there when they start and stopped by those pids, never by name. A pid file whose
process is gone (or whose pid now belongs to some other program) counts as not running.

>>> import os
>>> alive(os.getpid()), alive(2 ** 22 + 1)
(True, False)
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from config import Settings

JOB_PREFIX = "job-"
"""Pid files of detached job runs are named ``job-<name>.pid``."""


def pid_file(settings: Settings, name: str) -> Path:
    """Where the process ``name`` of this run directory keeps its pid."""
    return settings.path("pids", f"{name}.pid")


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process: our own child until it is reaped (reaped here once it
    has exited), another's until only a zombie is left (a zombie leader whose other threads
    still run, as a JVM shutting down, is alive)."""
    try:
        return os.waitpid(pid, os.WNOHANG)[0] != pid
    except ChildProcessError:
        pass  # not our child: look at /proc
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        threads = len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return False
    return state != "Z" or threads > 1


def read_pid(settings: Settings, name: str, *markers: str) -> int | None:
    """The live pid recorded for ``name``, else ``None``.

    With ``markers``, the process's command line must also contain each of them (a pid reused by
    an unrelated program after a crash does not count).
    """
    try:
        pid = int(pid_file(settings, name).read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return None
    if not all(m.encode() in cmdline for m in markers):
        return None
    return pid if alive(pid) else None


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop(pid: int, timeout_s: float = 30.0, group: bool = True) -> None:
    """SIGTERM ``pid``, wait up to ``timeout_s``, then SIGKILL it (with ``group``: what is left
    of its process group too, e.g. the JVM a job started) and wait until all of it is gone."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout_s
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    try:
        if group:
            os.killpg(pid, signal.SIGKILL)
        elif alive(pid):
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    while alive(pid) or (group and _group_exists(pid)):
        time.sleep(0.05)


def detached_jobs(settings: Settings) -> dict[str, int | None]:
    """Every detached job run recorded in this run directory: name -> live pid (or ``None``)."""
    pids = settings.run_dir / "pids"
    names = [f.stem.removeprefix(JOB_PREFIX) for f in sorted(pids.glob(f"{JOB_PREFIX}*.pid"))]
    return {name: job_pid(settings, name) for name in names}


def job_pid(settings: Settings, name: str) -> int | None:
    """The live pid of the detached run of job ``name``, else ``None``."""
    return read_pid(settings, JOB_PREFIX + name, "jobs", name)
