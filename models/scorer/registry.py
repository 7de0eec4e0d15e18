"""Scorers found in the run directory, and the admin calls the CLI makes to them.

A running scorer writes ``<run_dir>/scorers/<host>_<port>.json`` (``url``, ``serves``: the
address clients use, the shared port of ``serve --workers N`` or its own, ``pid``,
``started_ms``) and removes it when it stops; ``streamrank model ...`` reads these files to
reach every local scorer (or takes ``--scorer URL``, e.g. for scorers on other machines).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any
from urllib.parse import urlparse

import httpx

from config import Settings

TIMEOUT_S = 10.0


def _path(settings: Settings, url: str):  # noqa: ANN202 - pathlib.Path
    parsed = urlparse(url)
    return settings.path("scorers", f"{parsed.hostname}_{parsed.port}.json")


def register(settings: Settings, url: str, serves: str = "") -> None:
    """Record a scorer at ``url`` (serving clients at ``serves``, default ``url``) as running
    (atomically)."""
    path = _path(settings, url)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"url": url, "serves": serves or url, "pid": os.getpid(),
                               "started_ms": time.time_ns() // 1_000_000}))
    tmp.replace(path)


def unregister(settings: Settings, url: str) -> None:
    """Forget the scorer at ``url``."""
    _path(settings, url).unlink(missing_ok=True)


def registered(settings: Settings, serves: str | None = None) -> list[str]:
    """URLs of the scorers registered in the run directory (whose process still runs); with
    ``serves``, those behind that address only (the workers of one ``serve --workers N``)."""
    folder = settings.run_dir / "scorers"
    urls = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            entry = json.loads(path.read_text())
            os.kill(int(entry["pid"]), 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)  # the scorer died without unregistering
            continue
        except (OSError, ValueError, KeyError):
            continue
        if serves is None or entry.get("serves", entry["url"]) == serves:
            urls.append(str(entry["url"]))
    return urls


def admin_call(url: str, action: str, token: str | None, body: dict[str, Any] | None = None,
               ) -> tuple[int, dict[str, Any]]:
    """``POST <url>/admin/<action>``; the HTTP status and the JSON answer."""
    headers = {"authorization": f"Bearer {token}"} if token else {}
    response = httpx.post(f"{url.rstrip('/')}/admin/{action}", json=body or {}, headers=headers,
                          timeout=TIMEOUT_S)
    return response.status_code, response.json()


def scorer_status(url: str) -> dict[str, Any]:
    """``GET <url>/status``."""
    response = httpx.get(f"{url.rstrip('/')}/status", timeout=TIMEOUT_S)
    response.raise_for_status()
    return response.json()
