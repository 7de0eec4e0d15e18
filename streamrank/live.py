"""``streamrank up`` / ``down``: the whole loop, live, in the background, and its supervisor.

``up`` starts whatever of the loop is not running — the stack (Kafka, Redis), the Feast
registry, the ``features`` job, the Feast writer, the ``training`` job (each detached, resumed
from its latest checkpoint where it has one) and ``scorers`` scorers on consecutive ports from
``settings.scorer_port`` — then a supervisor process, and returns once the scorers answer.

The supervisor (:func:`supervise`) checks the parts every ``CHECK_S`` seconds and starts again
whatever has died, the same way: a job from its latest checkpoint, a broker or Redis on their
data directories, a scorer (which catches up from the snapshot store and ``model.deltas`` by
itself). A part that has to be restarted more than ``MAX_RESTARTS`` times within
``RESTART_WINDOW_S`` is left down and reported ``failed``; restarts back off (1 s, doubling, up to
``MAX_BACKOFF_S``). What it did is in ``<run_dir>/loop.json`` (``streamrank status`` shows it) and
its log, ``<run_dir>/logs/supervisor.log``.

``down`` stops the supervisor, the scorers, the jobs and the services this run directory
started, each by its recorded pid.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from config import Settings, load_settings
from jobs import processes

LOOP_JOBS = ("features", "writer", "training")
SUPERVISOR = "supervisor"
CHECK_S = 2.0
MAX_RESTARTS = 5
RESTART_WINDOW_S = 600.0
MAX_BACKOFF_S = 60.0
SCORER_START_S = 120.0


def scorer_name(port: int) -> str:
    """The pid file name of the loop's scorer on ``port``."""
    return f"scorer-{port}"


def scorer_ports(settings: Settings, scorers: int) -> list[int]:
    """The loop's scorers' ports: ``scorers`` consecutive ones from ``settings.scorer_port``."""
    return [settings.scorer_port + i for i in range(scorers)]


def _detached_env(settings: Settings) -> dict[str, str]:
    from jobs.launch import detached_env

    return detached_env(settings)


def start_scorer(settings: Settings, port: int) -> int:
    """Start ``streamrank serve --port PORT --workers 1`` in the background (its own session).

    The loop runs one process per scorer so that the supervisor's pid is the one serving; its pid.
    """
    log = settings.path("logs", f"{scorer_name(port)}.log")
    cli = Path(sys.executable).with_name("streamrank")
    with log.open("ab") as out:
        proc = subprocess.Popen([str(cli), "serve", "--port", str(port), "--workers", "1"],
                                stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env=_detached_env(settings))
    processes.pid_file(settings, scorer_name(port)).write_text(f"{proc.pid}\n")
    return proc.pid


def scorer_pid(settings: Settings, port: int) -> int | None:
    """The live pid of the loop's scorer on ``port``."""
    return processes.read_pid(settings, scorer_name(port), "serve")


def _job_running(settings: Settings, job: str) -> bool:
    return processes.job_pid(settings, job) is not None


def _start_job(settings: Settings, job: str) -> None:
    from jobs.flink import latest_checkpoint
    from jobs.launch import run_job

    restore = job != "writer" and latest_checkpoint(job, settings) is not None
    run_job(job, settings, detach=True, restore=restore)


def _stack_running(settings: Settings) -> bool:
    from streamrank import stack

    return all(stack.listening(s.host, s.port) for s in stack.services(settings))


def parts(settings: Settings, scorers: int) -> dict[str, tuple]:
    """Each part of the loop: name -> (is it running?, start it)."""
    from streamrank import stack

    table: dict[str, tuple] = {"stack": (lambda: _stack_running(settings),
                                         lambda: stack.up(settings))}
    for job in LOOP_JOBS:
        table[f"job {job}"] = (lambda j=job: _job_running(settings, j),
                               lambda j=job: _start_job(settings, j))
    for port in scorer_ports(settings, scorers):
        table[scorer_name(port)] = (lambda p=port: scorer_pid(settings, p) is not None,
                                    lambda p=port: start_scorer(settings, p))
    return table


@dataclass
class PartState:
    """What the supervisor knows of one part."""

    state: str = "starting"
    restarts: int = 0
    recent: list[float] = field(default_factory=list)
    """Wall times (s) of the restarts within the window."""
    next_try: float = 0.0
    last_error: str = ""


