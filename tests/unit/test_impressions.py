"""The impression rule: deterministic, popularity-sampled negatives, never the clicked item."""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict

import pytest

from config import Settings
from connectors.events import Event
from connectors.logs import read_log
from features.impressions import with_impressions

SETTINGS = Settings()


@pytest.fixture(scope="module")
def events(tmp_path_factory) -> list[Event]:
    """The events of the first 3,000 rows of the shared Taobao sample."""
    head = tmp_path_factory.mktemp("sample") / "head.csv"
    with SETTINGS.sample_log.open() as f:
        head.write_text("".join(itertools.islice(f, 3_000)))
    parsed, report = read_log(head, "taobao", settings=SETTINGS)
    assert report.bad == 0
    return list(parsed)


def _click(i: int, item: str, t: int | None = None, user: str = "u", **kw) -> Event:
    return Event(event_id=f"c{i}", event_type="click", user_id=user, item_id=item,
                 event_time=1_511_658_000_000 + (t if t is not None else i) * 1000, **kw)


def _key(e: Event) -> tuple:
    return (e.event_id, e.event_type, e.item_id, e.event_time, e.request_id, e.position)


def test_same_seed_same_stream_other_seed_other_negatives(events):
    a = [_key(e) for e in with_impressions(events, SETTINGS)]
    b = [_key(e) for e in with_impressions(events, SETTINGS)]
    c = [_key(e) for e in with_impressions(events, Settings(sampling_seed=8))]
    assert a == b
    assert len(a) == len(c) and a != c


def test_each_click_becomes_a_request_with_the_clicked_item_once(events):
    out = list(with_impressions(events, SETTINGS))
    requests: dict[str, list[Event]] = defaultdict(list)
    clicks = {}
    for e in out:
        if e.event_type == "impression":
            requests[e.request_id].append(e)
        elif e.event_type == "click":
            clicks[e.request_id] = e
    n_clicks = sum(e.event_type == "click" for e in events)
    assert len(requests) == len(clicks) == n_clicks
    sizes = Counter()
    for rid, shown in requests.items():
        click = clicks[rid]
        items = [e.item_id for e in shown]
        assert len(items) == len(set(items)) <= SETTINGS.impressions_per_request
        assert items.count(click.item_id) == 1
        assert sorted(e.position for e in shown) == list(range(len(shown)))
        assert {e.event_time for e in shown} == {click.event_time - 1}
        assert {e.user_id for e in shown} == {click.user_id}
        assert all(e.synthetic for e in shown) and not click.synthetic
        clicked = next(e for e in shown if e.item_id == click.item_id)
        assert click.position == clicked.position and rid == f"req-{click.event_id}"
        sizes[len(shown)] += 1
    assert sizes[SETTINGS.impressions_per_request] > 0.95 * n_clicks  # full requests once warm
    positions = Counter(clicks[rid].position for rid in requests if len(requests[rid]) == 5)
    assert min(positions.values()) > 0.15 * sum(positions.values())  # shuffled positions


def test_other_events_pass_through_unchanged_and_in_place(events):
    out = list(with_impressions(events, SETTINGS))
    others_in = [e for e in events if e.event_type != "click"]
    others_out = [e for e in out if e.event_type not in ("click", "impression")]
    assert others_in == others_out and len(others_in) > 100
    times = [e.event_time for e in out]
    assert all(b >= a - 1 for a, b in zip(times, times[1:]))  # ordered up to the 1 ms


def test_negatives_come_from_the_next_clicks_only():
    settings = Settings(popularity_window=2, impressions_per_request=3)
    log = [_click(i, item) for i, item in enumerate(["a", "b", "c", "d", "e", "a"])]
    out = list(with_impressions(log, settings))
    shown = defaultdict(set)
    for e in out:
        if e.event_type == "impression":
            shown[e.request_id].add(e.item_id)
    assert shown["req-c0"] == {"a", "b", "c"}  # the window: the next 2 clicks, b and c
    assert shown["req-c2"] == {"c", "d", "e"}
    assert shown["req-c4"] == {"e", "a"}  # near the end: only one later click
    assert shown["req-c5"] == {"a"}  # the last click has nothing after it
    assert [e.event_id for e in out if e.event_type == "click"] == [f"c{i}" for i in range(6)]


def test_negatives_follow_popularity_and_exclude_the_clicked_item():
    settings = Settings(impressions_per_request=2, popularity_window=10)
    future = [_click(1_000 + i, "hot" if i % 10 else "cold") for i in range(10)]
    probe = _click(0, "target")
    drawn = Counter()
    for seed in range(400):
        out = list(with_impressions([probe, *future], settings.model_copy(
            update={"sampling_seed": seed})))
        drawn.update(e.item_id for e in out
                     if e.request_id == f"req-{probe.event_id}" and e.event_type == "impression")
    assert drawn["target"] == 400  # the clicked item, once per request, never as a negative
    assert drawn["hot"] + drawn["cold"] == 400
    assert 0.82 < drawn["hot"] / 400 < 0.97  # 9 of the 10 next clicks were on "hot"


def test_negatives_have_item_history_like_positives_do(events):
    """The rule's point: whether an item was clicked before is no give-away of the label."""
    seen: set[str] = set()
    shown: dict[str, list[tuple[str, bool]]] = defaultdict(list)
    with_history, total = Counter(), Counter()
    for e in with_impressions(events, SETTINGS):
        if e.event_type == "impression":
            shown[e.request_id].append((e.item_id, e.item_id in seen))
        elif e.event_type == "click":
            for item, had_history in shown.pop(e.request_id):
                label = "positive" if item == e.item_id else "negative"
                total[label] += 1
                with_history[label] += had_history
            seen.add(e.item_id)
    rates = {k: with_history[k] / total[k] for k in total}
    assert total["negative"] > 3 * total["positive"] > 0
    assert abs(rates["negative"] - rates["positive"]) < 0.05, rates


def test_clicks_with_request_ids_and_logs_with_impressions_pass_through():
    own = [Event(event_id="i1", event_type="impression", user_id="u", item_id="a",
                 event_time=1_511_658_000_000, request_id="r"),
           _click(1, "a", request_id="r", position=0),
           _click(2, "b")]  # no request_id, but the log carries its own impressions
    assert list(with_impressions(own, SETTINGS)) == own
    tagged = [_click(1, "a", request_id="r", position=3)]
    assert list(with_impressions(tagged, SETTINGS)) == tagged
