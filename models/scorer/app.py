"""The scorer's HTTP app (FastAPI on uvicorn) and :func:`serve`.

Endpoints: ``POST /rank``, ``POST /search``, ``GET /healthz`` (200 once a model is loaded), ``GET /status``
(versions as JSON), ``GET /metrics`` (Prometheus text), and, with the bearer token
``STREAMRANK_ADMIN_TOKEN`` when one is set, ``POST /admin/pin`` (``{"version": V}``),
``POST /admin/unpin`` and ``POST /admin/rollback``.

A ``/rank`` request is checked (size, fields, candidates), its features and the user's recent
clicks read in one online read (:class:`features.online.OnlineFeatureReader`, awaited on the
event loop through an asyncio Redis client) and encoded with the items' prices from the
request by the training examples' encoder (:mod:`models.scorer.candidates`), then scored at
the fixed serving position in the next forward pass of the
:class:`~models.scorer.batcher.Batcher`, all on the event loop's thread: a request is never
handed between threads, so it never waits for the interpreter lock behind another one's
Python work. ``/rank`` and ``/search`` are answered straight from the ASGI messages
(:func:`ranking_endpoints`), the other endpoints by FastAPI. Bad input is
answered 4xx with a message, never 5xx. When the online store cannot be read the candidates are
scored on fresh (empty) features and the answer says ``"degraded": true``. A request with a
``query`` has it embedded once (an LRU cache of ``query_cache_size`` queries) and its
candidates get the query–item text features from the scorer's catalog
(:mod:`models.catalog`, following the ``items`` topic); without one they are zeros.

A ``/search`` request recalls ``max(k, search_recall)`` catalog items by the cosine of their
titles' embeddings to the query's, drops those in ``search_blocked_items`` or
``search_blocked_categories``, ranks the rest with the query exactly as ``/rank`` does (their
categories and prices from the catalog) and answers the best ``k`` with a fresh
``request_id``: the caller logs the shown list as impressions with it (and the positions and
the query), and clicks with it, as for ``/rank``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import orjson
import torch
from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, Histogram, generate_latest
from pydantic import SecretStr, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from config import Settings
from connectors.snapshot_store import SnapshotStore
from features.online import OnlineInputs, SdkFeatureReader, no_inputs
from features.store import open_store
from models.catalog import Catalog, CatalogFollower, SearchText
from models.ranker import Batch
from models.scorer.api import Candidates, PinRequest, RankRequest, SearchRequest, parse_rank
from models.scorer.batcher import Batcher
from models.scorer.candidates import encode_candidates
from models.scorer.metrics import ScorerMetrics
from models.scorer.quiet import InFlight
from models.scorer.reader import ColumnFeatureReader
from models.scorer.registry import register, unregister
from models.scorer.reloader import Reloader
from models.scorer.service import ModelService, VersionUnavailable

log = logging.getLogger(__name__)
PREPARE_THREADS = 4
"""Threads for the blocking work off the request path: ``/search``'s recall, and the feature
read of the Feast SDK reader (``feature_reader = "sdk"``) or of a Redis cluster."""
DEGRADED_ERRORS: tuple[type[BaseException], ...] = (OSError,)
try:  # redis-py's errors do not all derive from OSError
    from redis.exceptions import RedisError

    DEGRADED_ERRORS += (RedisError,)
except ImportError:  # pragma: no cover - redis comes with feast[redis]
    pass


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cpu``; ``cuda`` (an error without one)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ValueError(f"device must be auto, cpu or cuda, not {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda, but torch sees no CUDA device")
    return torch.device(name)


def bearer_ok(header: str, token: SecretStr | None) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <token>`` (any header when no
    token is set); compared in constant time.

    >>> bearer_ok("Bearer s3", SecretStr("s3")), bearer_ok("Bearer s4", SecretStr("s3"))
    (True, False)
    >>> bearer_ok("", None)
    True
    """
    if token is None:
        return True
    return hmac.compare_digest(header.encode(), f"Bearer {token.get_secret_value()}".encode())


Answer = tuple[int, bytes]
"""An HTTP status and a JSON body."""


def _answer(body: Any, status: int = 200) -> Answer:
    return status, orjson.dumps(body)


def _refusal(status: int, message: str, errors: list[dict[str, Any]] | None = None) -> Answer:
    body: dict[str, Any] = {"detail": message}
    if errors:
        body["errors"] = errors
    return _answer(body, status)