def state_path(settings: Settings) -> Path:
    """Where the supervisor records the parts' states."""
    return settings.run_dir / "loop.json"


def read_state(settings: Settings) -> dict[str, dict[str, object]]:
    """The supervisor's last record (``{}`` when there is none)."""
    try:
        return json.loads(state_path(settings).read_text())["parts"]
    except (OSError, ValueError, KeyError):
        return {}


def check(settings: Settings, scorers: int, states: dict[str, PartState],
          log: callable = print) -> None:  # type: ignore[valid-type]
    """One round of supervision: restart (with backoff and a bound) what is not running."""
    now = time.time()
    for name, (running, start) in parts(settings, scorers).items():
        s = states.setdefault(name, PartState())
        if running():
            s.state = "running"
            continue
        if s.state == "failed" or now < s.next_try:
            continue
        s.recent = [t for t in s.recent if now - t < RESTART_WINDOW_S]
        if len(s.recent) >= MAX_RESTARTS:
            s.state = "failed"
            log(f"{name}: down after {MAX_RESTARTS} restarts in {RESTART_WINDOW_S:.0f} s; left down")
            continue
        first = s.state == "starting"
        s.recent.append(now)
        s.next_try = now + min(MAX_BACKOFF_S, 2.0 ** len(s.recent) / 2)
        try:
            start()
            s.state = "started" if first else "restarted"
            s.restarts += 0 if first else 1
            log(f"{name}: {s.state}")
        except Exception as err:  # noqa: BLE001 - reported, retried with backoff
            s.state, s.last_error = "down", f"{type(err).__name__}: {err}"[:300]
            log(f"{name}: start failed: {s.last_error}")
    tmp = state_path(settings).with_suffix(".tmp")
    tmp.write_text(json.dumps({"updated_ms": int(now * 1000), "scorers": scorers,
                               "parts": {n: asdict(s) for n, s in states.items()}}))
    tmp.replace(state_path(settings))


def supervise(settings: Settings, scorers: int) -> None:
    """Keep the loop running until SIGTERM (module docstring)."""
    import signal

    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    states: dict[str, PartState] = {}
    while not stopping:
        check(settings, scorers, states,
              log=lambda m: print(time.strftime("%H:%M:%S"), m, flush=True))
        for _ in range(int(CHECK_S * 10)):
            if stopping:
                break
            time.sleep(0.1)


def wait_for_scorers(settings: Settings, scorers: int, timeout_s: float = SCORER_START_S) -> list[str]:
    """The loop's scorers' URLs once each answers ``/status``."""
    import httpx

    urls = [f"http://{settings.scorer_host}:{p}" for p in scorer_ports(settings, scorers)]
    deadline = time.monotonic() + timeout_s
    for url in urls:
        while True:
            try:
                httpx.get(f"{url}/status", timeout=2).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"scorer {url} did not answer in {timeout_s:.0f} s") from None
                time.sleep(0.3)
    return urls


def up(settings: Settings, scorers: int = 2) -> dict[str, str]:
    """Start the loop and its supervisor (module docstring); what each part was."""
    from features.store import apply_repo

    states: dict[str, PartState] = {}
    check(settings, scorers, states, log=lambda m: None)
    apply_repo(settings)
    if processes.read_pid(settings, SUPERVISOR, "streamrank.live") is None:
        log = settings.path("logs", "supervisor.log")
        with log.open("ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "streamrank.live", str(scorers)],
                                    stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    env=_detached_env(settings))
        processes.pid_file(settings, SUPERVISOR).write_text(f"{proc.pid}\n")
    wait_for_scorers(settings, scorers)
    return {name: s.state for name, s in states.items()}


def down(settings: Settings, timeout_s: float = 30.0) -> dict[str, str]:
    """Stop the supervisor, then the scorers, the jobs and the stack, each by recorded pid."""
    from streamrank import stack

    result: dict[str, str] = {}
    named = [SUPERVISOR] + [p.stem for p in sorted((settings.run_dir / "pids").glob("scorer-*.pid"))]
    for name in named:
        pid = processes.read_pid(settings, name)
        processes.pid_file(settings, name).unlink(missing_ok=True)
        if pid is not None:
            processes.stop(pid, timeout_s)
            result[name] = f"stopped (pid {pid})"
    return result | stack.down(settings, timeout_s)


if __name__ == "__main__":
    supervise(load_settings(), int(sys.argv[1]))
