"""The live loop's report: each hop measured from a run's record, CTR per arm and phase."""

from __future__ import annotations

import json
from pathlib import Path

from streamrank.loop_report import HOPS, ctr_by_phase, hops, write_report
from streamrank.simulate import Ranking, Recorder


def _record() -> Recorder:
    rec = Recorder(started_ms=1_000)
    rec.drift_ms = 5_000
    rec.clicks = [(2_000, "u1"), (6_000, "u2")]
    rec.feast_ms = [120.0, 300.0]
    rec.examples = [(2_000, 20_000, 1), (2_500, 21_000, 0)]
    # version -> (watermark, seen on the topic, bytes)
    rec.versions = {1: (500, 900, 10_000), 2: (1_900, 15_000, 2_000), 3: (2_600, 22_000, 2_100),
                    4: (7_000, 30_000, 2_000)}
    rec.served = {("s1", 2): 15_050, ("s2", 2): 15_200, ("s1", 3): 22_010, ("s2", 4): 30_090,
                  ("s1", 4): 30_020}
    rec.rankings = [Ranking(1_500, "u1", "live", 1, 10, 1, 0, 5.0),
                    Ranking(16_000, "u1", "live", 2, 10, 0, 0, 5.0),
                    Ranking(23_000, "u1", "frozen", 1, 10, 2, 0, 5.0),
                    Ranking(23_500, "u2", "live", 3, 10, 3, 1, 5.0),
                    Ranking(31_000, "u2", "live", 4, 10, 1, 0, 5.0)]
    return rec


def test_hops_follow_the_stated_definitions() -> None:
    h = hops(_record())
    assert h[HOPS[0]] == [120.0, 300.0]
    assert h[HOPS[1]] == [18_000, 18_500]                  # example arrived - impression time
    assert h[HOPS[2]] == [2_000, 1_000]                    # version 3 (watermark 2,600), seen 22,000
    # versions 2, 3, 4 were published after the start; s2 never served 3 but served 4 at 30,090
    assert sorted(h[HOPS[3]]) == sorted([200, 30_090 - 22_000, 90])
    # click at 2,000: first live ranking by a version with watermark >= 2,000 is at 23,500 (v3);
    # click at 6,000: at 31,000 (v4)
    assert h[HOPS[4]] == [21_500, 25_000]


def test_ctr_by_arm_and_phase() -> None:
    assert ctr_by_phase(_record()) == {
        "frozen": {"after drift": 0.2},
        "live": {"before drift": 0.1, "after drift": 4 / 30}}


def test_report_files(tmp_path: Path) -> None:
    path = write_report(_record(), tmp_path)
    text = path.read_text()
    assert "event → served by a learned version | 2 | 21,500 | 25,000" in text
    for name in ("ctr.png", "freshness.png", "loop.png", "rankings.csv", "summary.json"):
        assert (tmp_path / name).stat().st_size > 0
    assert json.loads((tmp_path / "summary.json").read_text())["rankings"] == 5
