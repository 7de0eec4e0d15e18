"""Running streamrank's jobs: embedded (a MiniCluster in this process), detached (the same in a
background process), or submitted to a standalone Flink cluster.

Detached runs keep their pid in ``<run_dir>/pids/job-<name>.pid`` and log to
``<run_dir>/logs/job-<name>.log``; :func:`stop_job` stops them by that pid. An embedded Flink
run serves Flink's web UI and REST API on a free loopback port, recorded in
``<run_dir>/jobs/<name>.rest`` while it runs (:func:`list_jobs`); the job's counters are
Flink's own metrics there (:mod:`jobs.metrics`).
"""

from __future__ import annotations

import importlib
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import pyflink
from pyflink.common import JobClient
from pyflink.java_gateway import get_gateway

from config import Settings, settings_env
from connectors.admin import caught_up, end_offsets
from jobs import processes
from jobs.flink import DEFAULT_MODE, PROJECT_ROOT, ExecutionMode, create_env, group_id
from jobs.metrics import FlinkRest

JobBuilder = Callable[..., None]
"""``build_job(env, settings, *, bounded)`` adds a job's operators to ``env``."""

JOBS: dict[str, str] = {"features": "jobs.features", "validate": "jobs.validate",
                        "training": "jobs.training", "writer": "features.writer_service"}
"""The jobs by name: the module whose ``build_job`` builds each (imported when run)."""
PROCESSES = frozenset({"writer"})
"""Jobs that are plain processes, not Flink jobs: their module's ``run(settings, bounded=)``
runs them (the Feast writer; ``job run`` and ``--detach`` work alike, ``submit`` does not)."""
DRAIN_IDLE_S = 10.0
SUBMIT_TIMEOUT_S = 180.0

PYFLINK_HOME = Path(pyflink.__file__).parent
"""PyFlink's bundled Flink distribution (``bin/flink``, ``bin/start-cluster.sh``, ``opt/``)."""

PACKAGES = ("config", "jobs", "connectors", "features", "models")
"""The project's packages, shipped to a cluster with each submission."""


@dataclass(frozen=True)
class JobRun:
    """What :func:`run_job` started or ran: ``pid`` and ``log`` for a detached run; ``job_id``
    and the final ``state`` (``FINISHED``, ``CANCELED``) for a foreground one."""

    name: str
    pid: int
    state: str
    job_id: str = ""
    log: Path | None = None


def _check(name: str) -> None:
    if name not in JOBS:
        raise ValueError(f"unknown job {name!r}; jobs: {', '.join(sorted(JOBS))}")


def _builder(name: str) -> JobBuilder:
    _check(name)
    return importlib.import_module(JOBS[name]).build_job


def _input_topic(name: str, settings: Settings) -> str:
    return importlib.import_module(JOBS[name]).input_topic(settings)


def log_file(name: str, settings: Settings) -> Path:
    """Where a detached run of ``name`` logs."""
    return settings.path("logs", f"job-{name}.log")


def detached_env(settings: Settings) -> dict[str, str]:
    """The environment of a detached child: ours and ``settings_env``, less the Prometheus
    directory that importing Feast here made (a temp dir this process deletes at exit, which the
    child outlives; its own Feast import makes its own).

    >>> os.environ["PROMETHEUS_MULTIPROC_DIR"] = "/tmp/feast_metrics_x1"
    >>> "PROMETHEUS_MULTIPROC_DIR" in detached_env(Settings())
    False
    >>> del os.environ["PROMETHEUS_MULTIPROC_DIR"]
    """
    env = {**os.environ, **settings_env(settings)}
    for key in ("PROMETHEUS_MULTIPROCESS_DIR", "PROMETHEUS_MULTIPROC_DIR"):
        if Path(env.get(key, "")).name.startswith("feast_metrics_"):
            del env[key]
    return env


def running_pid(name: str, settings: Settings) -> int | None:
    """The pid of the detached run of ``name`` if it is alive, else ``None`` (a stale pid file,
    whose process is gone, does not count)."""
    return processes.job_pid(settings, name)


