"""``streamrank simulate``: simulated shoppers close the loop against running scorers.

Each tick a shopper (:mod:`streamrank.shoppers`) asks a scorer to rank a candidate list
(``POST /rank``), looks at the ranked list and clicks and buys by taste and position; the
impressions of what they were shown, their clicks (with the request's ``request_id``) and their
purchases go into ``events`` through the normal producer, so they become features, examples,
deltas and new rankings. A stated share of shoppers (by a hash of the user id, so a shopper
stays in one arm) is ranked by a scorer pinned to an early version (``frozen``), the rest by
the live scorers; tastes rotate at ``drift_at_s``.

While it runs, watchers measure each hop of the loop (:class:`Recorder`): a click's user row in
Feast (polled), examples arriving on ``training.examples``, versions on ``model.deltas`` (with
the event-time watermark each learned up to) and the version each live scorer serves.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka import Consumer

from config import Settings
from connectors.events import Event
from connectors.kafka_config import consumer_config
from connectors.logs import read_log
from connectors.model_updates import ModelUpdateSubscriber
from connectors.producer import EventProducer
from connectors.training_examples import decode_example
from models.delta import UpdateRejected, read_metadata
from models.scorer.registry import admin_call, registered
from streamrank.shoppers import ClickModel, ShopperModel


def now_ms() -> int:
    """Wall-clock time in ms (the simulated events' event time)."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class SimulationOptions:
    """What ``simulate`` does (its command-line options)."""

    rate: float = 10.0
    """Ranking requests per second (one shopper each)."""
    duration_s: float | None = None
    """Stop after this long; ``None``: run until interrupted."""
    drift_at_s: float | None = None
    """Rotate the shoppers' tastes this long after the start (``None``: never)."""
    frozen_share: float = 0.3
    """Share of shoppers ranked by the scorer pinned to an early version (0: no A/B split)."""
    seed: int = 7
    users: int | None = None
    """Simulate only this many of the fitted shoppers (drawn with ``seed``); ``None``: all."""
    probe_every_s: float = 2.0
    """How often a click's user row is watched until it shows in Feast."""


@dataclass
class Ranking:
    """One simulated request and what the shopper did."""

    t_ms: int
    user: str
    arm: str
    version: int
    shown: int
    clicks: int
    purchases: int
    latency_ms: float
    scorer: str = ""


@dataclass
class Recorder:
    """Everything a run measured (the report's input), filled from several threads."""

    started_ms: int = field(default_factory=now_ms)
    drift_ms: int | None = None
    rankings: list[Ranking] = field(default_factory=list)
    clicks: list[tuple[int, str]] = field(default_factory=list)
    """(event time, user) of each simulated click."""
    errors: list[str] = field(default_factory=list)
    versions: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    """version -> (watermark ms, ms it was seen on ``model.deltas``, bytes)."""
    served: dict[tuple[str, int], int] = field(default_factory=dict)
    """(scorer url, version) -> ms the scorer was first seen serving it."""
    feast_ms: list[float] = field(default_factory=list)
    """Click -> the user's row in Feast at or past the click, ms."""
    examples: list[tuple[int, int, int]] = field(default_factory=list)
    """(impression event time, ms the example arrived, clicked) of simulated impressions."""
    samples: list[dict[str, Any]] = field(default_factory=list)
    """Every couple of seconds: events on the topic, the jobs' consumer lag, the trainer's
    examples and rolling metrics."""
    events_sent: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Watcher(threading.Thread):
    """A daemon thread running ``step`` until stopped (errors go to the recorder)."""

    def __init__(self, name: str, step: Callable[[], None], recorder: Recorder,
                 close: Callable[[], None] = lambda: None) -> None:
        super().__init__(name=name, daemon=True)
        self.step, self.recorder, self.close = step, recorder, close
        self.stopping = threading.Event()

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                try:
                    self.step()
                except Exception as err:  # noqa: BLE001 - a watcher reports and keeps going
                    with self.recorder.lock:
                        self.recorder.errors.append(f"{self.name}: {err!r}")
                    self.stopping.wait(1.0)
        finally:
            self.close()

    def stop(self) -> None:
        self.stopping.set()
        self.join(15)


def _watch_versions(settings: Settings, rec: Recorder) -> _Watcher:
    sub = ModelUpdateSubscriber(settings)

    def step() -> None:
        for data in sub.poll(0.2):
            try:
                meta = read_metadata(data)
                version, watermark = int(meta["version"]), int(meta["watermark_ms"])
            except (UpdateRejected, KeyError, ValueError):
                continue  # not a model update the scorers would take either
            with rec.lock:
                rec.versions.setdefault(version, (watermark, now_ms(), len(data)))

    return _Watcher("versions", step, rec, sub.close)


def _watch_examples(settings: Settings, rec: Recorder) -> _Watcher:
    consumer = Consumer(consumer_config(settings, f"streamrank-simulate-{uuid.uuid4().hex[:8]}",
                                        **{"enable.auto.commit": False}))
    consumer.subscribe([settings.topic_examples])

    def step() -> None:
        arrived = now_ms()
        for msg in consumer.consume(500, 0.2):
            if msg.error() is None and b'"sim-' in (value := msg.value() or b""):
                example = decode_example(value)
                with rec.lock:
                    rec.examples.append((example.event_time, arrived, example.click))

    return _Watcher("examples", step, rec, consumer.close)


def _watch_scorers(urls: list[str], rec: Recorder) -> _Watcher:
    client = httpx.Client(timeout=2)

    def step() -> None:
        seen = now_ms()
        for url in urls:
            try:
                version = int(client.get(f"{url}/status").json()["version"])
            except (httpx.HTTPError, KeyError, ValueError):
                continue
            with rec.lock:
                rec.served.setdefault((url, version), seen)
        time.sleep(0.1)

    return _Watcher("scorers", step, rec, client.close)


def _watch_feast(settings: Settings, rec: Recorder, every_s: float) -> _Watcher:
    from features.online import user_row_time
    from features.store import open_store

    store = open_store(settings)

    def step() -> None:
        time.sleep(every_s)
        with rec.lock:
            if not rec.clicks:
                return
            clicked_ms, user = rec.clicks[-1]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            seen = user_row_time(store, user)
            if seen is not None and seen >= clicked_ms:
                with rec.lock:
                    rec.feast_ms.append(now_ms() - clicked_ms)
                return
            time.sleep(0.05)
        with rec.lock:
            rec.errors.append(f"feast: user {user}'s click at {clicked_ms} not visible in 30 s")

    return _Watcher("feast", step, rec)


def _watch_loop(settings: Settings, rec: Recorder, every_s: float = 2.0) -> _Watcher:
    import json

    from connectors.admin import consumer_lag, end_offsets
    from jobs.flink import group_id
    from jobs.training import status_path

    def step() -> None:
        sample: dict[str, Any] = {
            "t_ms": now_ms(), "events": sum(end_offsets(settings, settings.topic_events).values()),
            "lag_features": consumer_lag(settings, settings.topic_events, group_id("features")),
            "lag_training": consumer_lag(settings, settings.topic_examples, group_id("training"))}
        try:
            trainer = json.loads(status_path(settings).read_text())
            sample |= {"examples": trainer.get("examples"), "metrics": trainer.get("metrics")}
        except (OSError, ValueError):
            pass
        with rec.lock:
            rec.samples.append(sample)
        time.sleep(every_s)

    return _Watcher("loop", step, rec)


def _arm(user: str, frozen_share: float) -> str:
    """``frozen`` or ``live``: a stable split of the shoppers by a hash of their id."""
    return "frozen" if zlib.crc32(user.encode()) % 1000 < frozen_share * 1000 else "live"


class Simulation:
    """Shoppers against the scorers of a running loop (see the module docstring)."""

    def __init__(self, settings: Settings, options: SimulationOptions,
                 model: ShopperModel | None = None) -> None:
        self.settings, self.options = settings, options
        self.rng = random.Random(options.seed)
        if model is None:
            events, _ = read_log(settings.sample_log, "taobao", settings=settings)
            model = ShopperModel.fit(events, ClickModel())
        self.model = model
        self.users = (model.users if options.users is None
                      else self.rng.sample(model.users, min(options.users, len(model.users))))
        self.recorder = Recorder()
        self.client = httpx.Client(timeout=10)
        self.scorers = registered(settings)
        if not self.scorers:
            raise RuntimeError("no scorer is running in this run directory: start the loop "
                               "with `streamrank up` (or `streamrank serve`)")
        self.frozen_url: str | None = None
        if options.frozen_share > 0 and len(self.scorers) >= 2:
            self.frozen_url = self.scorers[-1]
        self.live_urls = [u for u in self.scorers if u != self.frozen_url]
        self._turn = 0

    def _admin(self, url: str, action: str, body: dict[str, Any] | None = None) -> None:
        token = self.settings.admin_token
        status, answer = admin_call(url, action, token.get_secret_value() if token else None, body)
        if status != 200:
            raise RuntimeError(f"{url} /admin/{action}: {status} {answer}")

    def _pin_frozen(self) -> int | None:
        """Pin the frozen arm's scorer to the version it serves now (waiting for one)."""
        if self.frozen_url is None:
            return None
        deadline = time.monotonic() + 120
        while (version := int(self.client.get(f"{self.frozen_url}/status").json()["version"])) == 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.frozen_url} loaded no model in 120 s")
            time.sleep(0.5)
        self._admin(self.frozen_url, "pin", {"version": version})
        return version

    def _url(self, arm: str) -> str:
        if arm == "frozen" and self.frozen_url is not None:
            return self.frozen_url
        self._turn += 1
        return self.live_urls[self._turn % len(self.live_urls)]

    def request(self, producer: EventProducer) -> None:
        """One shopper: rank, look, click, buy; the events go to ``events``."""
        model, rec = self.model, self.recorder
        user = self.rng.choice(self.users)
        arm = _arm(user, self.options.frozen_share) if self.frozen_url else "live"
        items = model.candidates(user, self.rng)
        body = {"user_id": user, "items": [{"item_id": i, "category_id": model.item_category[i]}
                                           for i in items]}
        sent = time.perf_counter()
        t = now_ms()
        url = self._url(arm)
        try:
            response = self.client.post(f"{url}/rank", json=body)
        except httpx.HTTPError as err:  # a scorer down: the shopper sees nothing this time
            with rec.lock:
                rec.errors.append(f"/rank {url}: {err!r}")
            return
        latency = (time.perf_counter() - sent) * 1000
        if response.status_code != 200:
            with rec.lock:
                rec.errors.append(f"/rank {url} {response.status_code}: {response.text[:200]}")
            return
        answer = response.json()
        ranked = [i["item_id"] for i in answer["items"]]
        request_id = f"sim-{uuid.uuid4().hex[:16]}"
        shown = ranked[: model.params.shown]
        events = [Event(event_id=f"{request_id}-i{p}", event_type="impression", user_id=user,
                        item_id=item, event_time=t, request_id=request_id, position=p,
                        category_id=model.item_category[item]) for p, item in enumerate(shown)]
        reactions = model.react(user, shown, self.rng)
        for position, item, bought in reactions:
            cat = model.item_category[item]
            events.append(Event(event_id=f"{request_id}-c{position}", event_type="click",
                                user_id=user, item_id=item, event_time=t + 1,
                                request_id=request_id, position=position, category_id=cat))
            if bought:
                events.append(Event(event_id=f"{request_id}-p{position}", event_type="purchase",
                                    user_id=user, item_id=item, event_time=t + 2,
                                    category_id=cat))
        producer.send_many(events)
        with rec.lock:
            rec.events_sent += len(events)
            rec.clicks.extend((t + 1, user) for _ in reactions)
            rec.rankings.append(Ranking(t, user, arm, int(answer["model_version"]), len(shown),
                                        len(reactions), sum(b for *_, b in reactions), latency,
                                        url))

    def run(self, on_tick: Callable[[Recorder], None] = lambda r: None) -> Recorder:
        """Run until ``duration_s`` has passed or SIGINT (KeyboardInterrupt); returns what was
        measured. The frozen arm's scorer is unpinned at the end."""
        opts, rec = self.options, self.recorder
        pinned = self._pin_frozen()
        watchers = [_watch_versions(self.settings, rec), _watch_examples(self.settings, rec),
                    _watch_scorers(self.live_urls, rec),
                    _watch_feast(self.settings, rec, opts.probe_every_s),
                    _watch_loop(self.settings, rec)]
        for w in watchers:
            w.start()
        rec.started_ms = now_ms()
        start = time.monotonic()
        n = 0
        try:
            with EventProducer(self.settings) as producer:
                while opts.duration_s is None or time.monotonic() - start < opts.duration_s:
                    elapsed = time.monotonic() - start
                    if (opts.drift_at_s is not None and rec.drift_ms is None
                            and elapsed >= opts.drift_at_s):
                        self.model.drift()
                        rec.drift_ms = now_ms()
                    due = start + n / opts.rate
                    if (wait := due - time.monotonic()) > 0:
                        time.sleep(wait)
                    self.request(producer)
                    n += 1
                    if n % max(1, int(opts.rate)) == 0:
                        on_tick(rec)
        except KeyboardInterrupt:
            pass
        finally:
            time.sleep(1.0)  # the watchers see the last versions
            for w in watchers:
                w.stop()
            if pinned is not None and self.frozen_url is not None:
                self._admin(self.frozen_url, "unpin")
        return rec


def write_rankings(rec: Recorder, path: Path) -> None:
    """The rankings as CSV (one row per request)."""
    import csv

    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["t_ms", "user", "arm", "version", "shown", "clicks", "purchases",
                      "latency_ms"])
        for r in rec.rankings:
            out.writerow([r.t_ms, r.user, r.arm, r.version, r.shown, r.clicks, r.purchases,
                          f"{r.latency_ms:.2f}"])
