"""The label join: impressions joined with their clicks and purchases, in event time.

The rules (the Flink training-example job applies the same ones):

* **Watermark.** ``max event time seen - settings.max_out_of_orderness_ms`` (bounded
  out-of-orderness), or later when :meth:`LabelJoiner.advance` is given a later one. A joiner
  built with ``follow_events=False`` moves only through :meth:`~LabelJoiner.advance`: the stream
  job's per-user joiners follow Flink's watermark, never the user's own event times, which
  run ahead of the other keys' (and of the item features of the user's impressions).
* **Attribution.** A click carrying a ``request_id`` labels the impression of that request and
  item (even when its event time is up to ``settings.max_out_of_orderness_ms`` before the
  impression's: clock skew between the services that log them). A click without one, and every
  purchase, labels the latest impression of the same user and item at or before it. Either way
  only up to ``settings.attribution_window_ms`` after the impression.
* **Settling.** A click or purchase at ``t`` is matched once the watermark passes ``t + lateness
  + out-of-orderness`` (``lateness`` = ``settings.allowed_lateness_ms``); an impression at ``t``
  becomes a finished example once it passes ``t + window + lateness + out-of-orderness``; no
  click by then makes it a negative (``click=0``). By then every event that can still be
  accepted is later than anything that could change the outcome, so the examples depend on the
  set of events accepted and on each user's order only, not on how the stream interleaves
  users or how often the watermark moves: the Flink job (per-user joiners on Flink's watermark)
  and this single joiner produce the same examples. Finished examples come out in
  impression-time order.
* **Late events.** An event older than ``watermark - lateness`` is dropped and counted in
  ``late_events`` (the streaming job dead-letters it as ``late``). So no accepted label can
  come after its impression was finished; one that matches nothing is counted in
  ``unmatched_clicks``/``unmatched_purchases``.
* **Duplicates.** A repeated ``(item_id, event_id)`` is ignored and counted in ``duplicates``
  (a delivery twice of one event; the job recognises it in its item-keyed stage). IDs are
  remembered until their event is older than the lateness horizon (after which a repeat is
  dropped as late anyway), so the seen-set is bounded by the window, not the stream.

Memory: pending impressions live for the window plus the lateness and the out-of-orderness;
labels for the lateness plus the out-of-orderness; seen IDs for the lateness.

>>> from connectors.events import Event
>>> from config import Settings
>>> def ev(i, kind, t, item="a", rid=None):
...     return Event(event_id=str(i), event_type=kind, user_id="u", item_id=item,
...                  event_time=t, request_id=rid)
>>> j = LabelJoiner(Settings(attribution_window_ms=1_000, max_out_of_orderness_ms=0,
...                          allowed_lateness_ms=100))
>>> j.add(ev(1, "impression", 0, "a", "r"), {"f": 1.0}) + j.add(ev(2, "impression", 0, "b", "r"))
[]
>>> j.add(ev(3, "click", 500, "a", "r"))
[]
>>> [(x.item_id, x.click, x.features) for x in j.add(ev(4, "purchase", 2_000, "z"))]
[('a', 1, {'f': 1.0}), ('b', 0, {})]
"""

from __future__ import annotations

import heapq
import itertools
import math
from bisect import insort
from collections import deque
from dataclasses import asdict, dataclass

from config import FeatureSettings
from connectors.events import Event
from connectors.training_examples import TrainingExample

_NEVER = -(2**63)


@dataclass
class JoinCounters:
    """What the join did, by outcome."""

    impressions: int = 0
    examples: int = 0
    clicks_joined: int = 0
    purchases_joined: int = 0
    unmatched_clicks: int = 0
    unmatched_purchases: int = 0
    late_events: int = 0
    duplicates: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters by name."""
        return asdict(self)


Recent = tuple[tuple[str, ...], tuple[str, ...]]
"""The user's last clicked items and categories before an impression, newest first."""
NO_RECENT: Recent = ((), ())


class _Pending:
    __slots__ = ("event", "features", "recent", "click", "purchase", "seq")

    def __init__(self, event: Event, features: dict[str, float], recent: Recent,
                 seq: int) -> None:
        self.event, self.features, self.recent, self.seq = event, features, recent, seq
        self.click = self.purchase = 0

    @property
    def time(self) -> int:
        return self.event.event_time

    def __lt__(self, other: _Pending) -> bool:
        return (self.time, self.seq) < (other.time, other.seq)