def _validation_errors(err: ValidationError) -> list[dict[str, Any]]:
    return [{"loc": [str(p) for p in e["loc"]], "msg": e["msg"], "type": e["type"]}
            for e in err.errors(include_url=False, include_input=False)]


class Scorer:
    """One scorer: served model, reloader, catalog, feature reader, batcher, metrics."""

    def __init__(self, settings: Settings, device: str = "auto", url: str = "",
                 follow: bool = True, serves: str = "") -> None:
        self.settings = settings
        self.device = resolve_device(device)
        self.url = url
        self.serves = serves or url
        """The address clients use: the shared port of ``serve --workers N``, else ``url``."""
        self.service = ModelService(settings, self.device, SnapshotStore.from_settings(settings))
        self.metrics = ScorerMetrics(self.service)
        self.in_flight = InFlight()
        self.reloader = Reloader(settings, self.service, self.metrics.outcome,
                                 self.in_flight.wait_quiet) if follow else None
        self.catalog = Catalog()
        self.catalog_follower = CatalogFollower(settings, self.catalog) if follow else None
        self.metrics.catalog_items.set_function(lambda: len(self.catalog))
        self.text = SearchText(self.catalog, settings.query_cache_size,
                               self.metrics.query_embed.observe)
        if settings.feature_reader not in ("redis", "sdk"):
            raise ValueError(f"feature_reader must be redis or sdk, not {settings.feature_reader!r}")
        store = open_store(settings)
        ttl = settings.feature_state_ttl_ms
        self.reader: ColumnFeatureReader | SdkFeatureReader = (
            ColumnFeatureReader(store, settings.item_cache_ttl_ms, state_ttl_ms=ttl)
            if settings.feature_reader == "redis" else SdkFeatureReader(store, ttl))
        reader = self.reader
        self.metrics.count_item_cache(lambda: (reader.cache_hits, reader.cache_misses))
        self.batcher = Batcher(self.service.current, settings.max_batch_wait_ms / 1000.0,
                               settings.max_batch_candidates, self._observe, self.device)
        self.prepare_pool = ThreadPoolExecutor(PREPARE_THREADS, thread_name_prefix="prepare")

    def _observe(self, candidates: int, requests: int) -> None:
        self.metrics.batch_candidates.observe(candidates)
        self.metrics.batch_requests.observe(requests)

    def prepare(self, request: RankRequest | Candidates) -> tuple[list[str], Batch, bool]:
        """Item IDs, encoded model input and whether it is degraded (features unreadable),
        reading the features with a blocking call (in-process use; the app awaits
        :meth:`prepare_async`)."""
        request, text, t = self._begin(request)
        try:
            inputs = self.reader.read(request.user_id, request.item_ids, request.category_ids, t)
        except DEGRADED_ERRORS as err:
            return request.item_ids, self._encode(request, self._degraded(err, request, t),
                                                  text), True
        return request.item_ids, self._encode(request, inputs, text), False

    async def prepare_async(self, request: Candidates) -> tuple[list[str], Batch, bool]:
        """:meth:`prepare` on the event loop: the feature read is awaited, not blocked on."""
        request, text, t = self._begin(request)
        try:
            if isinstance(self.reader, ColumnFeatureReader):
                inputs = await self.reader.read_async(request.user_id, request.item_ids,
                                                      request.category_ids, t)
            else:
                inputs = await asyncio.get_running_loop().run_in_executor(
                    self.prepare_pool, self.reader.read, request.user_id, request.item_ids,
                    request.category_ids, t)
        except DEGRADED_ERRORS as err:
            return request.item_ids, self._encode(request, self._degraded(err, request, t),
                                                  text), True
        return request.item_ids, self._encode(request, inputs, text), False

    def _begin(self, request: RankRequest | Candidates
               ) -> tuple[Candidates, np.ndarray | None, int]:
        """The request as columns, its query–item text features and its read time."""
        if isinstance(request, RankRequest):
            request = request.candidates()
        text = self.text.columns(request.query, request.item_ids) if request.query else None
        t = request.as_of_ms if request.as_of_ms is not None else time.time_ns() // 1_000_000
        return request, text, t

    def _degraded(self, err: BaseException, request: Candidates, t: int) -> OnlineInputs:
        log.warning("online features unreadable, scoring degraded: %s", err)
        self.metrics.feature_errors.inc()
        return no_inputs(request.category_ids, t)

    def _encode(self, request: Candidates, inputs: OnlineInputs,
                text: np.ndarray | None) -> Batch:
        return encode_candidates(request.user_id, request.item_ids, request.category_ids,
                                 request.prices, inputs, self.settings.hash_buckets, text)

    async def rank(self, request: Candidates) -> tuple[int, list[dict[str, Any]], bool]:
        """``/rank``'s answer: the model version, the items best first with their
        probabilities and scores, and whether it is degraded."""
        self.batcher.preparing += 1
        try:
            items, batch, degraded = await self.prepare_async(request)
        finally:
            self.batcher.preparing -= 1
        version, probs = await self.batcher.score(batch)
        scores = probs[:, 0] + self.settings.purchase_weight * probs[:, 1]
        order = (-scores).argsort(kind="stable")
        ranked = probs[order]
        return version, [{"item_id": i, "p_click": c, "p_purchase": p, "score": s}
                         for i, c, p, s in zip(map(items.__getitem__, order.tolist()),
                                               ranked[:, 0].tolist(), ranked[:, 1].tolist(),
                                               scores[order].tolist())], degraded

    def recall(self, request: SearchRequest) -> tuple[Candidates, dict[str, float]]:
        """``/search``'s candidates (catalog items nearest the query, blocked ones out, with
        their categories and prices) and each one's cosine to the query."""
        settings = self.settings
        vector = self.text.query(request.query)[0]
        if vector is None:
            return Candidates(request.user_id, [], [], [], request.as_of_ms, request.query), {}
        found = self.catalog.recall(vector, max(request.k, settings.search_recall))
        blocked_items = set(settings.search_blocked_items)
        blocked_categories = set(settings.search_blocked_categories)
        kept = [(entry, cosine) for item_id, cosine in found
                if (entry := self.catalog.get(item_id)) is not None
                and item_id not in blocked_items
                and entry.item.category_id not in blocked_categories]
        return Candidates(request.user_id, [e.item.item_id for e, _ in kept],
                          [e.item.category_id for e, _ in kept], [e.item.price for e, _ in kept],
                          request.as_of_ms, request.query), \
            {e.item.item_id: cosine for e, cosine in kept}

    def authorized(self, request: Request) -> bool:
        """Whether an admin request carries the configured bearer token (or none is set)."""
        return bearer_ok(request.headers.get("authorization", ""), self.settings.admin_token)

    def status(self) -> dict[str, Any]:
        """``GET /status``: versions, guard, device, the reloader's state."""
        return self.service.status().as_dict() | {
            "url": self.url, "serves": self.serves, "pid": os.getpid(), "device": str(self.device),
            "reloader": "off" if self.reloader is None else
            f"stopped: {self.reloader.error!r}" if self.reloader.error else "running",
            "catalog": self.catalog.status() | {
                "follower": "off" if self.catalog_follower is None else
                f"stopped: {self.catalog_follower.error!r}" if self.catalog_follower.error
                else "running"}}


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return ""


