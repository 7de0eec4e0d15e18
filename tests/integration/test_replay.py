"""Replaying the shared Taobao sample through the CLI delivers every valid row to Kafka."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from confluent_kafka import Consumer
from typer.testing import CliRunner

from config import Settings
from connectors.admin import end_offsets
from streamrank.cli import app

pytestmark = pytest.mark.integration
SAMPLE = Settings().sample_log


def _consume_all(settings: Settings, topic: str, expected: int) -> list[dict]:
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"t-{topic}",
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    out: list[dict] = []
    idle = 0
    while len(out) < expected and idle < 20:
        batch = consumer.consume(10_000, timeout=0.5)
        idle = 0 if batch else idle + 1
        out.extend(json.loads(m.value()) for m in batch if m.error() is None)
    consumer.close()
    return out


def test_replay_delivers_every_row(topics: Settings) -> None:
    rows = [line.split(",") for line in SAMPLE.read_text().splitlines()]
    valid = [r for r in rows if int(r[4]) > 946_684_800]  # the sample's one 1970 row is bad input
    assert len(rows) - len(valid) == 1

    result = CliRunner().invoke(app, ["replay", str(SAMPLE), "--format", "taobao"],
                                env={"STREAMRANK_TOPIC_EVENTS": topics.topic_events})
    assert result.exit_code == 0, result.output
    assert "1 bad" in result.output and "line " in result.output

    size = sum(end_offsets(topics, topics.topic_events).values())
    events = _consume_all(topics, topics.topic_events, size)
    by_type = Counter(e["event_type"] for e in events)
    behaviours = Counter(r[3] for r in valid)
    assert by_type["click"] == behaviours["pv"]
    assert by_type["add_to_cart"] == behaviours["cart"]
    assert by_type["favourite"] == behaviours["fav"]
    assert by_type["purchase"] == behaviours["buy"]
    assert sum(by_type.values()) - by_type["impression"] == len(valid)
    # every click is tied to one of its impressions, and keyed events keep event-time order
    imps = {(e["request_id"], e["item_id"]) for e in events if e["event_type"] == "impression"}
    assert all((e["request_id"], e["item_id"]) in imps for e in events if e["event_type"] == "click")
    assert f"sent {len(events)} events" in result.output
