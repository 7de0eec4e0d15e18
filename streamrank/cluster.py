"""A local standalone Flink session cluster from PyFlink's own distribution: one JobManager and
``cluster_taskmanagers`` TaskManagers on loopback, for tests and for trying the cluster path
without Kubernetes (``streamrank cluster up|down|status``).

Everything it uses lives under ``<run_dir>/cluster/``:

* ``conf/``: ``config.yaml`` (:func:`flink_config`: PyFlink's defaults, loopback addresses, the
  REST port of ``flink_rest`` and the RPC port ``cluster_rpc_port``, every other port one the
  OS picks, slots spread over the TaskManagers, the tasks' Python), ``workers`` (``localhost``
  once per TaskManager) and PyFlink's log configurations;
* ``lib/``: PyFlink's ``lib/*.jar`` plus ``opt/flink-python-*.jar`` (symlinks). With
  flink-python on the cluster's class path instead of shipped with each job, thread mode's
  embedded interpreter (pemja) is loaded once per TaskManager: shipped with each job, every job
  after the first on a TaskManager fails with ``NoSuchFieldException: loadedLibraryNames``;
* ``log/``, ``pids/`` (the daemons' pid files, so that stopping never touches another run's
  daemons), ``tmp/`` (``io.tmp.dirs``).

``up`` runs PyFlink's ``bin/start-cluster.sh`` with ``FLINK_CONF_DIR``, ``FLINK_LIB_DIR``,
``FLINK_LOG_DIR`` and ``FLINK_PID_DIR`` pointing there and this environment's ``bin/`` first on
``PATH`` (:func:`daemon_path`); ``down`` stops the recorded pids (a pid
counts only while its command line names this conf directory). :func:`run_foreground` runs one
daemon in the foreground with the same configuration bound to every interface: a container's
JobManager or TaskManager (``docker-compose.yml``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyflink
import yaml

from config import Settings
from jobs import processes
from jobs.flink import python_path
from jobs.metrics import FlinkRest

PYFLINK_HOME = Path(pyflink.__file__).parent
"""PyFlink's bundled Flink distribution (``bin/``, ``conf/``, ``lib/``, ``opt/``)."""
IDENT = "streamrank"
"""``FLINK_IDENT_STRING``: names the daemons' pid and log files."""
DAEMONS = {"jobmanager": "standalonesession", "taskmanager": "taskexecutor"}
"""Each role's daemon name in Flink's scripts (and its pid file)."""
LOOPBACK = "127.0.0.1"
Role = Literal["jobmanager", "taskmanager"]


@dataclass(frozen=True)
class ClusterStatus:
    """The local cluster as seen from its pid files and its REST API."""

    rest: str
    """``host:port`` of its REST API and web UI (what ``--jobmanager`` takes)."""
    jobmanager: int | None
    """The JobManager's pid (``None``: not running)."""
    taskmanagers: tuple[int, ...]
    """The live TaskManagers' pids."""
    overview: dict[str, Any] | None
    """The JobManager's ``/overview`` (TaskManagers registered, slots, jobs, version);
    ``None`` while its REST API does not answer."""

    @property
    def ready(self) -> bool:
        """Whether the JobManager answers and every TaskManager has registered with it."""
        return (self.overview is not None
                and self.overview.get("taskmanagers", 0) >= len(self.taskmanagers) > 0)


def home(settings: Settings) -> Path:
    """The cluster's directory, ``<run_dir>/cluster``."""
    return settings.run_dir.resolve() / "cluster"


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def flink_config(settings: Settings, *, bind: str = LOOPBACK) -> dict[str, Any]:
    """The cluster's ``config.yaml`` entries (flat keys): PyFlink's defaults, then ours.

    ``bind`` is the interface every daemon listens on: loopback for ``cluster up``, ``0.0.0.0``
    in a container (whose JobManager the others reach by the host name of ``flink_rest``).

    >>> cfg = flink_config(Settings(flink_rest="127.0.0.1:28081", cluster_rpc_port=26123))
    >>> cfg["rest.port"], cfg["jobmanager.rpc.port"], cfg["taskmanager.host"]
    (28081, 26123, '127.0.0.1')
    >>> cfg["taskmanager.load-balance.mode"], cfg["python.executable"] == sys.executable
    ('SLOTS', True)
    >>> "taskmanager.host" in flink_config(Settings(flink_rest="jobmanager:8081"), bind="0.0.0.0")
    False
    """
    host, port = _host_port(settings.flink_rest)
    defaults = yaml.safe_load((PYFLINK_HOME / "conf" / "config.yaml").read_text())
    ours: dict[str, Any] = {
        "jobmanager.bind-host": bind,
        "jobmanager.rpc.address": host,
        "jobmanager.rpc.port": settings.cluster_rpc_port,
        "rest.address": host,
        "rest.bind-address": bind,
        "rest.port": port,
        "taskmanager.bind-host": bind,
        "taskmanager.numberOfTaskSlots": settings.cluster_slots,
        # spread a job's subtasks over the TaskManagers (else a parallelism-2 job fills one)
        "taskmanager.load-balance.mode": "SLOTS",
        "metrics.fetcher.update-interval": 1000,  # REST metrics at most 1 s old
        # the tasks' Python: this environment, its packages and the project (thread mode's
        # embedded interpreter sees only python.pythonpath)
        "python.executable": sys.executable,
        "python.client.executable": sys.executable,
        "python.pythonpath": python_path(),
    }
    config = _flatten(defaults) | ours
    if bind == LOOPBACK:
        config["taskmanager.host"] = LOOPBACK
    else:  # found by the JobManager (a container's own address)
        del config["taskmanager.host"]
    return config


