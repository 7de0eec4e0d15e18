"""What the benchmark scripts share: sample data, fresh runs on the stack, event records,
CPU accounting from ``/proc``, child processes, a Flink job's source position, the model's
forward pass, tables.

Every script is run as ``.venv/bin/python bench/<name>.py``. Python then puts ``bench/`` first
on the module path, so a script imports this module as ``support`` (``from support import
...``) and the project's packages (installed in the venv) by their own names. Scripts import
nothing from one another: what two of them need lives here.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import orjson
import uvloop
from rich.console import Console
from rich.table import Table

from config import REPO_ROOT, Settings
from connectors.admin import delete_topics, ensure_topics, topic_specs
from connectors.events import Event, encode_event
from connectors.logs import read_log
from connectors.producer import TopicProducer, UnknownTopic
from connectors.training_examples import TrainingExample
from features.example_builder import build_examples
from features.impressions import with_impressions
from jobs.launch import detached_env, list_jobs
from jobs.metrics import FlinkRest

if TYPE_CHECKING:
    import torch

    from models.ranker import Batch, Ranker

console = Console(width=160)

# --- sample data --------------------------------------------------------------------------------


def sample_events(settings: Settings, rows: int | None = None) -> list[Event]:
    """The first ``rows`` rows (default: all) of the Taobao sample (``settings.sample_log``)
    through the impression rule, in event-time order."""
    with tempfile.TemporaryDirectory(prefix="bench-sample-") as tmp:
        head = Path(tmp) / "head.csv"
        with settings.sample_log.open() as src:
            head.write_text("".join(islice(src, rows)))
        events, _ = read_log(head, "taobao", settings=settings)
        return list(with_impressions(events, settings))


def real_examples(settings: Settings, log: Path, limit: int) -> list[TrainingExample]:
    """The first ``limit`` training examples of a Taobao-format log: its events through the
    impression rule and the reference's feature and label code."""
    events, _ = read_log(log, "taobao", settings=settings)
    return list(islice(build_examples(with_impressions(events, settings), settings), limit))


# --- fresh runs on the stack ----------------------------------------------------------------------

TOPIC_FIELDS = ("topic_events", "topic_dlq", "topic_examples", "topic_deltas",
                "topic_feature_rows")


def fresh_settings(base: Settings, run_dir: Path, *, redis_db: int | None = None,
                   **overrides: object) -> Settings:
    """``base`` for one benchmark run in ``run_dir``: every topic renamed
    ``bench-<topic>-<tag>`` with a new tag, Redis database ``redis_db`` if given (Feast's online
    store), then ``overrides``.

    >>> s = fresh_settings(Settings(), Path("/tmp/run"), redis_db=11)
    >>> s.topic_events.startswith("bench-events-"), s.redis_url.endswith("/11")
    (True, True)
    """
    tag = uuid.uuid4().hex[:8]
    update: dict[str, object] = {field: f"bench-{getattr(base, field)}-{tag}"
                                 for field in TOPIC_FIELDS}
    update["run_dir"] = run_dir
    if redis_db is not None:
        update["redis_url"] = f"{base.redis_url.rsplit('/', 1)[0]}/{redis_db}"
    return base.model_copy(update=update | overrides)


@contextmanager
def fresh_topics(settings: Settings) -> Iterator[None]:
    """The run's topics (:func:`connectors.admin.topic_specs`), created on entry and deleted
    on exit."""
    ensure_topics(settings)
    try:
        yield
    finally:
        delete_topics(settings, list(topic_specs(settings)))


# --- event records ---------------------------------------------------------------------------------

Record = tuple[bytes, bytes | None, int]
"""A pre-encoded Kafka record: value, key, timestamp in ms (0: the send time)."""


def record(event: Event) -> Record:
    """``event`` as :class:`connectors.producer.EventProducer` sends it: keyed by user, its
    event time as the timestamp."""
    return encode_event(event), event.user_id.encode(), event.event_time


