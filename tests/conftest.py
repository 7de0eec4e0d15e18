"""Shared fixtures: the live local stack for integration tests, torch kept to one thread."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from config import Settings, load_settings
from streamrank import stack


@pytest.fixture(scope="session")
def live_stack() -> Iterator[Settings]:
    """The local stack (Kafka + Redis) on the default ports.

    Started for the test session when it is not already running, and stopped again afterwards
    only if this test run started it.
    """
    settings = load_settings()
    started = stack.up(settings)
    yield settings
    if any(state == "started" for state in started.values()):
        stack.down(settings)


@pytest.fixture
def topics(live_stack: Settings) -> Iterator[Settings]:
    """Settings whose topics are fresh, uniquely named ones (deleted afterwards)."""
    from connectors.admin import delete_topics, ensure_topics, topic_specs

    tag = uuid.uuid4().hex[:8]
    settings = live_stack.model_copy(update={
        "topic_events": f"events-{tag}", "topic_dlq": f"events.dlq-{tag}",
        "topic_examples": f"training.examples-{tag}", "topic_deltas": f"model.deltas-{tag}",
        "topic_feature_rows": f"features.rows-{tag}", "topic_items": f"items-{tag}",
    })
    ensure_topics(settings)
    yield settings
    delete_topics(settings, list(topic_specs(settings)))
