"""Hostile events at scale through the real ``features`` job: records drawn by hypothesis
(:mod:`tests.hostile`: wrong types, missing fields, huge strings, NaN and infinities, bad times,
invalid UTF-8, deep nesting, garbage, plus re-sent valid events) go straight onto ``events``;
the job must dead-letter each bad one with the reference's reason and original bytes, in order,
and turn the rest into exactly the reference's rows and examples — none lost, no crash. It
prints how many records of each kind were tried and what became of them (``pytest -s``)."""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from rich.console import Console
from rich.table import Table

from config import Settings
from connectors.errors import DecodeError
from connectors.events import decoder
from tests.hostile import T0, hostile_records
from tests.integration.child_jobs import ChildJob
from jobs.features import JOB
from tests.integration.test_features_job import (  # noqa: F401 - fast_settings is a fixture
    Log,
    assert_outputs_equal,
    fast_settings,
    produce,
    read_topic,
    reference,
)

pytestmark = pytest.mark.integration
RECORDS = 800
"""Records hypothesis draws (plus about a tenth of the valid ones sent twice)."""


def draw_records(n: int) -> list[tuple[str, bytes]]:
    """``n`` tagged records, as hypothesis generates them."""
    drawn: list[tuple[str, bytes]] = []

    @settings(max_examples=n, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(hostile_records())
    def collect(tagged: tuple[str, bytes]) -> None:
        drawn.append(tagged)

    collect()
    return drawn


def labelled_pairs(n: int) -> list[tuple[str, bytes]]:
    """``n`` impressions each clicked half a second later, so that some examples are
    positive among the hostile ones."""
    pairs: list[tuple[str, bytes]] = []
    for i in range(n):
        shown = {"event_id": f"pair-{i}-i", "event_type": "impression", "user_id": f"h-pair{i}",
                 "item_id": f"pair{i}", "event_time": T0 + 1_000 * i, "request_id": f"rq{i}",
                 "position": 0}
        clicked = shown | {"event_id": f"pair-{i}-c", "event_type": "click",
                           "event_time": T0 + 1_000 * i + 500}
        pairs += [("labelled", json.dumps(e).encode()) for e in (shown, clicked)]
    return pairs


def test_hostile_records_are_dead_lettered_or_counted_as_the_reference_says(
        fast_settings: Settings, child_jobs: Callable[..., ChildJob]) -> None:  # noqa: F811
    tagged = draw_records(RECORDS)
    rng = random.Random(5)
    tagged += [("resent", raw) for kind, raw in tagged if kind == "valid" and rng.random() < 0.1]
    tagged = labelled_pairs(5) + tagged
    # As a producer stamps them: a valid event with its event time, anything else with the
    # earliest time (so that it moves no watermark; see tests/golden/generate.py).
    # An event_id names one event (the contract): a valid record reusing another item's
    # event_id is left out, since its training example would share that example_id.
    decode, outcome, log = decoder(fast_settings), Counter[tuple[str, str]](), Log()
    item_of: dict[str, str] = {}
    for kind, raw in tagged:
        try:
            valid = decode(raw)
            if item_of.setdefault(valid.event_id, valid.item_id) != valid.item_id:
                continue
            stamp = valid.event_time
            outcome[kind, "accepted"] += 1
        except DecodeError as err:
            stamp = T0
            outcome[kind, err.reason] += 1
        log.records.append((raw, b"hostile", stamp))
    produce(fast_settings, log)
    child_jobs(JOB, fast_settings, "--bounded").finish()
    dead = [json.loads(m.value()) for m in read_topic(fast_settings, fast_settings.topic_dlq)]
    want = reference(log, fast_settings).dead_letters
    differ = [(i, d["reason"], d["detail"], d["original"][:120], w)
              for i, (d, w) in enumerate(zip(dead, want)) if d["reason"] != w[0]]
    assert len(dead) == len(want) and not differ, (len(dead), len(want), differ[:5])
    assert_outputs_equal(fast_settings, log)  # and the rows and examples = the reference's

    report = Table(title=f"{len(tagged)} hostile records through the features job")
    for column in ("kind", "tried", "outcome (as the job did it)"):
        report.add_column(column)
    for kind in sorted({k for k, _ in outcome}):
        report.add_row(kind, str(sum(n for (k, _), n in outcome.items() if k == kind)),
                       json.dumps({o: n for (k, o), n in sorted(outcome.items()) if k == kind}))
    Console(width=140).print(report)
    assert len({k for k, _ in tagged}) >= 10  # every kind was tried
