"""Scorers as ``streamrank serve`` child processes (the demo, tests and benchmarks start them)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from config import Settings, settings_env
from models.scorer.registry import registered, scorer_status

START_S = 90.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_free(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:``port``."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass
class ScorerProcess:
    """One ``streamrank serve`` child process."""

    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    settings: Settings
    workers: int = 1

    def worker_urls(self) -> list[str]:
        """The own addresses of its worker processes (its URL when it runs one)."""
        if self.workers == 1:
            return [self.url]
        return registered(self.settings, serves=self.url)

    def worker_status(self) -> list[dict[str, Any]]:
        """``GET /status`` of each worker process."""
        return [scorer_status(url) for url in self.worker_urls()]

    def status(self) -> dict[str, Any]:
        """``GET /status``."""
        return httpx.get(f"{self.url}/status", timeout=10).json()

    def version(self) -> int:
        """The served version (the oldest of its workers')."""
        if self.workers == 1:
            return int(self.status()["version"])
        versions = [int(st["version"]) for st in self.worker_status()]
        return min(versions) if len(versions) == self.workers else 0

    def tail(self, n: int = 40) -> str:
        """The last lines of its log."""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        """Terminate it (SIGTERM: it unregisters itself), kill after 15 s."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_scorer(settings: Settings, log: Path, *args: str, port: int | None = None,
                 workers: int = 1, env: dict[str, str] | None = None) -> ScorerProcess:
    """Start ``streamrank serve --port PORT`` with ``workers`` processes (default: a free port, one)
    with ``settings`` (and ``env`` on top of this environment); returns once it answers
    ``/status`` and every worker registered (not necessarily with a model loaded)."""
    port = free_port() if port is None else port
    cli = Path(sys.executable).with_name("streamrank")
    out = log.open("wb")
    proc = subprocess.Popen([str(cli), "serve", "--port", str(port), "--device", "cpu", *args],
                            stdout=out, stderr=subprocess.STDOUT,
                            env=os.environ | settings_env(settings)
                            | {"STREAMRANK_SCORER_WORKERS": str(workers)} | (env or {}))
    scorer = ScorerProcess(f"http://127.0.0.1:{port}", proc, log, settings, workers)
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"scorer exited ({proc.returncode}):\n{scorer.tail()}")
        try:
            scorer.status()
            if len(scorer.worker_urls()) == workers:
                return scorer
        except httpx.HTTPError:
            time.sleep(0.2)
    scorer.stop()
    raise TimeoutError(f"scorer did not answer within {START_S}s:\n{scorer.tail()}")