class Disconnected(Exception):
    """The client went away before its body arrived."""


def ranking_endpoints(scorer: Scorer) -> dict[str, Callable[[Scope, Receive],
                                                            Awaitable[Answer]]]:
    """``/rank`` and ``/search``: each reads its body from the ASGI messages and gives its
    answer, counted in the metrics. Without a framework's request and response objects and
    routing, the request path spends its time on the ranking (about 0.4 ms less per request
    than through FastAPI, measured on the 2-core machine)."""
    settings, metrics, in_flight = scorer.settings, scorer.metrics, scorer.in_flight
    rank_token, limit = settings.rank_token, settings.max_request_bytes

    async def read_body(scope: Scope, receive: Receive, endpoint: str) -> bytes | Answer:
        """The body of a ranking request, or the 401/413 answer it gets."""
        if rank_token is not None and not bearer_ok(_header(scope, b"authorization"),
                                                    rank_token):
            return _refusal(401, f"/{endpoint} needs the bearer token STREAMRANK_RANK_TOKEN")
        length = _header(scope, b"content-length")
        if length.isdigit() and int(length) > limit:
            return _refusal(413, f"body over {limit} bytes")
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return _refusal(413, f"body over {limit} bytes")
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)

    async def rank(body: bytes) -> Answer:
        try:
            req = parse_rank(body)
        except ValidationError as err:
            return _refusal(422, "invalid request", _validation_errors(err))
        if len(req.item_ids) > settings.max_candidates:
            return _refusal(
                422, f"{len(req.item_ids)} items, at most {settings.max_candidates} per request")
        if scorer.service.version == 0:
            return _refusal(503, "no model loaded yet")
        version, ranked, degraded = await scorer.rank(req)
        return _answer({"model_version": version, "items": ranked, "degraded": degraded})

    async def search(body: bytes) -> Answer:
        try:
            req = SearchRequest.model_validate_json(body)
        except ValidationError as err:
            return _refusal(422, "invalid request", _validation_errors(err))
        if req.k > settings.search_max_k:
            return _refusal(422, f"k is {req.k}, at most {settings.search_max_k}")
        if scorer.service.version == 0:
            return _refusal(503, "no model loaded yet")
        candidates, cosines = await asyncio.get_running_loop().run_in_executor(
            scorer.prepare_pool, scorer.recall, req)
        version, ranked, degraded = (await scorer.rank(candidates) if candidates.item_ids
                                     else (scorer.service.version, [], False))
        shown = []
        for row in ranked[:req.k]:
            item = scorer.catalog.get(row["item_id"])
            shown.append(row | {"similarity": cosines[row["item_id"]]} | ({} if item is None else {
                "title": item.item.title, "category_id": item.item.category_id,
                "price": item.item.price}))
        return _answer({"request_id": uuid.uuid4().hex, "model_version": version,
                        "query": req.query, "recalled": len(cosines), "items": shown,
                        "degraded": degraded})

    def endpoint(name: str, handle: Callable[[bytes], Awaitable[Answer]],
                 latency: Histogram) -> Callable[[Scope, Receive], Awaitable[Answer]]:
        async def answer(scope: Scope, receive: Receive) -> Answer:
            in_flight.enter()  # from its first byte read to its answer
            try:
                return await counted(scope, receive)
            finally:
                in_flight.leave()

        async def counted(scope: Scope, receive: Receive) -> Answer:
            started = time.perf_counter()
            body = await read_body(scope, receive, name)
            try:
                status, out = await handle(body) if isinstance(body, bytes) else body
            except Exception:  # noqa: BLE001 - a bug answers 500 and the scorer keeps serving
                log.exception("/%s failed", name)
                status, out = _refusal(500, "internal error")
            if status == 200:
                latency.observe(time.perf_counter() - started)
            metrics.answered(name, status)
            return status, out

        return answer

    return {"/rank": endpoint("rank", rank, metrics.latency),
            "/search": endpoint("search", search, metrics.search_latency)}


