"""Running streamrank's jobs: embedded (a MiniCluster in this process), detached (the same in a
background process), or submitted to a Flink session cluster, and stopped there with a savepoint
through its REST API.

Detached runs keep their pid in ``<run_dir>/pids/job-<name>.pid`` and log to
``<run_dir>/logs/job-<name>.log``; :func:`stop_job` stops them by that pid. An embedded Flink
run serves Flink's web UI and REST API on a free loopback port, recorded in
``<run_dir>/jobs/<name>.rest`` while it runs (:func:`list_jobs`); the job's counters are
Flink's own metrics there (:mod:`jobs.metrics`).
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import unquote, urlparse

from pyflink.common import Configuration, JobClient
from pyflink.datastream import StreamExecutionEnvironment
from pyflink.java_gateway import get_gateway

from config import Settings, settings_env
from connectors.admin import caught_up, end_offsets
from jobs import processes
from jobs.flink import DEFAULT_MODE, ExecutionMode, create_env, group_id, storage_url
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
STOP_TIMEOUT_S = 120.0
REST_TIMEOUT_S = 5.0
ENDED = frozenset({"FINISHED", "CANCELED", "FAILED", "SUSPENDED"})
"""Flink job states after which a job no longer runs."""


@dataclass(frozen=True)
class JobRun:
    """What :func:`run_job` started or ran: ``pid`` and ``log`` for a detached run; ``job_id``
    and the final ``state`` (``FINISHED``, ``CANCELED``) for a foreground one."""

    name: str
    pid: int
    state: str
    job_id: str = ""
    log: Path | None = None


def job_name(name: str) -> str:
    """The Flink job name of streamrank's job ``name``."""
    return f"streamrank-{name}"


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
        client = env.execute_async(job_name(name))
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


def execute(name: str, settings: Settings, jobmanager: str, bounded: bool = False,
            mode: ExecutionMode = DEFAULT_MODE, restore_from: str | None = None) -> str:
    """Build job ``name`` and submit it to the cluster whose REST API is at ``jobmanager``,
    without waiting; returns the Flink job id. What :func:`submit_job`'s child process runs
    (``python -m jobs execute NAME --jobmanager HOST:PORT``).

    Raises ``FileNotFoundError`` naming every jar of the job that is missing, before anything
    is sent (Flink's client would stall on the upload).
    """
    if name in PROCESSES:
        raise ValueError(f"{name!r} is not a Flink job: run it with `job run {name}`")
    builder = _builder(name)
    env = create_env(name, settings, mode=mode, jobmanager=jobmanager, restore_from=restore_from)
    builder(env, settings, bounded=bounded)
    missing = [url for url in pipeline_jars(env) if not Path(urlparse(url).path).is_file()]
    if missing:
        raise FileNotFoundError(f"jars missing ({', '.join(missing)}): run `bash ops/setup.sh` "
                                "or set STREAMRANK_JARS_DIR")
    return str(env.execute_async(job_name(name)).get_job_id())


def pipeline_jars(env: StreamExecutionEnvironment) -> list[str]:
    """The URLs of the jars that ``env`` ships with its job (``pipeline.jars``)."""
    config = get_gateway().jvm.org.apache.flink.python.util.PythonConfigUtil \
        .getEnvironmentConfig(env._j_stream_execution_environment)
    return Configuration.parse_list_value(config.getString("pipeline.jars", "") or "")


def _cluster(jobmanager: str) -> FlinkRest:
    """The REST API at ``jobmanager``, once it has answered (``ConnectionError`` if not)."""
    rest = FlinkRest(jobmanager, timeout_s=REST_TIMEOUT_S)
    try:
        rest.get("/overview")
    except (OSError, ValueError) as err:
        raise ConnectionError(f"no Flink REST API answers at {jobmanager} ({err}); "
                              "`streamrank cluster status` names the local cluster's") from err
    return rest


