"""The local cluster's configuration and the cluster verbs without a cluster: loopback
addresses, the ports and Python the settings name, the daemons' PATH, pid files that count
only this cluster's daemons, and clear errors (fast) where no JobManager answers."""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from config import Settings, settings_env
from streamrank import cluster
from streamrank.cli import app


def dead_address() -> str:
    """A loopback address where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def test_the_cluster_listens_on_loopback_only_on_the_ports_of_the_settings() -> None:
    cfg = cluster.flink_config(Settings(flink_rest="127.0.0.1:28081", cluster_rpc_port=26123,
                                        cluster_slots=3))
    assert {cfg[k] for k in ("jobmanager.bind-host", "jobmanager.rpc.address", "rest.address",
                             "rest.bind-address", "taskmanager.bind-host",
                             "taskmanager.host")} == {"127.0.0.1"}
    assert (cfg["rest.port"], cfg["jobmanager.rpc.port"]) == (28081, 26123)
    assert cfg["taskmanager.numberOfTaskSlots"] == 3
    assert "--add-opens=java.base/java.lang=ALL-UNNAMED" in cfg["env.java.opts.all"]
    assert cfg["python.executable"] == cfg["python.client.executable"] == sys.executable
    assert str(cluster.PYFLINK_HOME.parent) in cfg["python.pythonpath"].split(os.pathsep)


def test_the_daemons_find_this_environments_python_first_on_their_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a clean shell's PATH: its python3 is another Python than the one the tasks load
    monkeypatch.setenv("PATH", "/usr/local/bin:/usr/bin:/bin")
    env = cluster._prepare(Settings(run_dir=tmp_path / "run"), cluster.LOOPBACK, tmp_path / "c")
    first = Path(env["PATH"].split(os.pathsep)[0])
    assert (first / "python3").resolve() == Path(sys.executable).resolve()
    assert env["PATH"].endswith(os.pathsep + "/usr/local/bin:/usr/bin:/bin")


def test_a_pid_file_counts_only_daemons_of_this_cluster(tmp_path: Path) -> None:
    settings = Settings(run_dir=tmp_path / "run", flink_rest=dead_address())
    pids = cluster.home(settings) / "pids"
    pids.mkdir(parents=True)
    (pids / f"flink-{cluster.IDENT}-taskexecutor.pid").write_text(f"{os.getpid()}\n999999999\n")
    status = cluster.status(settings)
    assert (status.jobmanager, status.taskmanagers, status.overview) == (None, (), None)
    assert not status.ready
    assert cluster.down(settings) == []


def test_cluster_verbs_say_clearly_when_no_jobmanager_answers(tmp_path: Path) -> None:
    env = settings_env(Settings(run_dir=tmp_path / "run", flink_rest=dead_address()))
    runner = CliRunner()
    started = time.monotonic()
    status = runner.invoke(app, ["cluster", "status"], env=env)
    assert status.exit_code == 1 and "not running" in status.stderr
    for args in (["job", "submit", "features"], ["job", "stop", "features", "--savepoint"],
                 ["job", "list", "--jobmanager", env["STREAMRANK_FLINK_REST"]]):
        result = runner.invoke(app, args, env=env)
        assert result.exit_code == 2, args
        assert "no Flink REST API answers at" in " ".join(result.stderr.split()), args
    assert time.monotonic() - started < 10
