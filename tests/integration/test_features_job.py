"""The features job end to end: real Kafka, a real Flink MiniCluster, Feast on the real Redis.

A slice of the Taobao sample goes through the impression rule into a fresh events topic; the
job runs as ``python -m jobs run features`` in a child process. What it wrote to Feast is
checked against decayed counters summed directly with pandas over the same events (all but the
synthetic impressions, which feed no feature), and its training examples against
:func:`features.examples.build_examples` (the pure reference), exactly.
The Feast online store is a Redis database of its own (``REDIS_DB``), so other runs that write
the same Taobao keys do not interfere.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from itertools import islice
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from confluent_kafka import Consumer

from connectors.events import Event
from connectors.examples import TrainingExample, decode_example
from connectors.kafka_config import consumer_config
from connectors.logs import read_log
from connectors.producer import EventProducer
from features.examples import build_examples
from features.impressions import with_impressions
from features.rows import ITEM_VIEW, USER_CATEGORY_VIEW, USER_VIEW
from features.state import DAY_MS, HOUR_MS
from features.store import apply_repo
from jobs.feast_writer import run_writer
from jobs.runtime import read_stats
from jobs.features_job import JOB
from streamrank.config import Settings
from tests.integration.child_jobs import ChildJob
from tests.shop_logs import spanning_log

pytestmark = pytest.mark.integration

SAMPLE_ROWS = 1_000
RESTORE_ROWS = 2_000
REDIS_DB = 9
KEYS_CHECKED = 50

COUNTERS: dict[str, list[tuple[str, str, int]]] = {
    # view: (feature, event type counted, half-life)
    USER_VIEW: [("u_clicks_1h", "click", HOUR_MS), ("u_clicks_24h", "click", DAY_MS),
                ("u_carts_24h", "add_to_cart", DAY_MS), ("u_purchases_24h", "purchase", DAY_MS),
                ("u_impressions_24h", "impression", DAY_MS)],
    ITEM_VIEW: [("i_impressions_24h", "impression", DAY_MS), ("i_clicks_1h", "click", HOUR_MS),
                ("i_clicks_24h", "click", DAY_MS), ("i_purchases_24h", "purchase", DAY_MS)],
    USER_CATEGORY_VIEW: [("uc_clicks_24h", "click", DAY_MS),
                         ("uc_purchases_24h", "purchase", DAY_MS)],
}
KEYS = {USER_VIEW: ["user_id"], ITEM_VIEW: ["item_id"],
        USER_CATEGORY_VIEW: ["user_id", "category_id"]}


def sample_events(rows: int, tmp: Path) -> list[Event]:
    """The first ``rows`` rows of the Taobao sample with the impression rule applied."""
    settings = Settings()
    head = tmp / "head.csv"
    with settings.sample_log.open() as src:
        head.write_text("".join(islice(src, rows)))
    raw, _ = read_log(head, "taobao", settings=settings)
    return list(with_impressions(raw, settings))


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> list[Event]:
    return sample_events(SAMPLE_ROWS, tmp_path_factory.mktemp("sample"))


@pytest.fixture
def job_settings(topics: Settings, tmp_path: Path) -> Settings:
    """Fresh topics, a private run directory (checkpoints, Feast registry) and Redis db."""
    redis = topics.redis_url.rsplit("/", 1)[0] + f"/{REDIS_DB}"
    settings = topics.model_copy(update={"run_dir": tmp_path / "run", "redis_url": redis,
                                         "checkpoint_interval_ms": 1_000})
    apply_repo(settings)
    return settings


def produce(settings: Settings, events: list[Event]) -> None:
    with EventProducer(settings) as producer:
        producer.send_many(events)


def frame(events: list[Event]) -> pd.DataFrame:
    """The events that feed feature state, as columns."""
    events = [e for e in events if not e.synthetic]
    return pd.DataFrame({"user_id": [e.user_id for e in events],
                         "item_id": [e.item_id for e in events],
                         "category_id": [e.category_id for e in events],
                         "kind": [e.event_type for e in events],
                         "t": np.array([e.event_time for e in events], dtype=np.int64)})


def expected_counters(df: pd.DataFrame, view: str, keys: list[tuple]) -> dict[tuple, dict]:
    """Per key: each counter as ``sum(2 ** (-(t_last - t_i) / h))`` over the key's events,
    read at the key's last event time (what the job's row for the key holds)."""
    cols = KEYS[view]
    rows = df.dropna(subset=cols)
    grouped = rows.groupby(cols)
    t_last = grouped["t"].transform("max")
    out: dict[tuple, dict] = {}
    values = {}
    for feature, kind, half_life in COUNTERS[view]:
        w = np.where(rows["kind"] == kind, np.exp2(-(t_last - rows["t"]) / half_life), 0.0)
        values[feature] = pd.Series(w, index=rows.index).groupby([rows[c] for c in cols]).sum()
    for key in keys:
        k = key if len(cols) > 1 else key[0]
        out[key] = {f: float(s[k]) for f, s in values.items()}
    return out


def sample_keys(df: pd.DataFrame, view: str) -> list[tuple]:
    """``KEYS_CHECKED`` keys of ``view``: half the busiest, half spread over the rest."""
    counts = df.dropna(subset=KEYS[view]).groupby(KEYS[view]).size().sort_values(
        ascending=False, kind="stable")
    keys = [k if isinstance(k, tuple) else (k,) for k in counts.index]
    half = KEYS_CHECKED // 2
    rest = keys[half:]
    picked = keys[:half] + rest[::max(1, len(rest) // half)][:half]
    assert counts.iloc[0] >= 2  # keys with several events are among them
    return picked


def online_counters(settings: Settings, view: str, keys: list[tuple]) -> dict[tuple, dict]:
    """The counters stored for ``keys`` in Feast's online store (None where absent)."""
    from features.store import open_store

    names = [f for f, _, _ in COUNTERS[view]]
    rows = [dict(zip(KEYS[view], key)) for key in keys]
    got = open_store(settings).get_online_features(
        features=[f"{view}:{n}" for n in names], entity_rows=rows).to_dict()
    return {key: {n: got[n][i] for n in names} for i, key in enumerate(keys)}


