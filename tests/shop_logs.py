"""Synthetic shop logs for the feature and label tests: deterministic (seeded), small, and
shaped to reach the corners of the semantics.

:func:`spanning_log` has users whose sessions span several attribution windows, with their own
impressions (``request_id`` set), clicks on some of them, add-to-carts and purchases, over
items shared by many users (so an item's events come from every Kafka partition).
:func:`messy_log` adds what real streams bring: duplicated event ids, events out of order
within the allowed lateness, and events later than it.

>>> log = spanning_log(users=4, minutes=40, seed=1)
>>> span = {u: max(e.event_time for e in log if e.user_id == u)
...            - min(e.event_time for e in log if e.user_id == u) for u in {e.user_id for e in log}}
>>> min(span.values()) > 2 * 600_000  # every user spans more than two 10-minute windows
True
>>> [e.event_time for e in log] == sorted(e.event_time for e in log)
True
"""

from __future__ import annotations

import random

from connectors.events import Event

BASE_MS = 1_700_000_000_000
"""The log's first millisecond (2023-11-14)."""


def spanning_log(users: int = 24, items: int = 40, categories: int = 6, minutes: int = 90,
                 seed: int = 0) -> list[Event]:
    """Events in event-time order: each user opens a request every 20-90 s for ``minutes``
    minutes, is shown 3 items, clicks some of them 1-40 s later (now and then one a little
    *before* its impression: clock skew), and sometimes adds to cart or buys (sometimes after
    the attribution window)."""
    rng = random.Random(seed)
    category_of = {f"i{j}": f"c{j % categories}" for j in range(items)}
    item_ids = list(category_of)
    out: list[Event] = []
    n = 0

    def add(kind: str, user: str, item: str, t: int, request: str | None = None,
            position: int | None = None) -> None:
        nonlocal n
        n += 1
        out.append(Event(event_id=f"e{n}", event_type=kind, user_id=user, item_id=item,
                         event_time=t, request_id=request, position=position,
                         category_id=category_of[item]))

    for u in range(users):
        user = f"u{u}"
        t = BASE_MS + rng.randrange(0, 60_000)
        end = BASE_MS + minutes * 60_000
        r = 0
        while t < end:
            r += 1
            request = f"{user}-r{r}"
            shown = rng.sample(item_ids, 3)
            for position, item in enumerate(shown):
                add("impression", user, item, t, request, position)
            for position, item in enumerate(shown):
                if rng.random() < 0.35:
                    click_t = t + rng.randrange(1_000, 40_000)
                    if rng.random() < 0.05:
                        click_t = t - rng.randrange(1, 500)  # the click's clock is behind
                    add("click", user, item, click_t, request, position)
                    if rng.random() < 0.3:
                        add("add_to_cart", user, item, click_t + rng.randrange(1_000, 60_000))
                    if rng.random() < 0.15:  # within the window or (now and then) after it
                        add("purchase", user, item, click_t + rng.randrange(5_000, 900_000))
            if rng.random() < 0.2:  # a click that no impression of this log led to
                add("click", user, rng.choice(item_ids), t + rng.randrange(1_000, 10_000))
            t += rng.randrange(20_000, 90_000)
    out.sort(key=lambda e: (e.event_time, int(e.event_id[1:])))
    return out


def messy_log(events: list[Event], *, lateness_ms: int, seed: int = 0,
              duplicates: float = 0.03, shuffled: float = 0.05,
              late: float = 0.01) -> list[Event]:
    """``events`` in an arrival order a real stream brings: a share of them sent twice (the
    copy a few events later: a producer retry), a share delayed by up to half of
    ``lateness_ms`` (out of order, still on time), and a share delayed by more than twice
    ``lateness_ms`` past later events (late: dead-lettered by the job, dropped by the
    reference). The first fifth of the log is left in order, so that the watermark has moved
    before anything is late.

    >>> log = spanning_log(users=3, minutes=30, seed=2)
    >>> messy = messy_log(log, lateness_ms=60_000, seed=2)
    >>> len(messy) > len(log), len({e.event_id for e in messy}) == len(log)
    (True, True)
    """
    rng = random.Random(seed)
    keyed: list[tuple[int, int, Event]] = []
    start = events[len(events) // 5].event_time if events else 0
    for i, e in enumerate(events):
        arrival = e.event_time
        roll = rng.random()
        if e.event_time > start and roll < late:
            arrival += 10 * lateness_ms + rng.randrange(1, lateness_ms)
        elif e.event_time > start and roll < late + shuffled:
            arrival += rng.randrange(1, lateness_ms // 2)
        keyed.append((arrival, 2 * i, e))
        if rng.random() < duplicates:
            keyed.append((arrival + rng.randrange(0, 5_000), 2 * i + 1, e))
    keyed.sort(key=lambda k: (k[0], k[1]))
    return [e for _, _, e in keyed]
