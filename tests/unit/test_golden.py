"""The committed golden outputs (``tests/golden``) are what the Python reference makes of the
committed inputs today: a change of the specification shows here first (then regenerate with
``python -m tests.golden.generate``, and the Java port's ``GoldenTest`` must follow).

Comparison, by ``GoldenTest``'s rule: line for line in order (``GoldenTest`` takes the
examples by ``example_id``: the job emits them in another order); JSON values exactly, but
floats to :data:`TOL` (relative or absolute) and a dead letter's ``detail`` (words for people,
not part of the contract) left out.
"""

from __future__ import annotations

import functools
import json
import math
from typing import Any

import pytest

from tests.golden.generate import CASES, FILES, GOLDEN, Outputs, load, read_lines, reference

TOL = 1e-12
IGNORED = {"dead_letters": {"detail"}, "rows": set(), "examples": set()}
"""Members not compared, by file."""


@functools.cache
def regenerated(case: str) -> Outputs:
    """The reference's outputs of the committed inputs of ``case``."""
    values, now_ms, records = load(case)
    return reference(records, values, now_ms)


def differences(want: Any, got: Any, path: str = "") -> list[str]:
    """Where ``got`` differs from ``want`` (JSON values; floats to :data:`TOL`)."""
    if isinstance(want, float) and isinstance(got, float):
        same = math.isclose(want, got, rel_tol=TOL, abs_tol=TOL) or want == got
        return [] if same else [f"{path}: {got!r} != {want!r}"]
    if type(want) is not type(got):
        return [f"{path}: {got!r} != {want!r}"]
    if isinstance(want, dict):
        if want.keys() != got.keys():
            return [f"{path}: keys {sorted(got)} != {sorted(want)}"]
        return [d for k in want for d in differences(want[k], got[k], f"{path}.{k}")]
    if isinstance(want, list):
        if len(want) != len(got):
            return [f"{path}: {len(got)} items != {len(want)}"]
        return [d for k, (w, g) in enumerate(zip(want, got))
                for d in differences(w, g, f"{path}[{k}]")]
    return [] if want == got else [f"{path}: {got!r} != {want!r}"]


def _parsed(lines: list[str], ignored: set[str]) -> list[Any]:
    return [{k: v for k, v in json.loads(line).items() if k not in ignored} for line in lines]


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("case", CASES)
def test_reference_outputs_equal_the_committed_ones(case: str, name: str) -> None:
    want = _parsed(read_lines(GOLDEN / case / f"{name}.jsonl.gz"), IGNORED[name])
    got = _parsed(getattr(regenerated(case), name), IGNORED[name])
    bad = differences(want, got)
    assert not bad, f"{case}/{name}: {len(bad)} differences, first: {bad[:5]}"


def test_fixtures_reach_every_dead_letter_reason_and_the_join() -> None:
    """The messy case dead-letters every reason (a non-UTF-8 record too), drops duplicates,
    and both cases have clicked and unclicked examples."""
    letters = [json.loads(x) for x in read_lines(GOLDEN / "messy" / "dead_letters.jsonl.gz")]
    assert {d["reason"] for d in letters} == {
        "oversize", "bad_json", "invalid_field", "absurd_time", "late"}
    assert any(d["original_encoding"] == "hex" for d in letters)
    _, _, records = load("messy")
    values = [v for v, _ in records]
    assert len(values) > len(set(values)), "no event sent twice"
    for case in CASES:
        clicks = {json.loads(x)["click"] for x in read_lines(GOLDEN / case / "examples.jsonl.gz")}
        assert clicks == {0, 1}, case