def open_producer(settings: Settings, topic: str) -> TopicProducer:
    """A producer for ``topic``, waiting up to 10 s for a topic created a moment ago to appear
    in the broker's metadata."""
    for _ in range(50):
        try:
            return TopicProducer(settings, topic)
        except UnknownTopic:
            time.sleep(0.2)
    return TopicProducer(settings, topic)


def preload(settings: Settings, topic: str, records: Sequence[Record]) -> float:
    """Send ``records`` to ``topic`` and wait until the broker has acknowledged every one;
    records/s."""
    producer = open_producer(settings, topic)
    started = time.perf_counter()
    with producer:
        for value, key, timestamp in records:
            producer.send_raw(value, key, timestamp)
    return len(records) / (time.perf_counter() - started)


# --- CPU from /proc -------------------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(path: Path) -> list[str] | None:
    """The fields of a ``/proc`` stat file after the command name (``None``: the process or
    thread is gone). Index 1 is the parent pid, 2 the process group, 11 and 12 the user and
    system CPU time in clock ticks."""
    try:
        return path.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _cpu_s(fields: list[str]) -> float:
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _processes() -> dict[int, list[str]]:
    """Every live process: pid -> its stat fields."""
    stats = {int(path.parent.name): _stat(path) for path in Path("/proc").glob("[0-9]*/stat")}
    return {pid: fields for pid, fields in stats.items() if fields is not None}


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid`` and its live descendants.

    >>> tree_cpu_s(os.getpid()) > 0
    True
    """
    processes = _processes()
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        if p in processes:
            total += _cpu_s(processes[p])
        todo += [child for child, fields in processes.items() if int(fields[1]) == p]
    return total


def group_pids(pgid: int) -> list[int]:
    """The live processes of process group ``pgid``.

    >>> os.getpid() in group_pids(os.getpgid(0))
    True
    """
    return [pid for pid, fields in _processes().items() if int(fields[2]) == pgid]


def thread_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds so far of the threads of ``pid``, summed by thread name (``/proc`` keeps
    15 characters of it).

    >>> sum(thread_cpu_s(os.getpid()).values()) > 0
    True
    """
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        fields = _stat(task / "stat")
        try:
            name = (task / "comm").read_text().rstrip("\n")
        except OSError:
            continue
        if fields is not None:
            out[name] = out.get(name, 0.0) + _cpu_s(fields)
    return out


# --- child processes ------------------------------------------------------------------------------

SAMPLE_S = 0.25


def job_command(job: str) -> list[str]:
    """The command of a bounded run of ``job`` in a process of its own, as the CLI starts it."""
    return [sys.executable, "-m", "jobs", "run", job, "--bounded"]


@dataclass
class ChildRun:
    """A finished child process: its wall seconds, and (wall ms, CPU seconds of its process
    tree) sampled every :data:`SAMPLE_S` while it ran."""

    wall_s: float
    samples: list[tuple[float, float]]

    def cpu_between(self, start_ms: float, end_ms: float) -> float:
        """CPU seconds the tree used between two wall times (the nearest samples)."""
        def at(t: float) -> float:
            return min(self.samples, key=lambda s: abs(s[0] - t))[1]
        return at(end_ms) - at(start_ms)


def run_sampled(cmd: list[str], settings: Settings,
                on_sample: Callable[[], None] | None = None) -> ChildRun:
    """Run ``cmd`` with ``settings`` (``STREAMRANK_*``) until it exits, sampling its tree's CPU
    and calling ``on_sample`` at every sample; ``CalledProcessError`` if it fails."""
    samples: list[tuple[float, float]] = []
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=detached_env(settings),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while proc.poll() is None:
        samples.append((time.time() * 1000, tree_cpu_s(proc.pid)))
        if on_sample is not None:
            on_sample()
        time.sleep(SAMPLE_S)
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    return ChildRun(time.perf_counter() - started, samples)


