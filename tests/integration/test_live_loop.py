"""The live loop (`up`, simulated shoppers, `down`) on a private stack: every hop carries
traffic, served versions go up, a shopper's click reaches Feast and a later ranking for them by
a version that learned past it; the supervisor restarts every job and a scorer, all killed at
once, after which events reach Feast again and versions go on up; and nothing is left running
afterwards."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest
from rich.console import Console

from config import Settings
from jobs import processes
from streamrank import live
from streamrank.demo import backfill, live_settings, wait_for_model
from streamrank.loop_report import HOPS, hops, percentile
from streamrank.simulate import Simulation, SimulationOptions
from tests.integration.test_stack import free_ports, processes_of

pytestmark = pytest.mark.integration
HEAL_S = 180.0


def _two_free_ports() -> int:
    """A port ``p`` with ``p`` and ``p + 1`` free (the loop's two scorers)."""
    for _ in range(50):
        (p,) = free_ports(1)
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", p))
                b.bind(("127.0.0.1", p + 1))
                return p
            except OSError:
                continue
    raise RuntimeError("no two consecutive free ports")


@pytest.fixture
def loop(tmp_path: Path):  # noqa: ANN201 - Iterator[Settings]
    kafka, controller, redis = free_ports(3)
    settings = live_settings(Settings(
        run_dir=tmp_path / "run", kafka_bootstrap=f"127.0.0.1:{kafka}",
        kafka_controller_port=controller, redis_url=f"redis://127.0.0.1:{redis}/0",
        scorer_port=_two_free_ports()))
    try:
        yield settings
    finally:
        live.down(settings)
        assert processes_of(settings.run_dir) == []


def _wait(what: str, ok, timeout_s: float = HEAL_S) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while not ok():
        assert time.monotonic() < deadline, f"{what} within {timeout_s:.0f} s"
        time.sleep(1)


def test_the_loop_turns_heals_and_stops(loop: Settings, tmp_path: Path) -> None:
    settings = loop
    state = live.up(settings, scorers=2)
    assert set(state) >= {"stack", "job features", "job writer", "job training"}
    urls = live.wait_for_scorers(settings, 2)
    backfill(settings, 1_500, tmp_path, Console())
    wait_for_model(settings, urls, Console())

    sim = Simulation(settings, SimulationOptions(rate=8, duration_s=45, frozen_share=0.0,
                                                 users=15, probe_every_s=1.0))
    rec = sim.run()
    measured = hops(rec)
    for hop in HOPS:
        print(f"{hop}: n={len(measured[hop])} p50={percentile(measured[hop], 50):.0f} ms "
              f"p99={percentile(measured[hop], 99):.0f} ms")
    assert all(measured[hop] for hop in HOPS), {h: len(v) for h, v in measured.items()}
    assert not [e for e in rec.errors if "/rank" in e]
    served = [r.version for r in sorted(rec.rankings, key=lambda r: r.t_ms)]
    assert served[-1] > served[0]
    for url in {r.scorer for r in rec.rankings}:  # each scorer only goes up
        mine = [r.version for r in sorted(rec.rankings, key=lambda r: r.t_ms) if r.scorer == url]
        assert mine == sorted(mine), url
    watermarks = {v: w for v, (w, _, _) in rec.versions.items()}
    assert any(r.user == user and r.t_ms > clicked and watermarks.get(r.version, -1) >= clicked
               for clicked, user in rec.clicks for r in rec.rankings)

    # Self-healing: every job and a scorer killed; the supervisor brings each back (the jobs
    # from their latest checkpoints).
    version_before = max(rec.versions)
    jobs = {f"job {name}": processes.job_pid(settings, name)
            for name in ("features", "writer", "training")}
    scorer = live.scorer_pid(settings, settings.scorer_port + 1)
    assert None not in jobs.values() and scorer is not None, jobs
    for pid in (*jobs.values(), scorer):
        os.killpg(pid, signal.SIGKILL)  # type: ignore[arg-type]
    _wait("all restarted", lambda: all(
        live.read_state(settings).get(part, {}).get("restarts", 0) >= 1
        and live.read_state(settings)[part]["state"] in ("running", "restarted")
        for part in (*jobs, live.scorer_name(settings.scorer_port + 1))))
    live.wait_for_scorers(settings, 2)
    sim = Simulation(settings, SimulationOptions(rate=8, duration_s=10, frozen_share=0.0,
                                                 users=15, seed=8, probe_every_s=1.0))
    after = sim.run()  # more events, so that the restored trainer has examples to learn
    assert hops(after)["event → Feast"], "no event reached Feast after the restarts"
    _wait("the restarted scorer serves a newer version than before the kill", lambda: int(
        httpx.get(f"{urls[1]}/status", timeout=5).json()["version"]) > version_before)