def _request(rest: FlinkRest, method: str, path: str, body: dict | None = None) -> Any:
    """The JSON answer to ``method path`` with a JSON ``body``."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{rest.base}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=REST_TIMEOUT_S) as response:
        text = response.read()
    return json.loads(text) if text else None


def _active(rest: FlinkRest, name: str) -> dict[str, Any] | None:
    """The cluster's newest job ``name`` that has not ended, if any."""
    return next((j for j in rest.jobs() if j["name"] == job_name(name)
                 and j["state"] not in ENDED), None)


def submit_job(
    name: str,
    settings: Settings,
    jobmanager: str,
    *,
    parallelism: int | None = None,
    from_savepoint: str | None = None,
    bounded: bool = False,
    mode: ExecutionMode = DEFAULT_MODE,
    timeout_s: float = SUBMIT_TIMEOUT_S,
) -> str:
    """Submit job ``name`` to the Flink session cluster whose REST API is at ``jobmanager``
    (``host:port``), detached; returns the Flink job id.

    The job is built here, as an embedded run builds it, and sent through Flink's REST client
    (``execution.target: remote``) with its jars (``settings.jars_dir``), at ``parallelism``
    (default ``settings.job_parallelism``), resuming from ``from_savepoint`` (a savepoint's or
    retained checkpoint's path or URL) if given. Its tasks find Python and the project through
    the cluster's configuration (``docs/cluster.md``). Refuses to submit a second copy of a job
    that runs; fails with a clear error if the cluster does not answer, a jar is missing or
    the submission takes longer than ``timeout_s``.
    """
    _check(name)
    if name in PROCESSES:
        raise ValueError(f"{name!r} is not a Flink job: run it with `job run {name}`")
    if (running := _active(_cluster(jobmanager), name)) is not None:
        raise RuntimeError(f"job {name} already runs on {jobmanager} (Flink job "
                           f"{running['jid']}, {running['state']}); stop it first")
    if parallelism is not None:
        settings = settings.model_copy(update={"job_parallelism": parallelism})
    cmd = [sys.executable, "-m", "jobs", "execute", name, "--jobmanager", jobmanager,
           "--mode", mode] + ["--bounded"] * bounded
    if from_savepoint:
        cmd += ["--from-savepoint", _url(from_savepoint)]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env=detached_env(settings))
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired as err:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise TimeoutError(f"submitting {name} to {jobmanager} took more than {timeout_s:.0f} s"
                           ) from err
    for line in reversed(out.splitlines()):
        if line.startswith("job id "):
            return line.removeprefix("job id ").strip()
    raise RuntimeError(f"submitting {name} to {jobmanager} failed (exit {proc.returncode}):\n"
                       + "\n".join(out.splitlines()[-15:]))


def _url(path: str) -> str:
    """A path as a ``file://`` URL; a URL as it is.

    >>> _url("s3://b/sp-1"), _url("/srv/sp-1")
    ('s3://b/sp-1', 'file:///srv/sp-1')
    """
    return path if urlparse(path).scheme else Path(path).resolve().as_uri()


@dataclass(frozen=True)
class Savepoint:
    """What :func:`stop_with_savepoint` stopped and where its savepoint went."""

    job_id: str
    location: str
    seconds: float


def _address(name: str, settings: Settings, jobmanager: str | None) -> str:
    """Whose REST API serves job ``name``: ``jobmanager``, else this run directory's detached
    run of it, else ``settings.flink_rest``."""
    if jobmanager:
        return jobmanager
    rest = rest_file(name, settings)
    if running_pid(name, settings) is not None and rest.is_file():
        return rest.read_text().strip()
    return settings.flink_rest


