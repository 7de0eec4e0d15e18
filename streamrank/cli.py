"""The ``streamrank`` command line: one entry point for the whole system."""

from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from config import Settings, load_settings

app = typer.Typer(help="Streaming online-learning ranking: Kafka, Flink, Feast, PyTorch.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)
stack_app = typer.Typer(help="The local stack: Kafka (KRaft) and Redis on loopback.",
                        no_args_is_help=True)
app.add_typer(stack_app, name="stack")
job_app = typer.Typer(help="The jobs: features (Flink, Java functions), validate (its checks "
                      "alone), training (Flink, the online trainer), writer (the Feast writer).",
                      no_args_is_help=True)
app.add_typer(job_app, name="job")
console = Console(stderr=True)


def _settings() -> Settings:
    return load_settings()


def main() -> None:
    """Console entry point: library errors become one clear line instead of a traceback."""
    from connectors.producer import DeliveryFailed, UnknownTopic

    try:
        app()
    except (UnknownTopic, DeliveryFailed, TimeoutError, ConnectionError) as err:
        console.print(f"[red]error:[/red] {err}")
        sys.exit(2)


def _fail(message: str, code: int = 2) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


# --- stack ------------------------------------------------------------------------------------


@stack_app.command("up")
def stack_up() -> None:
    """Start Kafka and Redis (if not running), wait until both answer, create the topics,
    register the Feast feature repo and start the Feast writer in the background."""
    from features.store import apply_repo
    from jobs.launch import run_job, running_pid
    from streamrank import stack

    settings = _settings()
    with console.status("starting the local stack"):
        state = stack.up(settings)
        apply_repo(settings)
        writer = running_pid("writer", settings)
        if writer is None:
            writer = run_job("writer", settings, detach=True).pid
    for name, what in state.items():
        console.print(f"{name}: {what}")
    console.print("feast: feature repo applied")
    console.print(f"feast writer: running (pid {writer}; `streamrank job stop writer`)")
    console.print(f"stack up (run dir {settings.run_dir.resolve()}); stop it with `streamrank stack down`")


@stack_app.command("down")
def stack_down() -> None:
    """Stop this run directory's detached jobs, then the services `stack up` started (by pid)."""
    from streamrank import stack

    for name, what in stack.down(_settings()).items():
        console.print(f"{name}: {what}")


@stack_app.command("status")
def stack_status() -> None:
    """Show what runs where: the services and the detached jobs of this run directory."""
    from streamrank import stack

    table = Table("service", "address", "pid", "answers")
    for row in stack.status(_settings()):
        table.add_row(*(str(v) for v in row.values()))
    Console().print(table)


# --- events -----------------------------------------------------------------------------------


@app.command()
def produce(
    event_type: Annotated[str, typer.Option("--type", help="impression|click|add_to_cart|favourite|purchase|search")] = "",
    user: Annotated[str, typer.Option(help="user_id")] = "",
    item: Annotated[str, typer.Option(help="item_id")] = "",
    time_ms: Annotated[Optional[int], typer.Option("--time", help="event time, ms (default now)")] = None,
    category: Annotated[Optional[str], typer.Option(help="category_id")] = None,
    request_id: Annotated[Optional[str], typer.Option(help="ties a click to its impression")] = None,
    position: Annotated[Optional[int], typer.Option(help="position in the ranked list")] = None,
    price: Annotated[Optional[float], typer.Option()] = None,
    query: Annotated[Optional[str], typer.Option()] = None,
    stdin: Annotated[bool, typer.Option("--stdin", help="read JSON events, one per line, from stdin")] = False,
) -> None:
    """Send one event (from options) or many (JSON lines on stdin) to the `events` topic.

    Every event is validated first: an invalid one is reported and not sent.
    """
    from connectors.errors import DecodeError
    from connectors.events import decoder
    from connectors.producer import EventProducer

    settings = _settings()
    if stdin:
        lines = (line.strip() for line in sys.stdin)
    else:
        if not (event_type and user and item):
            raise _fail("give --type, --user and --item (or --stdin)")
        fields = {"event_id": str(uuid.uuid4()), "event_type": event_type, "user_id": user,
                  "item_id": item, "event_time": time_ms or int(time.time() * 1000),
                  "category_id": category, "request_id": request_id, "position": position,
                  "price": price, "query": query}
        lines = iter([json.dumps({k: v for k, v in fields.items() if v is not None})])
    decode, bad = decoder(settings), 0
    with EventProducer(settings) as producer:
        for n, line in enumerate(lines, 1):
            if not line:
                continue
            try:
                event = decode(line.encode())
            except DecodeError as err:
                bad += 1
                console.print(f"[red]line {n} rejected:[/red] {err}")
                continue
            producer.send(event)
    console.print(f"sent {producer.delivered} event(s) to {producer.topic}, rejected {bad}")
    if bad:
        raise typer.Exit(1)


LogFormatOpt = Annotated[str, typer.Option("--format", help="taobao | csv | jsonl")]
MappingOpt = Annotated[Optional[Path], typer.Option(
    "--mapping", help="csv: YAML file of column mapping (user, item, event_type, time, time_unit, "
    "category, price, delimiter, header, event_names)")]
ColumnsOpt = Annotated[Optional[str], typer.Option(
    "--columns", help="csv: the mapping inline, e.g. 'user=uid,item=sku,event_type=action,"
    "time=ts,time_unit=s,header=true' (event_names via --event-names)")]
EventNamesOpt = Annotated[Optional[str], typer.Option(
    "--event-names", help="csv: the log's event names to ours, e.g. 'view=click,order=purchase'")]


def _csv_mapping(fmt: str, mapping: Path | None, columns: str | None,
                 event_names: str | None):  # noqa: ANN202 - connectors.logs.CsvMapping | None
    """The CSV column mapping from --mapping or --columns (only for --format csv)."""
    from pydantic import ValidationError

    from connectors.logs import LOG_FORMATS, CsvMapping

    if fmt not in LOG_FORMATS:
        raise _fail(f"unknown --format {fmt!r}; choose one of {', '.join(LOG_FORMATS)}")
    if fmt != "csv":
        if mapping or columns or event_names:
            raise _fail("--mapping/--columns/--event-names only apply to --format csv")
        return None
    try:
        if mapping is not None:
            return CsvMapping.from_yaml(mapping)
        if columns:
            pairs = (part.split("=", 1) for part in columns.split(",") if "=" in part)
            fields: dict[str, object] = {  # positions given as digits are column indexes
                k.strip(): int(v) if v.strip().isdigit() else v.strip() for k, v in pairs}
            if event_names:
                fields["event_names"] = event_names
            return CsvMapping.model_validate(fields)
    except (ValueError, ValidationError) as err:
        raise _fail(f"bad CSV mapping: {err}") from None
    raise _fail("--format csv needs --mapping FILE or --columns ...")


def _read_log(settings: Settings, file: Path, fmt: str, mapping: Path | None,
              columns: str | None, event_names: str | None):  # noqa: ANN202 - (iterator, report)
    """Open a log for replay, turning bad arguments into clear CLI errors."""
    from connectors.logs import read_log

    if not file.is_file():
        raise _fail(f"no such file: {file}")
    csv_mapping = _csv_mapping(fmt, mapping, columns, event_names)
    try:
        return read_log(file, fmt, csv_mapping, settings=settings)  # type: ignore[arg-type]
    except ValueError as err:
        raise _fail(str(err)) from None


def _print_report(report) -> None:  # noqa: ANN001 - connectors.logs.ParseReport
    console.print(report.summary())
    for bad in report.examples[:5]:
        console.print(f"  line {bad.line}: {bad.reason} ({bad.detail}): {bad.text!r}")


@app.command()
def replay(
    file: Annotated[Optional[Path], typer.Argument(help="the log (default: the Taobao sample in data/)")] = None,
    fmt: LogFormatOpt = "taobao",
    mapping: MappingOpt = None,
    columns: ColumnsOpt = None,
    event_names: EventNamesOpt = None,
    speed: Annotated[Optional[float], typer.Option(help="N x real time (default: as fast as possible)")] = None,
    max_speed: Annotated[bool, typer.Option("--max", help="as fast as possible (the default)")] = False,
    limit: Annotated[Optional[int], typer.Option(help="stop after N events")] = None,
    topic: Annotated[Optional[str], typer.Option(help="topic (default: the events topic)")] = None,
) -> None:
    """Stream a shopper log into Kafka in event-time order, adding impressions where it has none.

    Impressions follow the rule in features/impressions.py (the clicked item plus items sampled
    by recent popularity, tied by request_id). Bad rows are counted and reported by line.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from connectors.producer import EventProducer
    from connectors.replay import replay as run_replay
    from features.impressions import with_impressions

    if speed is not None and (max_speed or speed <= 0):
        raise _fail("--speed must be positive and cannot be combined with --max")
    settings = _settings()
    events, report = _read_log(settings, file or settings.sample_log, fmt, mapping, columns, event_names)
    _print_report(report)
    with Progress(TextColumn("replay"), BarColumn(), MofNCompleteColumn(), TextColumn("events"),
                  TimeElapsedColumn(), console=console, transient=False) as progress:
        task = progress.add_task("replay", total=None)
        with EventProducer(settings, topic=topic) as producer:
            stats = run_replay(with_impressions(events, settings), producer, speed=speed,
                               limit=limit, on_sent=lambda n: progress.advance(task, n))
    console.print(f"sent {stats.sent} events to {producer.topic} in {stats.seconds:.1f}s "
                  f"({stats.rate:,.0f}/s); {report.bad} bad rows not sent")


@app.command()
def evaluate(
    files: Annotated[Optional[list[Path]], typer.Argument(
        help="one or more logs (default: the Taobao sample in data/)")] = None,
    fmt: Annotated[str, typer.Option("--format", help=(
        "taobao | csv | jsonl, one for every log or one per log, comma-separated; or judgments "
        "(one CSV of query, title, grade[, item_id]: graded relevance, NDCG@10)"))] = "taobao",
    mapping: MappingOpt = None,
    columns: ColumnsOpt = None,
    event_names: EventNamesOpt = None,
    out: Annotated[Optional[Path], typer.Option(help="write results.json, report.md and plots here")] = None,
    models: Annotated[Optional[str], typer.Option(
        "--models", help="comma-separated, some of online, frozen, ftrl, most_popular (default: all); "
        "judgments: some of online, online_no_text, bm25, shown_order")] = None,
    relevant_grade: Annotated[Optional[float], typer.Option(
        "--relevant-grade", help="judgments: a grade at or above this is a click (default: the "
        "upper third of the file's grade range)")] = None,
) -> None:
    """Progressive validation on one or more logs: the online torch model vs River FTRL, a
    frozen copy and a most-popular baseline; with several logs, a per-log table too. With
    --format judgments, NDCG@10 on graded relevance of the online model with and without the
    text features and BM25 (docs/search.md). No Kafka, Redis or Flink needed."""
    from models.evaluate import MODELS, LogSpec, evaluate_logs
    from models.evaluate import evaluate as run_evaluate

    settings = _settings()
    paths = files or [settings.sample_log]
    formats = [f.strip() for f in fmt.split(",")]
    if len(formats) == 1:
        formats *= len(paths)
    if len(formats) != len(paths):
        raise _fail(f"--format: give one format or one per log ({len(paths)}), got {fmt!r}")
    for path in paths:
        if not path.is_file():
            raise _fail(f"no such file: {path}")
    if "judgments" in formats:
        _evaluate_judgments(paths, formats, settings, out, models, relevant_grade)
        return
    if relevant_grade is not None:
        raise _fail("--relevant-grade only applies to --format judgments")
    specs = [LogSpec(path, f, _csv_mapping(f, mapping, columns, event_names))  # type: ignore[arg-type]
             for path, f in zip(paths, formats)]
    out_dir = out or settings.run_dir / "reports" / "evaluate"
    names = MODELS if models is None else [m.strip() for m in models.split(",") if m.strip()]
    try:
        if len(specs) == 1:
            run_evaluate(specs[0].path, specs[0].fmt, settings, mapping=specs[0].mapping,
                         out_dir=out_dir, models=names)
        else:
            evaluate_logs(specs, settings, out_dir=out_dir, models=names)
    except ValueError as err:
        raise _fail(str(err)) from None
    console.print(f"report written to {out_dir}")


def _evaluate_judgments(paths: list[Path], formats: list[str], settings: Settings,
                        out: Path | None, models: str | None,
                        relevant_grade: float | None) -> None:
    """``evaluate --format judgments``: one judgments file, NDCG@10 (models.judgments)."""
    from models.judgments import JUDGMENT_MODELS, evaluate_judgments

    if len(paths) != 1 or set(formats) != {"judgments"}:
        raise _fail("--format judgments takes exactly one file")
    out_dir = out or settings.run_dir / "reports" / "evaluate-judgments"
    names = JUDGMENT_MODELS if models is None else [
        m.strip() for m in models.split(",") if m.strip()]
    try:
        evaluate_judgments(paths[0], settings, out_dir=out_dir, relevant_grade=relevant_grade,
                           models=names)
    except ValueError as err:
        raise _fail(str(err)) from None
    console.print(f"report written to {out_dir}")


@app.command()
def topics() -> None:
    """Create the topics (with their partitions) on the configured broker, if missing."""
    from connectors.admin import ensure_topics, topic_specs

    settings = _settings()
    created = ensure_topics(settings)
    for name, parts in topic_specs(settings).items():
        console.print(f"{name}: {parts} partition(s){' (created)' if name in created else ''}")


# --- catalog ----------------------------------------------------------------------------------

catalog_app = typer.Typer(help="The item catalog: item text and attributes on the compacted "
                          "`items` topic, which scorers follow for /search.", no_args_is_help=True)
app.add_typer(catalog_app, name="catalog")


@catalog_app.command("load")
def catalog_load(
    file: Annotated[Path, typer.Argument(help="JSON lines or CSV: item_id, title, optional "
                                         "description, category_id, price, brand")],
    fmt: Annotated[Optional[str], typer.Option(
        "--format", help="jsonl | csv (default: csv for a .csv file, else jsonl)")] = None,
) -> None:
    """Validate a catalog file and send each valid item, keyed by item_id, to `items`.

    An invalid row is reported with its line number and the reason, and not sent (exit
    status 1 when any was); a newer version of an item replaces the older one.
    """
    from connectors.errors import DecodeError
    from connectors.items import ItemProducer, catalog_format, read_catalog

    if not file.is_file():
        raise _fail(f"no such file: {file}")
    try:
        rows = read_catalog(file.read_text(encoding="utf-8"), catalog_format(file, fmt))
    except (ValueError, UnicodeDecodeError) as err:
        raise _fail(str(err)) from None
    bad = 0
    with ItemProducer(_settings()) as producer:
        for n, row in rows:
            if isinstance(row, DecodeError):
                bad += 1
                console.print(f"[red]{file}:{n} rejected:[/red] {row}")
                continue
            producer.send(row)
    console.print(f"sent {producer.delivered} item(s) to {producer.topic}, rejected {bad}")
    if bad:
        raise typer.Exit(1)


# --- jobs -------------------------------------------------------------------------------------

JobName = Annotated[str, typer.Argument(help="features | validate | training | writer")]


@job_app.command("run")
def job_run(
    name: JobName,
    detach: Annotated[bool, typer.Option("--detach", help="run in the background (stop with `job stop`)")] = False,
    bounded: Annotated[bool, typer.Option("--bounded", help="stop at the offsets that are latest at start")] = False,
    restore: Annotated[bool, typer.Option("--restore", help="resume from the latest retained checkpoint")] = False,
) -> None:
    """Run a job on PyFlink's embedded MiniCluster (Ctrl-C cancels it, keeping checkpoints)."""
    from jobs.launch import JOBS, run_job

    if name not in JOBS:
        raise _fail(f"unknown job {name!r}; jobs: {', '.join(sorted(JOBS))}")
    settings = _settings()
    run = run_job(name, settings, detach=detach, bounded=bounded, restore=restore)
    if detach:
        console.print(f"job {name} running in the background, pid {run.pid}, log {run.log}; "
                      f"stop it with `streamrank job stop {name}`")
    else:
        console.print(f"job {name}: {run.state}")


CLUSTER_ERRORS = (ValueError, RuntimeError, ConnectionError, TimeoutError, FileNotFoundError)
"""What the cluster verbs report as one line: a bad argument, no answer, a failed submission."""
JobManagerOpt = Annotated[Optional[str], typer.Option(
    "--jobmanager", help="HOST:PORT of the cluster's REST API (default STREAMRANK_FLINK_REST, "
    "where `cluster up` serves)")]


@job_app.command("submit")
def job_submit(
    name: JobName,
    jobmanager: JobManagerOpt = None,
    parallelism: Annotated[Optional[int], typer.Option(
        "--parallelism", min=1, help="default STREAMRANK_JOB_PARALLELISM")] = None,
    from_savepoint: Annotated[Optional[str], typer.Option(
        "--from-savepoint", help="resume from this savepoint or retained checkpoint (path or "
        "URL, as `job stop --savepoint` prints it)")] = None,
    bounded: Annotated[bool, typer.Option("--bounded", help="stop at the offsets that are latest at start")] = False,
) -> None:
    """Submit a Flink job to a session cluster (`streamrank cluster up` starts one here)."""
    from jobs.launch import JOBS, submit_job

    if name not in JOBS:
        raise _fail(f"unknown job {name!r}; jobs: {', '.join(sorted(JOBS))}")
    settings = _settings()
    address = jobmanager or settings.flink_rest
    try:
        job_id = submit_job(name, settings, address, parallelism=parallelism,
                            from_savepoint=from_savepoint, bounded=bounded)
    except CLUSTER_ERRORS as err:
        raise _fail(str(err)) from None
    console.print(f"submitted {name} to {address}: Flink job {job_id} "
                  f"(http://{address}/#/job/running/{job_id}/overview)")
    print(job_id)


@job_app.command("stop")
def job_stop(
    name: JobName,
    savepoint: Annotated[bool, typer.Option(
        "--savepoint", help="stop with a savepoint (through Flink's REST API) and print its path")] = False,
    jobmanager: Annotated[Optional[str], typer.Option(
        "--jobmanager", help="HOST:PORT of the cluster that runs it (default: this run "
        "directory's detached run, else STREAMRANK_FLINK_REST)")] = None,
) -> None:
    """Stop a job: a detached run (cancelled; its checkpoints kept for `--restore`), a job on a
    cluster (`--jobmanager`: cancelled, checkpoints kept), or either with a savepoint to resume
    from (`job submit NAME --from-savepoint PATH`)."""
    from jobs.launch import cancel_job, stop_job, stop_with_savepoint

    settings = _settings()
    try:
        if savepoint:
            done = stop_with_savepoint(name, settings, jobmanager)
            console.print(f"job {name} stopped with a savepoint in {done.seconds:.1f} s; resume "
                          f"with `streamrank job submit {name} --from-savepoint {done.location}`")
            print(done.location)
            return
        if jobmanager:
            console.print(f"job {name} (Flink job {cancel_job(name, jobmanager)}) cancelled")
            return
    except LookupError as err:
        raise _fail(str(err), code=1) from None
    except CLUSTER_ERRORS as err:
        raise _fail(str(err)) from None
    if not stop_job(name, settings):
        raise _fail(f"job {name} is not running", code=1)
    console.print(f"job {name} stopped")


@job_app.command("list")
def job_list(jobmanager: Annotated[Optional[str], typer.Option(
        "--jobmanager", help="HOST:PORT: list that cluster's jobs instead")] = None) -> None:
    """Every job with its detached run's pid and its Flink web UI (counters are Flink metrics
    there); with --jobmanager, the jobs of that cluster."""
    from jobs.launch import cluster_jobs, list_jobs

    if jobmanager:
        try:
            jobs = cluster_jobs(jobmanager)
        except ConnectionError as err:
            raise _fail(str(err)) from None
        rows = Table(box=None)
        for column in ("Flink job id", "name", "state", "parallelism", "started"):
            rows.add_column(column, no_wrap=True)
        for flink_job in jobs:
            started = time.strftime("%Y-%m-%d %H:%M:%S",
                                    time.localtime(flink_job.started_ms / 1000))
            rows.add_row(flink_job.job_id, flink_job.name, flink_job.state,
                         str(flink_job.parallelism), started)
        Console(width=max(Console().width, 110)).print(rows)
        return
    table = Table("job", "pid", "web UI / REST", box=None)
    for job in list_jobs(_settings()):
        table.add_row(job.name, str(job.pid or "-"),
                      f"http://{job.rest}" if job.rest else "-")
    console.print(table)


# --- cluster ----------------------------------------------------------------------------------

cluster_app = typer.Typer(help="A local standalone Flink session cluster (JobManager and "
                          "TaskManagers on loopback) to submit the jobs to.", no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")


def _print_cluster(status) -> None:  # noqa: ANN001 - streamrank.cluster.ClusterStatus
    overview = status.overview or {}
    console.print(f"REST API and web UI: http://{status.rest} (`--jobmanager {status.rest}`)"
                  + ("" if status.overview else " [red]not answering[/red]"))
    console.print(f"JobManager: {f'pid {status.jobmanager}' if status.jobmanager else 'not running'}")
    console.print(f"TaskManagers: {len(status.taskmanagers)} running "
                  f"(pids {' '.join(map(str, status.taskmanagers)) or '-'}), "
                  f"{overview.get('taskmanagers', 0)} registered")
    if status.overview:
        console.print(f"slots: {overview['slots-available']} free of {overview['slots-total']}; "
                      f"jobs running: {overview['jobs-running']}; Flink {overview['flink-version']}")


@cluster_app.command("up")
def cluster_up() -> None:
    """Start the cluster (STREAMRANK_CLUSTER_TASKMANAGERS TaskManagers, STREAMRANK_CLUSTER_SLOTS
    slots each; REST on STREAMRANK_FLINK_REST) unless it runs; wait until it is ready. Prints
    its REST address on standard output."""
    from streamrank import cluster

    settings = _settings()
    started_at = time.monotonic()
    try:
        with console.status("starting the Flink cluster"):
            status, started = cluster.up(settings)
    except (RuntimeError, TimeoutError) as err:
        raise _fail(str(err)) from None
    console.print(f"cluster {'started' if started else 'already running'}"
                  + (f" in {time.monotonic() - started_at:.0f} s" if started else "")
                  + f" (logs {cluster.home(settings) / 'log'}); stop it with `streamrank cluster down`")
    _print_cluster(status)
    print(status.rest)


@cluster_app.command("down")
def cluster_down() -> None:
    """Stop the cluster's JobManager and TaskManagers (by their recorded pids); its jobs end."""
    from streamrank import cluster

    stopped = cluster.down(_settings())
    console.print(f"cluster stopped (pids {' '.join(map(str, stopped))})" if stopped
                  else "cluster not running")


@cluster_app.command("status")
def cluster_status() -> None:
    """The cluster's REST address (what `--jobmanager` takes; alone on standard output), its
    daemons, slots and jobs. Exits 1 when it does not run."""
    from streamrank import cluster

    status = cluster.status(_settings())
    _print_cluster(status)
    if status.jobmanager is None:
        raise typer.Exit(1)
    print(status.rest)


@cluster_app.command("run")
def cluster_run(role: Annotated[str, typer.Argument(help="jobmanager | taskmanager")]) -> None:
    """Run one daemon of the cluster in the foreground, on every interface (a container's
    JobManager or TaskManager; it finds the JobManager by STREAMRANK_FLINK_REST's host)."""
    from streamrank import cluster

    if role not in cluster.DAEMONS:
        raise _fail(f"unknown role {role!r}; roles: {', '.join(cluster.DAEMONS)}")
    cluster.run_foreground(_settings(), role)  # type: ignore[arg-type]


# --- scorer and model controls -----------------------------------------------------------------

model_app = typer.Typer(help="Served model versions: status, pin, unpin, rollback.",
                        no_args_is_help=True)
app.add_typer(model_app, name="model")
ScorerOpt = Annotated[Optional[list[str]], typer.Option(
    "--scorer", help="scorer URL (repeatable; default: every scorer registered in the run dir)")]


@app.command()
def serve(
    port: Annotated[Optional[int], typer.Option(help="port (default STREAMRANK_SCORER_PORT)")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto | cpu | cuda (default STREAMRANK_DEVICE)")] = None,
    workers: Annotated[Optional[int], typer.Option(
        min=1, help="scorer processes behind the port (default STREAMRANK_SCORER_WORKERS; 0 there: one per core)")] = None,
) -> None:
    """Run a scorer: POST /rank, /healthz, /metrics, /admin/...; follows model.deltas."""
    import os

    from models.scorer.app import resolve_device
    from models.scorer.app import serve as run_scorer

    settings = _settings()
    try:
        resolve_device(device or settings.device)
    except ValueError as err:
        raise _fail(str(err)) from None
    port = settings.scorer_port if port is None else port
    workers = workers or settings.scorer_workers or len(os.sched_getaffinity(0))
    console.print(f"scorer on http://{settings.scorer_host}:{port} (device {device or settings.device}, "
                  f"{workers} worker{'s' if workers > 1 else ''})")
    run_scorer(settings, port=port, device=device or settings.device, host=settings.scorer_host,
               workers=workers)


def _scorers(settings: Settings, urls: list[str] | None) -> list[str]:
    from models.scorer.registry import registered

    found = urls or registered(settings)
    if not found:
        raise _fail(f"no scorer registered under {settings.run_dir / 'scorers'}; give --scorer URL")
    return found


def _admin(action: str, urls: list[str] | None, body: dict | None = None) -> None:
    import httpx

    from models.scorer.registry import admin_call

    settings = _settings()
    token = settings.admin_token.get_secret_value() if settings.admin_token else None
    failed = 0
    for url in _scorers(settings, urls):
        try:
            code, answer = admin_call(url, action, token, body)
        except httpx.HTTPError as err:
            code, answer = 0, {"detail": str(err)}
        if code == 200:
            console.print(f"{url}: serves version {answer['version']} "
                          f"(pinned: {answer['pinned']}, followed: {answer['followed_version']})")
        else:
            failed += 1
            console.print(f"[red]{url}: {code or 'unreachable'}[/red] {answer.get('detail')}")
    if failed:
        raise typer.Exit(1)


@model_app.command("pin")
def model_pin(version: Annotated[int, typer.Argument(help="the version to serve")],
              scorer: ScorerOpt = None) -> None:
    """Serve VERSION on the scorers (they keep following; `model unpin` resumes)."""
    _admin("pin", scorer, {"version": version})


@model_app.command("unpin")
def model_unpin(scorer: ScorerOpt = None) -> None:
    """Serve the newest followed version again."""
    _admin("unpin", scorer)


@model_app.command("rollback")
def model_rollback(scorer: ScorerOpt = None) -> None:
    """Pin the version each scorer served before its current one."""
    _admin("rollback", scorer)


@model_app.command("status")
def model_status(scorer: ScorerOpt = None) -> None:
    """Each scorer with the version it serves, the one it follows, pin and guard."""
    import httpx

    from models.scorer.registry import scorer_status

    table = Table("scorer", "behind", "serves", "follows", "newest seen", "pinned", "guard",
                  "device")
    for url in _scorers(_settings(), scorer):
        try:
            st = scorer_status(url)
        except httpx.HTTPError as err:
            table.add_row(url, "", "unreachable", "", "", "", "", str(err)[:40])
            continue
        table.add_row(url, "" if st.get("serves", url) == url else st["serves"],
                      str(st["version"]), str(st["followed_version"]),
                      str(st["latest_seen_version"]), str(st["pinned"] or "-"),
                      st["guard_reason"] or "ok", st["device"])
    Console().print(table)


# --- the live loop -----------------------------------------------------------------------------


@app.command()
def up(scorers: Annotated[int, typer.Option(help="scorers to run, on ports from "
                                             "STREAMRANK_SCORER_PORT up")] = 2) -> None:
    """The whole loop, live, in the background: stack, features job, Feast writer, training
    job, scorers, and a supervisor that restarts whatever dies. Stop it with `streamrank down`."""
    from streamrank import live

    settings = _settings()
    state = live.up(settings, scorers)
    for part, what in state.items():
        console.print(f"{part}: {what}")
    port = settings.scorer_port
    console.print(f"the loop runs; watch it with `streamrank status`, feed it with "
                  f"`streamrank simulate`; rank with\n  curl -s -X POST "
                  f"http://127.0.0.1:{port}/rank -H 'content-type: application/json' "
                  f"-d '{{\"user_id\": \"1\", \"items\": [\"2268318\", \"2333346\"]}}'")


@app.command()
def down() -> None:
    """Stop everything `streamrank up` (or `stack up`) started in this run directory, by pid."""
    from streamrank import live

    for part, what in live.down(_settings()).items():
        console.print(f"{part}: {what}")


@app.command()
def status(
    once: Annotated[bool, typer.Option("--once", help="print once and exit")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON (with --once), for scripts")] = False,
    every: Annotated[float, typer.Option(help="seconds between refreshes")] = 2.0,
) -> None:
    """One live screen of the loop: services and jobs, topics and lag, the model, the scorers,
    dead letters. Ctrl-C ends it."""
    from rich.live import Live

    from streamrank.status import collect, render

    settings = _settings()
    if once or as_json:
        facts = collect(settings)
        if as_json:
            print(json.dumps(facts, default=str))
        else:
            Console(width=max(Console().width, 120)).print(render(facts))
        return
    with Live(render(collect(settings)), console=Console(), auto_refresh=False) as screen:
        try:
            while True:
                time.sleep(every)
                screen.update(render(collect(settings)), refresh=True)
        except KeyboardInterrupt:
            pass


@app.command()
def simulate(
    rate: Annotated[float, typer.Option(help="ranking requests per second")] = 10.0,
    duration: Annotated[Optional[float], typer.Option(help="seconds (default: until Ctrl-C)")] = None,
    drift_at: Annotated[Optional[float], typer.Option(help="seconds in, the shoppers' tastes rotate")] = None,
    frozen_share: Annotated[float, typer.Option(help="share of shoppers ranked by a scorer "
                                                 "pinned to an early version")] = 0.3,
    seed: Annotated[int, typer.Option()] = 7,
    report: Annotated[Optional[Path], typer.Option(help="write the run's report here")] = None,
) -> None:
    """Simulated shoppers close the loop: they ask the scorers to rank, click and buy by taste
    and position, and their events go back into `events` (see the README, "The live loop")."""
    from streamrank.loop_report import write_report
    from streamrank.simulate import Simulation, SimulationOptions

    if rate <= 0 or not 0 <= frozen_share < 1:
        raise _fail("--rate must be > 0 and --frozen-share in [0, 1)")
    settings = _settings()
    try:
        sim = Simulation(settings, SimulationOptions(rate=rate, duration_s=duration,
                                                     drift_at_s=drift_at,
                                                     frozen_share=frozen_share, seed=seed))
    except RuntimeError as err:
        raise _fail(str(err)) from None
    console.print(f"simulating at {rate:g} requests/s against {', '.join(sim.scorers)}"
                  f"{'' if sim.frozen_url is None else f' (frozen arm: {sim.frozen_url})'}; "
                  "Ctrl-C ends it")
    last = [time.monotonic()]

    def progress(rec) -> None:  # noqa: ANN001 - streamrank.simulate.Recorder
        if time.monotonic() - last[0] >= 10:
            last[0] = time.monotonic()
            console.print(f"{len(rec.rankings):,} rankings, {rec.events_sent:,} events, newest "
                          f"version {max(rec.versions, default=0)}, errors {len(rec.errors)}")

    rec = sim.run(on_tick=progress)
    out = report or settings.run_dir / "reports" / "simulate"
    console.print(f"report: {write_report(rec, out)}")


# --- demo -------------------------------------------------------------------------------------


@app.command()
def demo(
    out: Annotated[Optional[Path], typer.Option(help="where the report goes")] = None,
    rows: Annotated[int, typer.Option(help="rows of the Taobao sample replayed first")] = 10_000,
    seconds: Annotated[float, typer.Option(help="how long the simulated shoppers run")] = 180.0,
) -> None:
    """The live loop end to end on local defaults: `up`, the sample replayed, simulated
    shoppers closing the loop (with a drift and a frozen arm), the report, `down`."""
    from streamrank.demo import run_demo

    settings = _settings()
    run_demo(settings, out or settings.run_dir / "reports" / "demo", rows, seconds,
             Console(width=max(Console().width, 120)))