def create_app(scorer: Scorer) -> ASGIApp:
    """The scorer's ASGI app (starts and stops its reloader with the app): ``POST /rank`` and
    ``POST /search`` answered by :func:`ranking_endpoints` straight from the ASGI messages,
    everything else by a FastAPI app."""
    settings, metrics = scorer.settings, scorer.metrics

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Everything imported and built so far (torch, Feast, the model: ~350k objects) lives
        # as long as the process: out of the collector's sight, a full collection takes tens
        # of milliseconds instead of about a second (measured on the shared 2-core machine).
        gc.freeze()
        scorer.batcher.start()
        if scorer.reloader is not None:
            scorer.reloader.start()
        if scorer.catalog_follower is not None:
            scorer.catalog_follower.start()
        if scorer.url:
            register(settings, scorer.url, scorer.serves)
        try:
            yield
        finally:
            if scorer.url:
                unregister(settings, scorer.url)
            if scorer.reloader is not None:
                scorer.reloader.stop()
            if scorer.catalog_follower is not None:
                scorer.catalog_follower.stop()
            await scorer.batcher.close()
            if isinstance(scorer.reader, ColumnFeatureReader):
                await scorer.reader.close_async()
            scorer.prepare_pool.shutdown(wait=False)

    app = FastAPI(title="streamrank scorer", lifespan=lifespan, docs_url=None, redoc_url=None)
    posts = ranking_endpoints(scorer)

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        handler = posts.get(scope["path"]) if scope["type"] == "http" else None
        if handler is None:
            await app(scope, receive, send)
            return
        headers = [(b"content-type", b"application/json")]
        if scope["method"] != "POST":
            status, body = _refusal(405, "Method Not Allowed")
            headers.append((b"allow", b"POST"))
        else:
            try:
                status, body = await handler(scope, receive)
            except Disconnected:
                return
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def answer(endpoint: str, reply: Answer) -> Response:
        metrics.answered(endpoint, reply[0])
        return Response(reply[1], status_code=reply[0], media_type="application/json")

    @app.get("/healthz")
    async def healthz() -> Response:
        version = scorer.service.version
        if scorer.reloader is not None and scorer.reloader.error is not None:
            return answer("healthz", _refusal(503, f"reloader stopped: {scorer.reloader.error}"))
        if version == 0:
            return answer("healthz", _refusal(503, "no model loaded yet"))
        return answer("healthz", _answer({"status": "ok", "model_version": version}))

    @app.get("/status")
    async def status() -> Response:
        return answer("status", _answer(scorer.status()))

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def admin(request: Request, endpoint: str, action: Any) -> Response:
        if not scorer.authorized(request):
            return answer(endpoint, _refusal(401, "admin endpoints need the bearer token "
                                                  "STREAMRANK_ADMIN_TOKEN"))
        try:
            await run_in_threadpool(action)
        except VersionUnavailable as err:
            return answer(endpoint, _refusal(409, str(err)))
        return answer(endpoint, _answer(scorer.status()))

    @app.post("/admin/pin")
    async def pin(request: Request) -> Response:
        body = await request.body()
        if not scorer.authorized(request):
            return answer("admin", _refusal(401, "admin endpoints need the bearer token "
                                                 "STREAMRANK_ADMIN_TOKEN"))
        try:
            version = PinRequest.model_validate_json(body).version
        except ValidationError as err:
            return answer("admin", _refusal(422, "invalid request", _validation_errors(err)))
        return await admin(request, "admin", lambda: scorer.service.pin(version))

    @app.post("/admin/unpin")
    async def unpin(request: Request) -> Response:
        return await admin(request, "admin", scorer.service.unpin)

    @app.post("/admin/rollback")
    async def rollback(request: Request) -> Response:
        return await admin(request, "admin", scorer.service.rollback)

    return asgi


