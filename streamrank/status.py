"""``streamrank status``: one screen of the running loop, from what each part exposes.

It reads the services (are they answering), the jobs (pid, Flink state and web UI address from
each job's REST API), Kafka (records per topic, each group's lag), the supervisor's record
(restarts), the trainer's status (examples/s, published version, rolling metrics, drift), the
scorers (``/status`` and ``/metrics``: the version each serves, requests, latency) and the
dead-letter topic (counts by reason of its newest records). It works on a stack started by hand
too: whatever is not there shows as absent.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import httpx

from config import Settings

DEAD_LETTERS_READ = 500
"""How many of the newest dead letters per partition are read to count reasons."""


def _safe(f: Any, *args: Any) -> Any:
    try:
        return f(*args)
    except Exception as err:  # noqa: BLE001 - a part that is down shows as its error
        return {"error": f"{type(err).__name__}: {err}"[:200]}


def _topics(settings: Settings) -> dict[str, Any]:
    from connectors.admin import consumer_lag, end_offsets
    from features.writer_service import GROUP as WRITER_GROUP
    from jobs.flink import group_id

    groups = {settings.topic_events: [group_id("features")],
              settings.topic_feature_rows: [WRITER_GROUP],
              settings.topic_examples: [group_id("training")]}
    out: dict[str, Any] = {}
    for topic in (settings.topic_events, settings.topic_feature_rows, settings.topic_examples,
                  settings.topic_deltas, settings.topic_dlq):
        out[topic] = {"records": sum(end_offsets(settings, topic).values()),
                      "lag": {g: consumer_lag(settings, topic, g) for g in groups.get(topic, [])}}
    return out


def _dead_letter_reasons(settings: Settings) -> dict[str, int]:
    from confluent_kafka import Consumer, TopicPartition

    from connectors.kafka_config import consumer_config

    consumer = Consumer(consumer_config(settings, "streamrank-status",
                                        **{"enable.auto.commit": False}))
    try:
        meta = consumer.list_topics(settings.topic_dlq, timeout=5).topics[settings.topic_dlq]
        parts = []
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(settings.topic_dlq, p), timeout=5)
            if high > low:
                parts.append((TopicPartition(settings.topic_dlq, p, max(low, high - DEAD_LETTERS_READ)), high))
        consumer.assign([tp for tp, _ in parts])
        want = sum(high - tp.offset for tp, high in parts)
        reasons: Counter[str] = Counter()
        deadline = time.monotonic() + 5
        while want > 0 and time.monotonic() < deadline:
            for msg in consumer.consume(min(want, 500), 0.5):
                if msg.error() is None:
                    want -= 1
                    try:
                        reasons[str(json.loads(msg.value()).get("reason", "?"))] += 1
                    except (ValueError, AttributeError):
                        reasons["unreadable"] += 1
        return dict(reasons.most_common())
    finally:
        consumer.close()


def _histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """The ``q`` quantile (seconds) of a cumulative Prometheus histogram's ``(le, count)``.

    >>> _histogram_quantile([(0.01, 50.0), (0.1, 99.0), (float("inf"), 100.0)], 0.5)
    0.01
    """
    total = buckets[-1][1] if buckets else 0
    if total <= 0:
        return float("nan")
    for le, count in buckets:
        if count >= q * total:
            return le
    return float("inf")


def _scorer(url: str) -> dict[str, Any]:
    from prometheus_client.parser import text_string_to_metric_families

    status = httpx.get(f"{url}/status", timeout=2).json()
    text = httpx.get(f"{url}/metrics", timeout=2).text
    requests = 0.0
    buckets: list[tuple[float, float]] = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "streamrank_requests_total" and s.labels.get("endpoint") == "rank":
                requests += s.value
            elif s.name == "streamrank_request_seconds_bucket":
                buckets.append((float(s.labels["le"]), s.value))
    buckets.sort()
    return {"version": status.get("version"), "pinned": status.get("pinned"),
            "watermark_ms": status.get("watermark_ms"), "rank_requests": int(requests),
            "p50_ms": _histogram_quantile(buckets, 0.5) * 1000,
            "p99_ms": _histogram_quantile(buckets, 0.99) * 1000}


def _jobs(settings: Settings) -> dict[str, Any]:
    from jobs.launch import job_name, list_jobs
    from jobs.metrics import FlinkRest

    out: dict[str, Any] = {}
    for entry in list_jobs(settings):
        row: dict[str, Any] = {"pid": entry.pid, "web_ui": f"http://{entry.rest}" if entry.rest else ""}
        if entry.rest and entry.pid is not None:
            jobs = _safe(lambda: FlinkRest(entry.rest).jobs())
            if isinstance(jobs, list):
                states = [j.get("state") for j in jobs if j.get("name") == job_name(entry.name)]
                row["state"] = states[-1] if states else "—"
        elif entry.pid is not None:
            row["state"] = "RUNNING"  # a plain process (the writer)
        else:
            row["state"] = "not running"
        out[entry.name] = row
    return out


def collect(settings: Settings) -> dict[str, Any]:
    """Everything ``status`` shows, as one JSON-able dict."""
    from connectors.snapshot_store import SnapshotStore
    from jobs.training import status_path
    from models.scorer.registry import registered
    from streamrank import live, stack

    trainer = _safe(lambda: json.loads(status_path(settings).read_text()))
    return {
        "time_ms": time.time_ns() // 1_000_000,
        "services": _safe(stack.status, settings),
        "supervisor": live.read_state(settings),
        "jobs": _safe(_jobs, settings),
        "topics": _safe(_topics, settings),
        "dead_letters": _safe(_dead_letter_reasons, settings),
        "trainer": trainer,
        "published_version": _safe(lambda: SnapshotStore.from_settings(settings).published_version()),
        "scorers": {url: _safe(_scorer, url) for url in registered(settings)},
    }


def render(facts: dict[str, Any]) -> Any:
    """A rich renderable of :func:`collect`'s facts."""
    from rich.console import Group
    from rich.table import Table

    def table(title: str, *columns: str) -> Table:
        return Table(*columns, title=title, title_justify="left", expand=False)

    services = table("services and jobs", "part", "pid", "state", "address / web UI", "restarts")
    supervised = facts.get("supervisor") or {}
    for row in facts["services"] if isinstance(facts["services"], list) else []:
        if str(row["service"]).startswith("job "):
            continue
        part = supervised.get("stack", {})
        services.add_row(str(row["service"]), str(row["pid"] or "—"),
                         "answers" if row["answers"] else "DOWN", str(row["address"]),
                         str(part.get("restarts", "")))
    for name, job in (facts["jobs"] if "error" not in facts["jobs"] else {}).items():
        services.add_row(f"job {name}", str(job["pid"] or "—"), str(job.get("state", "")),
                         job["web_ui"], str(supervised.get(f"job {name}", {}).get("restarts", "")))
    topics = table("topics", "topic", "records", "lag per group")
    for topic, t in (facts["topics"] if "error" not in facts["topics"] else {}).items():
        topics.add_row(topic, f"{t['records']:,}",
                       ", ".join(f"{g}: {'—' if v is None else f'{v:,}'}" for g, v in t["lag"].items()))
    trainer = facts["trainer"] if "error" not in facts["trainer"] else {}
    metrics = trainer.get("metrics", {})
    model = table("model", "published", "trainer version", "examples", "examples/s",
                  "rolling AUC / log loss (click)", "drift")
    auc = next((v for k, v in metrics.items() if k.startswith("click") and "auc" in k), None)
    loss = next((v for k, v in metrics.items() if k.startswith("click") and "loss" in k), None)
    model.add_row(str(facts["published_version"]), str(trainer.get("version", "—")),
                  f"{trainer.get('examples', 0):,}", f"{trainer.get('examples_per_s', 0):.0f}",
                  "—" if auc is None else f"{auc:.4f} / {loss:.4f}",
                  "ALARM" if trainer.get("drift_detected") else "none")
    scorers = table("scorers", "url", "version", "pinned", "/rank requests", "p50 ms", "p99 ms")
    for url, s in facts["scorers"].items():
        if "error" in s:
            scorers.add_row(url, "DOWN", "", "", "", "")
            continue
        scorers.add_row(url, str(s["version"]), str(s["pinned"] or "—"), f"{s['rank_requests']:,}",
                        f"{s['p50_ms']:.1f}", f"{s['p99_ms']:.1f}")
    dead = table("dead letters (newest, by reason)", "reason", "count")
    for reason, n in (facts["dead_letters"] if "error" not in facts["dead_letters"] else {}).items():
        dead.add_row(reason, f"{n:,}")
    return Group(services, topics, model, scorers, dead)