# --- a Flink job's source position ----------------------------------------------------------------

REST_ERRORS = (OSError, ValueError, KeyError, http.client.HTTPException)
"""What a REST endpoint that is not (yet) serving the job raises."""


def running_job(settings: Settings, job: str, timeout_s: float = 180) -> tuple[FlinkRest, str]:
    """The REST endpoint and job id of the detached run of ``job`` once its Flink job runs
    (the address its embedded run records, :func:`jobs.launch.list_jobs`)."""
    deadline = time.monotonic() + timeout_s
    while True:
        address = next((entry.rest for entry in list_jobs(settings) if entry.name == job), "")
        if address:
            rest = FlinkRest(address)
            try:
                job_id = rest.running_job()
            except REST_ERRORS:
                job_id = None
            if job_id is not None:
                return rest, job_id
        if time.monotonic() > deadline:
            raise RuntimeError(f"no running Flink job for {job!r} after {timeout_s:.0f} s")
        time.sleep(1.0)


class SourcePosition:
    """How far a running job's Kafka source has read ``topic``: the sum over its partitions
    of the source's ``currentOffset`` metrics, from the job's REST endpoint."""

    def __init__(self, rest: FlinkRest, job_id: str, topic: str) -> None:
        self._rest = rest
        vertices = rest.get(f"/jobs/{job_id}")["vertices"]
        source = next(v["id"] for v in vertices if v["name"].startswith("Source:"))
        self._metrics = f"/jobs/{job_id}/vertices/{source}/subtasks/metrics"
        self._topic = topic
        self._ids = ""

    def __call__(self) -> int:
        """Records read so far (0 until the source has reported; at most about a second old
        while queried every second)."""
        if not self._ids:
            names = [m["id"] for m in self._rest.get(self._metrics)
                     if m["id"].endswith(".currentOffset") and self._topic in m["id"]]
            if not names:
                return 0
            self._ids = ",".join(names)
        values = self._rest.get(f"{self._metrics}?get={self._ids}&agg=sum")
        # each is the offset of the last record read (negative: none yet)
        return int(sum(float(m["sum"]) + 1 for m in values if float(m["sum"]) >= 0))

    def settled(self) -> int:
        """The position after a pause of one metrics update: the endpoint answers from a
        cache it refreshes in the background, so a first query after a quiet spell returns
        old figures."""
        self()
        time.sleep(1.5)
        return self()

    def wait_for(self, n: int, timeout_s: float = 180) -> None:
        """Return once the source has read ``n`` records."""
        deadline = time.monotonic() + timeout_s
        while self() < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the job's source read fewer than {n} records")
            time.sleep(0.5)


# --- the model's forward pass ---------------------------------------------------------------------


def _random_batch(n: int, buckets: int, generator: torch.Generator) -> Batch:
    """``n`` random encoded candidates (what :func:`models.ranker.encode_batch` returns): IDs,
    dense inputs, 0 to 10 recent clicks each, at the serving position."""
    import torch

    from models.ranker import DENSE_INPUTS, RECENT, SERVING_POSITION, WIDE_FIELDS, Batch

    sparse = torch.randint(0, buckets, (n, 3), generator=generator)
    dense = torch.rand((n, len(DENSE_INPUTS)), generator=generator) * 10
    wide = torch.randint(0, buckets, (n, len(WIDE_FIELDS)), generator=generator)
    position = torch.full((n,), SERVING_POSITION, dtype=torch.int64)
    kept = torch.randint(0, RECENT + 1, (n, 1), generator=generator)
    none = torch.arange(RECENT).expand(n, RECENT) >= kept
    recent = [torch.randint(0, buckets, (n, RECENT), generator=generator).masked_fill(none, -1)
              for _ in range(2)]
    return Batch(sparse, dense, wide, position, *recent)