SWITCH_INTERVAL_S = 0.001
"""How long a thread holding the interpreter lock may keep it while another waits (Python's
default is 5 ms): the reloader's (snapshots, Kafka polls) and the catalog follower's threads
take the lock back after each native step, and a request on the event loop should not wait
5 ms behind them, nor they behind a busy loop."""


def _tune_process() -> None:
    """A scorer process's settings: one torch thread per process (``serve --workers N`` adds
    processes, not threads) and a short interpreter switch interval."""
    torch.set_num_threads(1)
    sys.setswitchinterval(SWITCH_INTERVAL_S)


def serve(settings: Settings, port: int | None = None, device: str = "auto",
          host: str = "127.0.0.1", workers: int = 1) -> None:
    """Run a scorer until interrupted (registers itself under ``<run_dir>/scorers/``); with
    ``workers`` > 1, that many scorer processes behind ``port`` (:func:`supervise`)."""
    port = settings.scorer_port if port is None else port
    if workers > 1:
        supervise(settings, port, device, host, workers)
        return
    import uvicorn

    _tune_process()
    scorer = Scorer(settings, device, url=f"http://{host}:{port}")
    uvicorn.run(create_app(scorer), host=host, port=port, log_level="warning",
                access_log=False)


def _worker(settings: Settings, shared: socket.socket, device: str, host: str) -> None:
    """One of :func:`supervise`'s processes: a scorer answering on the shared socket and on a
    port of its own (its address in the registry: ``/status``, ``/metrics`` and the admin
    calls of this process)."""
    import uvicorn

    _tune_process()
    own = socket.socket()
    own.bind((host, 0))
    url = f"http://{host}:{own.getsockname()[1]}"
    scorer = Scorer(settings, device, url=url,
                    serves=f"http://{host}:{shared.getsockname()[1]}")
    server = uvicorn.Server(uvicorn.Config(create_app(scorer), log_level="warning",
                                           access_log=False))
    server.run(sockets=[shared, own])


def supervise(settings: Settings, port: int, device: str, host: str, workers: int) -> None:
    """``workers`` scorer processes accepting on one listening socket (bound here, inherited
    by each), each following ``model.deltas`` and hot-reloading on its own; a process that
    exits is started again; SIGTERM or SIGINT stops them all."""
    shared = socket.socket()
    shared.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    shared.bind((host, port))
    shared.listen(2048)
    ctx = multiprocessing.get_context("spawn")
    halt = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: halt.set())

    def start() -> multiprocessing.process.BaseProcess:
        proc = ctx.Process(target=_worker, args=(settings, shared, device, host),
                           name="scorer-worker")
        proc.start()
        return proc

    procs = [start() for _ in range(workers)]
    log.warning("scorer on http://%s:%d: workers %s", host, port, [p.pid for p in procs])
    while not halt.wait(0.5):
        for k, proc in enumerate(procs):
            if not proc.is_alive():
                log.warning("scorer worker %s exited (%s): starting another", proc.pid,
                            proc.exitcode)
                procs[k] = start()
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.join(15)
        if proc.is_alive():
            proc.kill()
            proc.join()
    shared.close()
