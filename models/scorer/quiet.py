"""Requests in flight on a scorer's event loop, so that model updates are applied between them.

An update's apply runs in the reloader's thread (about a millisecond of Python on a CPU). A
request on the event loop that overlaps it shares the interpreter lock with it and waits for
most of it; the reloader therefore waits for a moment with no request in flight, for at most
``swap_wait_ms`` per poll of updates, so that under a load that never pauses the freshness
cost stays bounded.
"""

from __future__ import annotations

import threading


class InFlight:
    """Counts requests in flight (:meth:`enter` / :meth:`leave`, from the event loop's thread)
    and lets another thread wait until there are none (:meth:`wait_quiet`)."""

    def __init__(self) -> None:
        self._count = 0
        self._quiet = threading.Event()
        self._quiet.set()

    def enter(self) -> None:
        """A request started."""
        self._count += 1
        if self._count == 1:
            self._quiet.clear()

    def leave(self) -> None:
        """A request ended (answered or failed)."""
        self._count -= 1
        if self._count == 0:
            self._quiet.set()

    def wait_quiet(self, timeout_s: float) -> bool:
        """Block until no request is in flight or ``timeout_s`` passed; whether it is quiet."""
        return self._quiet.wait(timeout_s)