def stop_with_savepoint(name: str, settings: Settings, jobmanager: str | None = None,
                        timeout_s: float = STOP_TIMEOUT_S) -> Savepoint:
    """Stop the running job ``name`` with a savepoint in ``settings.savepoint_url`` (canonical
    format: it restores at any parallelism and on any state backend) through Flink's REST API;
    waits until the job has ended. The job is on the cluster at ``jobmanager``, or else on a
    detached run of this run directory, or else on the cluster at ``settings.flink_rest``.
    Resume it with ``submit_job(..., from_savepoint=location)``."""
    _check(name)
    address = _address(name, settings, jobmanager)
    rest = _cluster(address)
    job = _active(rest, name)
    if job is None:
        raise LookupError(f"no running job {name} at {address}")
    started = time.monotonic()
    target = storage_url(settings.savepoint_url, settings, "savepoints")
    trigger = _request(rest, "POST", f"/jobs/{job['jid']}/stop",
                       {"targetDirectory": target, "drain": False, "formatType": "CANONICAL"})
    deadline = started + timeout_s
    location = None
    while location is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the savepoint of {name} took more than {timeout_s:.0f} s")
        time.sleep(0.2)
        try:
            location = _savepoint_location(rest, job["jid"], trigger["request-id"])
        except OSError:  # a detached run's MiniCluster closes with its job
            location = _written_savepoint(target, job["jid"])
    try:
        while rest.get(f"/jobs/{job['jid']}")["state"] not in ENDED:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} did not end {timeout_s:.0f} s after its savepoint")
            time.sleep(0.2)
    except OSError:
        pass  # its MiniCluster closed: the job has ended
    return Savepoint(job["jid"], location, time.monotonic() - started)


def _savepoint_location(rest: FlinkRest, job_id: str, request_id: str) -> str | None:
    """Where the savepoint of a stop went, once written (``RuntimeError`` if it failed)."""
    answer = rest.get(f"/jobs/{job_id}/savepoints/{request_id}")
    if answer["status"]["id"] != "COMPLETED":
        return None
    operation = answer["operation"]
    if "failure-cause" in operation:
        cause = operation["failure-cause"].get("stack-trace", "").split("\n")[0]
        raise RuntimeError(f"stopping job {job_id} with a savepoint failed: {cause}")
    return str(operation["location"])


def _written_savepoint(target: str, job_id: str) -> str | None:
    """The complete savepoint of ``job_id`` in the local directory ``target`` (a ``file://``
    URL), if there is one: Flink names it ``savepoint-<first 6 of the id>-<random>``."""
    url = urlparse(target)
    if url.scheme != "file":
        return None
    done = Path(unquote(url.path)).glob(f"savepoint-{job_id[:6]}-*/_metadata")
    newest = max(done, key=lambda p: p.stat().st_mtime, default=None)
    return newest.parent.as_uri() if newest else None


def cancel_job(name: str, jobmanager: str, timeout_s: float = STOP_TIMEOUT_S) -> str:
    """Cancel the running job ``name`` on the cluster at ``jobmanager`` (its checkpoints are
    kept: resume from the latest with ``--from-savepoint <chk-N dir>``); returns its id."""
    _check(name)
    rest = _cluster(jobmanager)
    job = _active(rest, name)
    if job is None:
        raise LookupError(f"no running job {name} at {jobmanager}")
    _request(rest, "PATCH", f"/jobs/{job['jid']}?mode=cancel")
    deadline = time.monotonic() + timeout_s
    while rest.get(f"/jobs/{job['jid']}")["state"] not in ENDED:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} was not cancelled within {timeout_s:.0f} s")
        time.sleep(0.2)
    return str(job["jid"])


@dataclass(frozen=True)
class ClusterJob:
    """A job of a Flink cluster as :func:`cluster_jobs` lists it."""

    job_id: str
    name: str
    state: str
    parallelism: int
    """The largest parallelism of its operators."""
    started_ms: int


def cluster_jobs(jobmanager: str) -> list[ClusterJob]:
    """Every job the cluster at ``jobmanager`` knows, newest first."""
    rest = _cluster(jobmanager)
    return [ClusterJob(j["jid"], j["name"], j["state"],
                       max((v["parallelism"] for v in rest.get(f"/jobs/{j['jid']}")["vertices"]),
                           default=0),
                       j["start-time"]) for j in rest.jobs()]