def _prepare(settings: Settings, bind: str, root: Path) -> dict[str, str]:
    """Write ``conf/`` and ``lib/`` under ``root``, make the other directories; the daemons'
    environment."""
    conf, lib = root / "conf", root / "lib"
    for directory in (conf, lib, root / "log", root / "pids", root / "tmp"):
        directory.mkdir(parents=True, exist_ok=True)
    for name in ("log4j.properties", "log4j-console.properties", "logback.xml",
                 "logback-console.xml"):
        (conf / name).write_bytes((PYFLINK_HOME / "conf" / name).read_bytes())
    config = flink_config(settings, bind=bind) | {"io.tmp.dirs": str(root / "tmp")}
    (conf / "config.yaml").write_text(yaml.safe_dump(config))
    (conf / "workers").write_text("localhost\n" * settings.cluster_taskmanagers)
    for link in lib.iterdir():
        link.unlink()
    jars = [*(PYFLINK_HOME / "lib").glob("*.jar"),
            *(PYFLINK_HOME / "opt").glob("flink-python-*.jar")]
    for jar in jars:
        (lib / jar.name).symlink_to(jar)
    return {**os.environ, "FLINK_CONF_DIR": str(conf), "FLINK_LIB_DIR": str(lib),
            "FLINK_LOG_DIR": str(root / "log"), "FLINK_PID_DIR": str(root / "pids"),
            "FLINK_IDENT_STRING": IDENT, "PATH": daemon_path()}


def daemon_path() -> str:
    """The daemons' ``PATH``: this environment's ``bin/``, then ours. Thread mode's embedded
    interpreter (pemja) loads the libpython of ``python.executable`` but finds its standard
    library from the first ``python3`` on ``PATH``: another Python's (the system's, whose
    modules are built into its own libpython) fails on the first C module, ``_struct``."""
    return os.pathsep.join([str(Path(sys.executable).parent),
                            *filter(None, os.environ.get("PATH", "").split(os.pathsep))])


def _pids(settings: Settings, role: Role) -> list[int]:
    """The live pids recorded for ``role`` whose command line names this cluster's conf dir."""
    path = home(settings) / "pids" / f"flink-{IDENT}-{DAEMONS[role]}.pid"
    marker = str(home(settings) / "conf").encode()
    try:
        recorded = [int(line) for line in path.read_text().split()]
    except (OSError, ValueError):
        return []
    live = []
    for pid in recorded:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in cmdline and processes.alive(pid):
            live.append(pid)
    return live


def status(settings: Settings) -> ClusterStatus:
    """The local cluster's daemons and what its JobManager reports."""
    try:
        overview = FlinkRest(settings.flink_rest).get("/overview")
    except (OSError, ValueError):
        overview = None
    jobmanager = next(iter(_pids(settings, "jobmanager")), None)
    return ClusterStatus(settings.flink_rest, jobmanager,
                         tuple(_pids(settings, "taskmanager")), overview)


def up(settings: Settings, timeout_s: float = 120.0) -> tuple[ClusterStatus, bool]:
    """Start the local cluster unless it runs; wait until every TaskManager has registered.

    Returns its status and whether this call started it. Raises ``RuntimeError`` if something
    else answers on its REST address or a daemon exits, ``TimeoutError`` after ``timeout_s``
    (stopping what it started in both cases).
    """
    current = status(settings)
    if current.jobmanager is not None:
        return current, False
    host, port = _host_port(settings.flink_rest)
    if host not in (LOOPBACK, "localhost"):
        raise RuntimeError(f"cluster up serves on loopback: flink_rest is {settings.flink_rest}")
    if current.overview is not None:
        raise RuntimeError(f"another Flink cluster answers on {settings.flink_rest}: stop it or "
                           "set STREAMRANK_FLINK_REST to a free 127.0.0.1 port")
    for stale in (home(settings) / "pids").glob("*.pid"):
        stale.unlink()
    env = _prepare(settings, LOOPBACK, home(settings))
    log = home(settings) / "log" / "start-cluster.out"
    with log.open("wb") as out:
        subprocess.run([str(PYFLINK_HOME / "bin" / "start-cluster.sh")], env=env, stdout=out,
                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False,
                       timeout=timeout_s, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while not (current := status(settings)).ready:
        started = len(current.taskmanagers) + (current.jobmanager is not None)
        failed = started < 1 + settings.cluster_taskmanagers
        if failed or time.monotonic() > deadline:
            down(settings)
            what = "a daemon exited" if failed else f"not ready in {timeout_s:.0f} s"
            raise (RuntimeError if failed else TimeoutError)(
                f"Flink cluster {what}; see {home(settings) / 'log'}")
        time.sleep(0.5)
    return current, True


def down(settings: Settings, timeout_s: float = 30.0) -> list[int]:
    """Stop the local cluster's daemons by their recorded pids (SIGTERM, SIGKILL after
    ``timeout_s``) and wait until they are gone; returns the pids stopped."""
    pids = _pids(settings, "taskmanager") + _pids(settings, "jobmanager")
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    for pid in pids:
        processes.stop(pid, timeout_s, group=False)
    for path in (home(settings) / "pids").glob("*.pid"):
        path.unlink()
    return pids


def run_foreground(settings: Settings, role: Role) -> None:
    """Replace this process with one daemon of the cluster in the foreground, listening on
    every interface (a container's JobManager or TaskManager; the JobManager is found by the
    host name of ``flink_rest``). Its conf, lib, log and tmp directories are the container's
    own (in the system's temporary directory), not the run directory other containers share."""
    env = _prepare(settings, "0.0.0.0", Path(tempfile.gettempdir()) / "streamrank-flink")
    script = str(PYFLINK_HOME / "bin" / f"{role}.sh")
    os.execve(script, [script, "start-foreground"], env)