def time_passes(model: Ranker, device: torch.device, n: int, dtype: str, budget_s: float,
                buckets: int) -> dict[str, float]:
    """Latency (ms, p50/p99) and candidates/s of the scorer's forward pass
    (:func:`models.scorer.batcher.forward`) over ``n`` random candidates, for ``budget_s``
    seconds (at least 5 passes, at most 2,000); ``dtype`` ``bf16`` runs it under autocast. On
    CUDA the batch goes up through pinned buffers, as in the scorer. torch is imported here,
    so that scripts that do not run the model do not load it."""
    import torch

    from models.scorer.batcher import HostStaging, forward

    batch = _random_batch(n, buckets, torch.Generator().manual_seed(n))
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bf16"
                else contextlib.nullcontext())
    served = (1, model)
    staging = HostStaging(pin=True) if device.type == "cuda" else None
    times: list[float] = []
    with autocast:
        forward(served, batch, staging)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        deadline = time.perf_counter() + budget_s
        while (time.perf_counter() < deadline or len(times) < 5) and len(times) < 2_000:
            started = time.perf_counter()
            forward(served, batch, staging)  # returns host numpy: synchronised
            times.append(time.perf_counter() - started)
    times.sort()
    p50 = statistics.median(times)
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    return {"n": n, "passes": len(times), "p50_ms": p50 * 1e3, "p99_ms": p99 * 1e3,
            "cand_per_s": n / p50}


# --- tables -----------------------------------------------------------------------------------------


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[str]]) -> Table:
    """A table to print: the first column left-aligned, the others right-aligned."""
    out = Table(title=title)
    for i, column in enumerate(columns):
        out.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        out.add_row(*row)
    return out


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """The lines of a markdown table, aligned as :func:`table`.

    >>> markdown_table(["what", "n"], [["a", "1"]])
    ['| what | n |', '| --- | ---: |', '| a | 1 |']
    """
    return (["| " + " | ".join(columns) + " |", "| --- |" + " ---: |" * (len(columns) - 1)]
            + ["| " + " | ".join(row) + " |" for row in rows])


def write_report(out: Path, name: str, lines: Iterable[str]) -> None:
    """Write ``lines`` to ``out/name`` and say so."""
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_text("\n".join(lines) + "\n")
    console.print(f"wrote {out / name}")


# --- open-loop HTTP load ---------------------------------------------------------------------

MAX_IN_FLIGHT = 64
"""Requests the generator keeps in flight at most: past that, a scheduled request counts as
failed (the scorer is saturated), so an overloaded run ends on time."""
REQUEST_TIMEOUT_S = 5.0
KEEP_IDLE_S = 4.0
"""A connection idle longer is closed rather than reused: uvicorn closes keep-alive
connections after 5 s idle, and a request written into one it closed fails."""


@dataclass
class Run:
    """One open-loop run: per request answered (start, end, latency from schedule, version),
    and the reason of each request that failed."""

    offered: float
    seconds: float
    starts: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    failed: Counter[str] = field(default_factory=Counter)
    """Requests failed, per reason (``HTTP 503``, an exception's name, ``in-flight cap``)."""
    cpu_s: float = float("nan")
    """CPU seconds the scorer's process used during the run."""

    def pct(self, q: float, mask: np.ndarray | None = None) -> float:
        """The ``q`` percentile of latency in ms (of the requests ``mask`` selects)."""
        lat = np.asarray(self.latencies)
        if mask is not None:
            lat = lat[mask]
        return float(np.percentile(lat, q) * 1e3) if len(lat) else float("nan")

    @property
    def failures(self) -> int:
        """Requests failed."""
        return sum(self.failed.values())

    def failed_text(self) -> str:
        """``0``, or the count with its reasons: ``2 (HTTP 503: 1, TimeoutError: 1)``."""
        if not self.failed:
            return "0"
        reasons = ", ".join(f"{why}: {n}" for why, n in sorted(self.failed.items()))
        return f"{self.failures} ({reasons})"

    @property
    def achieved(self) -> float:
        """Requests/s answered."""
        return len(self.latencies) / self.seconds

    @property
    def cpu_ms_per_request(self) -> float:
        """The scorer's CPU ms per answered request."""
        return self.cpu_s / max(1, len(self.latencies)) * 1e3