class LabelJoiner:
    """Joins impressions with their labels; see the module docstring for the rules."""

    def __init__(self, settings: FeatureSettings, *, follow_events: bool = True) -> None:
        self._follow = follow_events
        self._window = settings.attribution_window_ms
        self._lag = settings.max_out_of_orderness_ms
        self._lateness = settings.allowed_lateness_ms
        self._label_wait = self._lateness + self._lag
        self.wait_ms = self._window + self._label_wait
        """How long after an impression's time the watermark must pass before it is finished."""
        self.watermark = _NEVER
        self.counters = JoinCounters()
        self._seq = itertools.count()
        self._pending: list[tuple[int, int, _Pending]] = []  # heap by (time + window, seq)
        self._by_request: dict[tuple[str, str], _Pending] = {}
        self._by_user_item: dict[tuple[str, str], list[_Pending]] = {}
        self._labels: list[tuple[int, int, Event]] = []  # heap by (time, seq), until watermark
        self._seen: dict[tuple[str, str], int] = {}
        self._seen_order: deque[tuple[int, tuple[str, str]]] = deque()

    def rejects(self, event: Event) -> str | None:
        """``"duplicate"`` or ``"late"`` when :meth:`add` would drop ``event``, else None."""
        if (event.item_id, event.event_id) in self._seen:
            return "duplicate"
        if event.event_time < self._horizon():
            return "late"
        return None

    def drop(self, event: Event) -> bool:
        """Whether :meth:`add` drops ``event``, a duplicate or late one (counted as such)."""
        rejected = self.rejects(event)
        if rejected == "duplicate":
            self.counters.duplicates += 1
        elif rejected == "late":
            self.counters.late_events += 1
        return rejected is not None

    def add(self, event: Event, features: dict[str, float] | None = None,
            recent: Recent = NO_RECENT) -> list[TrainingExample]:
        """Take one event (an impression with its features and the user's recent clicked
        items and categories, as of the impression); return the examples this finished."""
        return [] if self.drop(event) else self.accept(event, features, recent)

    def accept(self, event: Event, features: dict[str, float] | None = None,
               recent: Recent = NO_RECENT) -> list[TrainingExample]:
        """:meth:`add` of an event that :meth:`drop` let through."""
        seen = (event.item_id, event.event_id)
        self._seen[seen] = event.event_time
        self._seen_order.append((event.event_time, seen))
        if event.event_type == "impression":
            self._hold(event, {} if features is None else features, recent)
        elif event.event_type in ("click", "purchase"):
            heapq.heappush(self._labels, (event.event_time, next(self._seq), event))
        return self.advance(event.event_time - self._lag) if self._follow else []

    def advance(self, watermark: int) -> list[TrainingExample]:
        """Move the watermark forward (never back); return the examples that finished."""
        self.watermark = max(self.watermark, watermark)
        while self._labels and self._labels[0][0] + self._label_wait < self.watermark:
            self._label(heapq.heappop(self._labels)[2])
        finished = []
        while self._pending and self._pending[0][0] < self.watermark:
            finished.append(self._finish(heapq.heappop(self._pending)[2]))
        self._forget()
        return finished

    def flush(self) -> list[TrainingExample]:
        """End of stream: match every waiting label, then emit every pending impression."""
        while self._labels:
            self._label(heapq.heappop(self._labels)[2])
        finished = []
        while self._pending:
            finished.append(self._finish(heapq.heappop(self._pending)[2]))
        return finished

    def held(self) -> dict[str, int]:
        """What the joiner holds in memory now (all bounded by the window and the lateness)."""
        return {"pending_impressions": len(self._pending), "waiting_labels": len(self._labels),
                "seen_ids": len(self._seen)}

    def _horizon(self) -> int:
        return self.watermark - self._lateness if self.watermark != _NEVER else _NEVER

    def _hold(self, event: Event, features: dict[str, float], recent: Recent) -> None:
        self.counters.impressions += 1
        p = _Pending(event, features, recent, next(self._seq))
        heapq.heappush(self._pending, (event.event_time + self.wait_ms, p.seq, p))
        if event.request_id is not None:
            self._by_request[(event.request_id, event.item_id)] = p
        insort(self._by_user_item.setdefault((event.user_id, event.item_id), []), p)

    def _match(self, event: Event) -> _Pending | None:
        t = event.event_time
        if event.event_type == "click" and event.request_id is not None:
            p = self._by_request.get((event.request_id, event.item_id))
            return p if p is not None and -self._lag <= t - p.time <= self._window else None
        for p in reversed(self._by_user_item.get((event.user_id, event.item_id), ())):
            if p.time <= t:
                return p if t - p.time <= self._window else None
        return None

    def _label(self, event: Event) -> None:
        p = self._match(event)
        click = event.event_type == "click"
        if p is not None:
            if click:
                p.click = 1
                self.counters.clicks_joined += 1
            else:
                p.purchase = 1
                self.counters.purchases_joined += 1
        elif click:
            self.counters.unmatched_clicks += 1
        else:
            self.counters.unmatched_purchases += 1

    def _finish(self, p: _Pending) -> TrainingExample:
        e = p.event
        user_item = (e.user_id, e.item_id)
        bucket = self._by_user_item[user_item]
        bucket.remove(p)
        if not bucket:
            del self._by_user_item[user_item]
        if e.request_id is not None:
            request = (e.request_id, e.item_id)
            if self._by_request.get(request) is p:
                del self._by_request[request]
        self.counters.examples += 1
        return TrainingExample(
            example_id=e.event_id, request_id=e.request_id, user_id=e.user_id,
            item_id=e.item_id, category_id=e.category_id, position=e.position,
            event_time=e.event_time, click=p.click, purchase=p.purchase, features=p.features,
            price=e.price if e.price is not None and math.isfinite(e.price) else None,
            recent_items=p.recent[0], recent_categories=p.recent[1],
            query=e.query)

    def _forget(self) -> None:
        horizon = self._horizon()
        while self._seen_order and self._seen_order[0][0] < horizon:
            _, seen = self._seen_order.popleft()
            self._seen.pop(seen, None)
