"""The reliability table: each fault the integration tests inflict on the real stack, what was
checked, whether it held, and the figures the test printed.

It runs the fault tests (real Kafka, Redis, Flink, Feast and torch on loopback, each test
bounded and stopping only what it started) with pytest, reads pytest's JUnit XML, and prints a
plain table (one row per fault) and writes ``reliability.md`` with it. About 12 minutes on
2 cores; ``--only`` takes a substring of the fault names to run fewer.

    .venv/bin/python bench/bench_reliability.py --out /tmp/reliability
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from support import console, markdown_table, table, write_report

from config import REPO_ROOT

FAULTS: list[tuple[str, str, str]] = [
    ("broker SIGKILLed for 20 s under a producer",
     "every event the producer had accepted is on `events` exactly once",
     "tests/integration/test_outages.py::test_a_broker_killed_for_20_s_loses_no_accepted_event"),
    ("Redis SIGKILLed under a scorer",
     "/rank answers at once, marked degraded, and recovers",
     "tests/integration/test_outages.py::"
     "test_ranking_without_redis_answers_degraded_at_once_and_recovers"),
    ("garbage and tampered updates on model.deltas",
     "the scorer stays on its version; the genuine update after them applies",
     "tests/integration/test_outages.py::"
     "test_garbage_on_model_deltas_leaves_the_scorer_on_its_version"),
    ("features job SIGKILLed mid-stream, restored",
     "state counts each event once; rows and examples equal the reference's",
     "tests/integration/test_features_job.py::"
     "test_killed_mid_stream_and_restored_it_ends_with_the_same_outputs"),
    ("training job SIGKILLed, restored",
     "versions only go up; examples learned as the delivery semantics state",
     "tests/integration/test_training_job.py::test_crash_and_restore_keep_versions_going_up"),
    ("every job and a scorer SIGKILLed in the live loop",
     "the supervisor restarts each; events reach Feast and versions go up again",
     "tests/integration/test_live_loop.py::test_the_loop_turns_heals_and_stops"),
    ("hostile event records straight onto `events`",
     "each bad one dead-lettered with the reference's reason; the rest equal the reference",
     "tests/integration/test_hostile_events.py"),
    ("hostile /rank bodies, bearer headers, damaged updates",
     "4xx (validation error) or accepted as the request model says; updates rejected with a reason",
     "tests/unit/test_hostile_inputs.py"),
    ("credentials: SASL broker, Redis password, tokens",
     "anonymous clients refused; the loop works; no secret in answers or logs",
     "tests/integration/test_credentials.py"),
]
"""(fault, what is checked, the pytest node that checks it)."""


def run(nodes: list[str], xml: Path) -> float:
    """Run the nodes with pytest (a line per test as it ends; what each printed goes to the
    JUnit XML at ``xml``); seconds taken."""
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider",
                    "--hypothesis-show-statistics", f"--junitxml={xml}",
                    "-o", "junit_logging=system-out", *nodes], cwd=REPO_ROOT, check=False)
    return time.monotonic() - started


def outcomes(xml: Path) -> dict[str, tuple[str, float, list[str]]]:
    """``file::name`` → (passed/failed/error/skipped, seconds, the lines it printed)."""
    out: dict[str, tuple[str, float, list[str]]] = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        path = case.get("classname", "").replace(".", "/") + ".py"
        result = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed")
        printed = [line.strip() for c in case if c.tag == "system-out"
                   for line in (c.text or "").splitlines() if line.strip()]
        out[f"{path}::{case.get('name')}"] = (result, float(case.get("time", 0)), printed)
    return out


def figures(printed: list[str], limit: int = 6) -> str:
    """The printed lines that carry figures (digits), the first ``limit`` of them."""
    lines = [line for line in printed if any(ch.isdigit() for ch in line)
             and not line.startswith(("%", "[", "/", "(", "sent ", "scorers serve"))
             and not any(ch in line for ch in "│┃━─")]
    return "; ".join(lines[:limit])[:400]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="write reliability.md here")
    parser.add_argument("--only", default="", help="run the faults whose name contains this")
    args = parser.parse_args()
    chosen = [f for f in FAULTS if args.only in f[0]]
    if not chosen:
        raise SystemExit(f"no fault matches {args.only!r}")
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        seconds = run(sorted({node for *_, node in chosen}), xml)
        results = outcomes(xml)
    rows = []
    for fault, checked, node in chosen:
        cases = {k: v for k, v in results.items() if k == node or k.startswith(node + "::")}
        if not cases:
            rows.append((fault, checked, "not run", "", ""))
            continue
        verdict = "held" if all(r == "passed" for r, _, _ in cases.values()) else \
            "FAILED: " + ", ".join(k.rsplit("::", 1)[-1] for k, (r, _, _) in cases.items()
                                   if r != "passed")
        took = sum(t for _, t, _ in cases.values())
        printed = [line for _, _, p in cases.values() for line in p]
        rows.append((fault, checked, verdict, f"{took:.0f}", figures(printed)))
    columns = ("fault", "checked", "result", "s", "figures printed")
    console.print(table(f"reliability ({seconds:.0f} s)", columns[:4], [r[:4] for r in rows]))
    for fault, *_, printed_figures in rows:
        if printed_figures:
            console.print(f"{fault}: {printed_figures}", soft_wrap=True)
    if args.out is not None:
        write_report(args.out, "reliability.md", [
            f"Reliability table ({time.strftime('%Y-%m-%d')}, {seconds:.0f} s):", "",
            *markdown_table(columns, rows)])


if __name__ == "__main__":
    main()