class _Connections:
    """Keep-alive HTTP/1.1 connections to one ``host:port``, each carrying one request at a
    time: pre-encoded requests written as they are, answers read by their ``Content-Length``.

    Written for the load generator because it shares the machine's two cores with what it
    measures, and its own delays count in every latency: with httpx, ``GET /healthz`` at 100/s
    measured p50 4.5 / p99 8.7 ms; with this, 1.3 / 3.5 ms (docs/benchmarks.md)."""

    def __init__(self, url: str) -> None:
        address = url.split("://", 1)[-1].rstrip("/")
        host, _, port = address.partition(":")
        self._host, self._port = host, int(port or 80)
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self._open: set[asyncio.StreamWriter] = set()

    def request(self, method: str, path: str, body: bytes = b"") -> bytes:
        """The bytes of one request."""
        return (f"{method} {path} HTTP/1.1\r\nHost: {self._host}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                ).encode() + body

    async def send(self, request: bytes) -> tuple[int, bytes]:
        """The status and body of the answer to ``request``."""
        reader = writer = None
        while self._idle and writer is None:
            reader, writer, since = self._idle.pop()
            if time.monotonic() - since > KEEP_IDLE_S:
                writer.close()
                self._open.discard(writer)
                reader = writer = None
        if writer is None:
            reader, writer = await asyncio.open_connection(self._host, self._port)
            self._open.add(writer)
        try:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = await reader.readexactly(length)
        except BaseException:
            writer.close()
            self._open.discard(writer)
            raise
        self._idle.append((reader, writer, time.monotonic()))
        return status, body

    async def close(self) -> None:
        """Close every connection."""
        for writer in self._open:
            writer.close()
        self._open.clear()
        self._idle.clear()


def open_loop(url: str, bodies: Sequence[bytes], rate: float, path: str = "/rank") -> Run:
    """Open loop: send ``bodies`` at ``rate`` (a GET for any path but ``/rank``); each
    latency counts from the request's scheduled send, so a stall counts for every request it
    delays. Runs on uvloop, the event loop the scorer runs on: the generator's own scheduling
    delays count in every latency it measures."""
    return uvloop.run(_open_loop(url, bodies, rate, path))


async def _open_loop(url: str, bodies: Sequence[bytes], rate: float, path: str) -> Run:
    run = Run(rate, len(bodies) / rate)
    connections = _Connections(url)
    in_flight = 0
    loop = asyncio.get_running_loop()

    async def one(request: bytes, scheduled: float) -> None:
        nonlocal in_flight
        in_flight += 1
        started = time.perf_counter()
        why = ""
        try:
            status, content = await asyncio.wait_for(connections.send(request),
                                                     REQUEST_TIMEOUT_S)
            version = orjson.loads(content)["model_version"] if status == 200 else -1
            why = "" if status == 200 else f"HTTP {status}"
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as err:
            why = type(err).__name__
        end = time.perf_counter()
        in_flight -= 1
        if why:
            run.failed[why] += 1
            return
        run.starts.append(started)
        run.ends.append(end)
        run.latencies.append(end - scheduled)
        run.versions.append(version)

    requests = [connections.request("POST", path, body) if path == "/rank"
                else connections.request("GET", path) for body in bodies]
    tasks = []
    t0 = time.perf_counter() + 0.05
    try:
        for k, request in enumerate(requests):
            scheduled = t0 + k / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if in_flight >= MAX_IN_FLIGHT:
                run.failed["in-flight cap"] += 1
                continue
            tasks.append(loop.create_task(one(request, scheduled)))
        await asyncio.gather(*tasks)
    finally:
        await connections.close()
    return run