def assert_feast_matches(settings: Settings, events: list[Event]) -> None:
    df = frame(events)
    for view in COUNTERS:
        keys = sample_keys(df, view)
        want = expected_counters(df, view, keys)
        got = online_counters(settings, view, keys)
        for key in keys:
            for name, value in want[key].items():
                assert got[key][name] is not None, (view, key, name)
                assert math.isclose(got[key][name], value, rel_tol=1e-9, abs_tol=1e-12), (
                    view, key, name, got[key][name], value)


def read_examples(settings: Settings, n: int) -> list[TrainingExample]:
    """The examples topic from the start: ``n`` records, then whatever follows within 3 s."""
    consumer = Consumer(consumer_config(settings, f"check-{settings.topic_examples}"))
    consumer.subscribe([settings.topic_examples])
    out: list[TrainingExample] = []
    try:
        deadline = time.monotonic() + 60
        while len(out) < n and time.monotonic() < deadline:
            out += [decode_example(m.value()) for m in consumer.consume(1000, 1.0) if not m.error()]
        out += [decode_example(m.value()) for m in consumer.consume(1000, 3.0) if not m.error()]
    finally:
        consumer.close()
    return out


def assert_examples_match(settings: Settings, events: list[Event]) -> int:
    """The examples topic holds exactly the reference's examples (a restored run may have sent
    some twice: then as identical copies); returns how many records it holds."""
    reference = {x.example_id: x for x in build_examples(events, settings)}
    got = read_examples(settings, len(reference))
    assert {x.example_id for x in got} == reference.keys()
    assert sum(x.click for x in got) > 0
    for x in got:
        want = reference[x.example_id]
        assert (x.user_id, x.item_id, x.event_time, x.click, x.purchase) == (
            want.user_id, want.item_id, want.event_time, want.click, want.purchase)
        assert x.features.keys() == want.features.keys()
        bad = {k: (x.features[k], v) for k, v in want.features.items()
               if not math.isclose(x.features[k], v, rel_tol=1e-9, abs_tol=1e-9)}
        assert not bad, (x.example_id, bad)
    return len(got)


def test_bounded_run_writes_the_reference_features_and_examples(
        job_settings: Settings, events: list[Event], child_jobs: Callable[..., ChildJob]) -> None:
    settings = job_settings
    produce(settings, events)
    child_jobs(JOB, settings, "--bounded").finish()
    run_writer(settings, bounded=True)

    counts = read_stats(JOB, settings)["counts"]
    assert counts.get("valid") == len(events) and not counts.get("invalid"), counts
    assert_feast_matches(settings, events)
    assert assert_examples_match(settings, events) == counts["examples"]


def test_users_whose_events_span_several_attribution_windows(
        job_settings: Settings, child_jobs: Callable[..., ChildJob]) -> None:
    # each user's partition is read in chunks, ahead of the other partitions and so of Flink's
    # watermark: examples must wait for the watermark (their item features come with it), not
    # for the user's own later events
    settings = job_settings
    events = spanning_log(users=16, minutes=60)
    span = max(e.event_time for e in events) - min(e.event_time for e in events)
    assert span > 3 * settings.attribution_window_ms
    produce(settings, events)
    child_jobs(JOB, settings, "--bounded").finish()
    run_writer(settings, bounded=True)

    counts = read_stats(JOB, settings)["counts"]
    assert counts.get("valid") == len(events), counts
    assert_feast_matches(settings, events)
    assert assert_examples_match(settings, events) == counts["examples"]


def test_killed_mid_stream_and_restored_it_ends_with_the_same_values(
        job_settings: Settings, tmp_path: Path, child_jobs: Callable[..., ChildJob]) -> None:
    # checkpoints 2 s apart, and the kill more than ``feast_flush_ms`` after one: the rows of
    # the events before the checkpoint have been flushed (see the job's docstring, "Restore")
    settings = job_settings.model_copy(update={"checkpoint_interval_ms": 2_000})
    events = sample_events(RESTORE_ROWS, tmp_path)
    produce(settings, events)
    run = child_jobs(JOB, settings, "--bounded")
    run.wait_for("a quarter of the events read",
                 lambda: read_stats(JOB, settings)["counts"].get("valid", 0) > len(events) // 4)
    seen = run.checkpoint_id()
    run.wait_for("a checkpoint after that", lambda: run.checkpoint_id() > seen)
    time.sleep(3 * settings.feast_flush_ms / 1000)
    assert run.proc.poll() is None, "the run ended before it could be killed mid-stream"
    run.kill()

    child_jobs(JOB, settings, "--bounded", "--restore").finish()
    run_writer(settings, bounded=True)
    counts = read_stats(JOB, settings)["counts"]
    assert 0 < counts.get("valid", 0) < len(events), counts  # it went on from the checkpoint
    assert_feast_matches(settings, events)
    assert assert_examples_match(settings, events) >= counts["examples"]
