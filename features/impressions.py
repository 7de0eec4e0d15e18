"""The impression rule for logs without impressions (the one place it lives).

Shopper logs such as Taobao's record what users clicked, carted and bought, never what they
were shown; ranking needs impressions (and so negatives). The rule, applied identically by
``replay`` and ``evaluate``:

* Every click without a ``request_id`` becomes a request of ``settings.impressions_per_request``
  impressions at ``event_time - 1`` ms: the clicked item plus items sampled uniformly from the
  items of the **next** ``settings.popularity_window`` clicks of the log (so by popularity around
  that time: an item clicked often is drawn often), excluding the clicked item and duplicates,
  at most ``SAMPLING_TRIES`` draws per wanted item (so fewer near the end of a short log).
  Positions are shuffled. The request is ``req-<click event_id>``, each impression
  ``req-<click event_id>-<position>``; the random generator is seeded with
  ``settings.sampling_seed``, so the output depends only on the input and the settings.
* Why the *next* clicks: a negative must look like a positive except for the user's choice. A
  positive is "an item someone clicks at time t"; its history at t (earlier clicks,
  impressions) is whatever that item had. Items of clicks just after t have the same kind of
  history at t. Items of clicks just *before* t always have at least that click in their
  history, while most clicked items of a sparse log have none: negatives drawn from the past
  would let a model separate them by item history alone (a sampling artefact, not ranking).
  The features of every impression are still as of the impression: nothing of the future
  reaches a feature, only the choice of which items are shown.
* The impressions are marked ``synthetic``: they feed the label join but no feature state. The
  items shown depend on the next clicks, so counting them (an item's impressions, its time since
  last event) would tell a model which items are about to be clicked.
* The click follows its impressions, re-emitted with that ``request_id`` and position.
* Everything else (purchases, add-to-carts, favourites, clicks that carry a ``request_id``)
  passes through unchanged; the label join ties a purchase to the latest impression of the
  same user and item.
* Once the stream carries an impression of its own (a ``jsonl`` log with impressions), the
  rule stops and the rest of the stream passes through unchanged.
* Memory: events are held back until ``popularity_window`` later clicks have been read.

The sampled items' category and price are those seen with them in the window.

>>> from connectors.events import Event
>>> from config import Settings
>>> def click(i, item):
...     return Event(event_id=f"c{i}", event_type="click", user_id="u", item_id=item,
...                  event_time=1_000 * i)
>>> log = [click(1, "a"), click(2, "b"), click(3, "c"), click(4, "a")]
>>> out = list(with_impressions(log, Settings(impressions_per_request=3)))
>>> [(e.event_type, e.item_id, e.event_time, e.request_id, e.position) for e in out[:4]]
[('impression', 'b', 999, 'req-c1', 0), ('impression', 'a', 999, 'req-c1', 1), ('impression', 'c', 999, 'req-c1', 2), ('click', 'a', 1000, 'req-c1', 1)]
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable, Iterator

from config import FeatureSettings
from connectors.events import Event

SAMPLING_TRIES = 8
"""Draws allowed per wanted negative before giving up on it."""

_Seen = tuple[str, str | None, float | None]  # item, category, price


class ClickWindow:
    """The items of up to ``size`` clicks, oldest first, to draw negatives from.

    >>> w = ClickWindow(2)
    >>> for item in "abc":
    ...     w.add((item, None, None))
    >>> sorted(x[0] for x in w.sample(random.Random(0), 5, exclude="z"))
    ['b', 'c']
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("popularity window must hold at least one click")
        self._items: deque[_Seen] = deque()
        self._size = size

    def __len__(self) -> int:
        return len(self._items)

    def add(self, seen: _Seen) -> None:
        """Remember one click (the oldest falls out once the window is full)."""
        self._items.append(seen)
        if len(self._items) > self._size:
            self._items.popleft()

    def popleft(self) -> None:
        """Forget the oldest click."""
        self._items.popleft()

    def sample(self, rng: random.Random, k: int, exclude: str) -> list[_Seen]:
        """Up to ``k`` distinct items other than ``exclude``, drawn uniformly from the window."""
        chosen: dict[str, _Seen] = {}
        if not self._items:
            return []
        for _ in range(SAMPLING_TRIES * k):
            if len(chosen) == k:
                break
            seen = self._items[rng.randrange(len(self._items))]
            if seen[0] != exclude and seen[0] not in chosen:
                chosen[seen[0]] = seen
        return list(chosen.values())


def with_impressions(events: Iterable[Event], settings: FeatureSettings) -> Iterator[Event]:
    """The events with the impression rule applied (see the module docstring).

    Output order: a synthetic request's impressions (at ``t - 1`` ms) come right before its
    click (at ``t``), so the stream stays in event-time order up to that 1 ms.
    """
    rng = random.Random(settings.sampling_seed)
    # the held-back clicks, oldest first: the oldest one plus the ``window`` clicks after it
    ahead = ClickWindow(settings.popularity_window + 1)
    held: deque[Event] = deque()  # events waiting for their window of later clicks
    wanted = settings.impressions_per_request - 1
    window = settings.popularity_window

    def release(event: Event) -> Iterator[Event]:
        if not _needs_request(event):
            yield event
            return
        ahead.popleft()  # the window is the clicks *after* this one
        shown = [(event.item_id, event.category_id, event.price),
                 *ahead.sample(rng, wanted, event.item_id)]
        rng.shuffle(shown)
        request = f"req-{event.event_id}"
        t = event.event_time - 1
        for position, (item, category, price) in enumerate(shown):
            yield Event(event_id=f"{request}-{position}", event_type="impression",
                        user_id=event.user_id, item_id=item, event_time=t, request_id=request,
                        position=position, category_id=category, price=price, synthetic=True)
        clicked = next(p for p, seen in enumerate(shown) if seen[0] == event.item_id)
        yield event.model_copy(update={"request_id": request, "position": clicked})

    stream = iter(events)
    for event in stream:
        if event.event_type == "impression":  # the log has its own: the rule stops here
            while held:
                yield from release(held.popleft())
            yield event
            yield from stream
            return
        held.append(event)
        if _needs_request(event):
            ahead.add((event.item_id, event.category_id, event.price))
            if len(ahead) > window:  # the oldest held click now has ``window`` clicks after it
                while not _needs_request(held[0]):
                    yield held.popleft()
                yield from release(held.popleft())
    while held:
        yield from release(held.popleft())


def _needs_request(event: Event) -> bool:
    return event.event_type == "click" and event.request_id is None