def _spawn(name: str, settings: Settings, bounded: bool, restore: bool,
           mode: ExecutionMode) -> JobRun:
    if (pid := running_pid(name, settings)) is not None:
        raise RuntimeError(f"job {name!r} already runs detached (pid {pid})")
    cmd = [sys.executable, "-m", "jobs", "run", name, "--mode", mode]
    cmd += ["--bounded"] * bounded + ["--restore"] * restore
    log = log_file(name, settings)
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env=detached_env(settings))
    processes.pid_file(settings, processes.JOB_PREFIX + name).write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + 10
    while running_pid(name, settings) != proc.pid:  # until its /proc entry shows the command
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"job {name!r} did not start (exit {proc.poll()}); see {log}")
        time.sleep(0.05)
    return JobRun(name=name, pid=proc.pid, state="STARTED", log=log)


def rest_file(name: str, settings: Settings) -> Path:
    """Where an embedded run of ``name`` records its REST address while it runs."""
    return settings.path("jobs", f"{name}.rest")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_job(
    name: str,
    settings: Settings,
    detach: bool = False,
    bounded: bool = False,
    restore: bool = False,
    mode: ExecutionMode = DEFAULT_MODE,
) -> JobRun:
    """Run job ``name`` on an embedded MiniCluster.

    In the foreground it returns when the job finishes (``bounded``) or, on SIGINT/SIGTERM,
    after cancelling it (its checkpoints are kept, so ``restore=True`` resumes from the
    latest); a failed job raises ``RuntimeError``. With ``detach`` it starts the same run in a
    background process and returns at once (stop it with :func:`stop_job`).

    A restored bounded run reads up to the end offsets of its input as they are when it starts,
    then is stopped with a savepoint that advances to the end of event time (so every timer
    fires, as at the end of a fresh bounded run): Flink's Kafka source restored from a
    checkpoint never reports the end of a bounded input by itself (FLINK-31006).
    """
    if detach:
        _check(name)
        return _spawn(name, settings, bounded, restore, mode)
    if name in PROCESSES:
        importlib.import_module(JOBS[name]).run(settings, bounded=bounded)
        return JobRun(name=name, pid=os.getpid(), state="FINISHED")
    port = _free_port()
    env = create_env(name, settings, mode=mode, restore=restore, rest_port=port)
    _builder(name)(env, settings, bounded=bounded)
    drain = _Drain(name, settings, f"127.0.0.1:{port}") if bounded and restore else None
    stop: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.append(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    rest = rest_file(name, settings)
    try:
        client = env.execute_async(f"streamrank-{name}")
        rest.write_text(f"127.0.0.1:{port}\n")
        result = client.get_job_execution_result()
        cancelled = False
        while not result.done():
            if stop and not cancelled:
                client.cancel().result()
                cancelled = True
            if drain is not None and drain.due(str(client.get_job_id())):
                _drain(client, settings.path("savepoints", name).resolve())
                drain = None
            time.sleep(0.5)
        if result.exception() is not None and not cancelled:
            raise RuntimeError(f"job {name!r} failed: {result.exception()}")
        return JobRun(name=name, pid=os.getpid(), state="CANCELED" if cancelled else "FINISHED",
                      job_id=str(client.get_job_id()))
    finally:
        rest.unlink(missing_ok=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _Drain:
    """When a restored bounded run is done: a restored bounded KafkaSource never signals its
    end (FLINK-31006), so the run is drained once its consumer group has committed the end
    offsets seen at start, or once its source has read records and then none for
    :data:`DRAIN_IDLE_S` (the offsets of a split that finished just before the checkpoint it
    was restored from are not always committed again)."""

    def __init__(self, name: str, settings: Settings, rest: str) -> None:
        self._settings, self._group = settings, group_id(name)
        self._topic = _input_topic(name, settings)
        self._ends = end_offsets(settings, self._topic)
        self._rest = FlinkRest(rest)
        self._read, self._read_at = 0, time.monotonic()

    def due(self, job_id: str) -> bool:
        """Whether the run has read all it should."""
        try:
            read = self._rest.records_read(job_id)
        except (OSError, ValueError, KeyError, StopIteration):
            read = self._read  # not reported yet
        if read != self._read:
            self._read, self._read_at = read, time.monotonic()
        return (caught_up(self._settings, self._topic, self._group, self._ends)
                or (self._read > 0 and time.monotonic() - self._read_at > DRAIN_IDLE_S))


def _drain(client: JobClient, savepoints: Path) -> None:
    """Stop the job with a savepoint, advancing to the end of event time (PyFlink 2.3's
    ``JobClient.stop_with_savepoint`` calls a Java signature that Flink 2 no longer has)."""
    jvm = get_gateway().jvm
    client._j_job_client.stopWithSavepoint(
        True, str(savepoints), jvm.org.apache.flink.core.execution.SavepointFormatType.CANONICAL)


def stop_job(name: str, settings: Settings, timeout_s: float = 30.0) -> bool:
    """Stop the detached run of ``name``: SIGTERM (the job is cancelled, its checkpoints kept),
    then SIGKILL to its process group after ``timeout_s``. Returns whether one was running."""
    pid = running_pid(name, settings)
    processes.pid_file(settings, processes.JOB_PREFIX + name).unlink(missing_ok=True)
    if pid is None:
        return False
    processes.stop(pid, timeout_s)
    return True


@dataclass(frozen=True)
class JobEntry:
    """A job of this run directory as :func:`list_jobs` sees it."""

    name: str
    pid: int | None
    """The detached run's live pid (``None``: not running detached)."""
    rest: str
    """``host:port`` of its Flink web UI and REST API while it runs ("" for the writer, or
    before the job has started)."""


def list_jobs(settings: Settings) -> list[JobEntry]:
    """Every job with its detached run's pid and its web UI address."""
    entries = []
    for name in sorted(JOBS):
        pid = running_pid(name, settings)
        rest = settings.run_dir / "jobs" / f"{name}.rest"
        address = rest.read_text().strip() if pid is not None and rest.is_file() else ""
        entries.append(JobEntry(name, pid, address))
    return entries


def execute(name: str, settings: Settings, bounded: bool = False,
            mode: ExecutionMode = DEFAULT_MODE) -> str:
    """Build job ``name`` in the current Flink context and submit it without waiting; returns
    the job id. ``flink run`` calls this (through ``python -m jobs execute NAME``)."""
    if name in PROCESSES:
        raise ValueError(f"{name!r} is not a Flink job: run it with `job run {name}`")
    builder = _builder(name)
    env = create_env(name, settings, mode=mode)
    # A cluster started from PyFlink's bin/ has flink-python in opt/, not on its class path.
    env.add_jars(*(jar.as_uri() for jar in (PYFLINK_HOME / "opt").glob("flink-python-*.jar")))
    builder(env, settings, bounded=bounded)
    return str(env.execute_async(f"streamrank-{name}").get_job_id())


def source_archive(settings: Settings) -> Path:
    """A zip of the project's packages for a cluster's Python path."""
    path = settings.path("submit", "streamrank-src.zip")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for package in PACKAGES:
            for file in sorted((PROJECT_ROOT / package).rglob("*.py")):
                zf.write(file, file.relative_to(PROJECT_ROOT))
    return path


def submit_job(
    name: str,
    settings: Settings,
    jobmanager: str = "",
    bounded: bool = False,
    mode: ExecutionMode = DEFAULT_MODE,
) -> str:
    """Submit job ``name`` to the Flink cluster at ``jobmanager`` (``host:port`` of its REST
    endpoint; default ``settings.flink_rest``), detached; returns the Flink job id.

    Runs PyFlink's bundled ``flink run -m HOST:PORT -d -pym jobs -pyfs <zip of our packages>
    -pyclientexec <this python> -pyexec <this python> execute NAME``: the same graph, jars
    (``pipeline.jars``, plus ``flink-python``, which a cluster started from PyFlink's ``bin/``
    lacks) and settings (``STREAMRANK_*``) as an embedded run. Task managers find Python
    through ``python.pythonpath`` (this venv's site-packages and the project root), so they
    need this machine's paths: true for a cluster started here with PyFlink's
    ``bin/start-cluster.sh``; hosts elsewhere need the same venv at the same path.
    """
    _check(name)
    if name in PROCESSES:
        raise ValueError(f"{name!r} is not a Flink job: run it with `job run {name}`")
    cmd = [str(PYFLINK_HOME / "bin" / "flink"), "run", "-m", jobmanager or settings.flink_rest,
           "-d", "-pym", "jobs", "-pyfs", str(source_archive(settings)),
           "-pyclientexec", sys.executable, "-pyexec", sys.executable,
           "execute", name, "--mode", mode] + ["--bounded"] * bounded
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=SUBMIT_TIMEOUT_S,
                              env={**os.environ, **settings_env(settings)}, check=False)
    except subprocess.TimeoutExpired as err:
        raise RuntimeError(f"flink run did not return within {SUBMIT_TIMEOUT_S:.0f} s "
                           f"(is a JobManager listening at {jobmanager or settings.flink_rest}?)"
                           ) from err
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("job id "):
            return line.removeprefix("job id ").strip()
    raise RuntimeError(f"flink run failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
