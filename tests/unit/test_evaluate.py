"""The evaluation harness: documented outputs, and the same online model a plain trainer gets."""

from __future__ import annotations

import gc
import itertools
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from config import Settings
from connectors.logs import read_log
from features.example_builder import build_examples
from features.impressions import with_impressions
from models.evaluate import (
    MODELS,
    SEGMENTS,
    WINDOWS,
    ExampleSpool,
    LogSpec,
    evaluate,
    evaluate_logs,
    lean_runtime,
    progressive,
    progressive_in_parallel,
    score,
)
from models.trainer import OnlineTrainer, log_loss
from streamrank.cli import app

torch.set_num_threads(1)
SETTINGS = Settings(batch_size=64, hash_buckets=1_009, embedding_dim=4)
CLI_ENV = {"STREAMRANK_BATCH_SIZE": str(SETTINGS.batch_size),
           "STREAMRANK_HASH_BUCKETS": str(SETTINGS.hash_buckets),
           "STREAMRANK_EMBEDDING_DIM": str(SETTINGS.embedding_dim)}
MODEL_KEYS = {"auc", "logloss", "examples", "positives", "purchase_auc", "purchase_logloss",
              "purchases", "curves", "segments", "windows"}


@pytest.fixture(scope="module")
def log(tmp_path_factory):
    """The first 1,200 rows of the shared Taobao sample."""
    path = tmp_path_factory.mktemp("log") / "head.csv"
    with SETTINGS.sample_log.open() as f:
        path.write_text("".join(itertools.islice(f, 1_200)))
    return path


@pytest.fixture(scope="module")
def run(log, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    return evaluate(log, "taobao", SETTINGS, out_dir=out, progress=False), out


def test_results_json_has_the_documented_keys(run):
    result, out = run
    doc = json.loads((out / "results.json").read_text())
    assert set(doc["models"]) == set(MODELS)
    n = doc["examples"]
    assert n == result.examples > 5_000
    assert doc["frozen_at"] % SETTINGS.batch_size == 0 and doc["frozen_at"] >= 0.2 * n
    assert doc["frozen_at"] - SETTINGS.batch_size < 0.2 * n
    assert doc["log"]["events"] == 1_200 and doc["rules"]["attribution_window_ms"] == 600_000
    for name, m in doc["models"].items():
        assert set(m) == MODEL_KEYS, name
        assert m["examples"] == n and 0 < m["positives"] < n
        assert 0.0 <= m["auc"] <= 1.0 and m["logloss"] > 0
        curves = m["curves"]
        assert set(curves) == {"x", "auc", "logloss", "window_auc"}
        assert len(curves["x"]) == len(curves["auc"]) == len(curves["logloss"]) > 10
        assert curves["x"][-1] == n and curves["x"] == sorted(curves["x"])
        assert curves["auc"][-1] == pytest.approx(m["auc"], abs=1e-4)
    assert doc["models"]["ftrl"]["purchase_auc"] is None  # no purchase head
    assert doc["models"]["online"]["purchase_logloss"] > 0


def test_segments_and_windows_are_the_exact_figures_of_their_slices(run):
    result, _ = run
    y = result.labels
    for name, p in result.predictions.items():
        m = result.models[name]
        assert set(m.segments) == set(SEGMENTS)
        for seg, share in SEGMENTS.items():
            k = int(np.ceil(len(y) * share))
            assert m.segments[seg]["click_auc"] == pytest.approx(auc(y[:k, 0], p[:k, 0]))
            assert m.segments[seg]["click_logloss"] == pytest.approx(
                log_loss(y[:k, 0], p[:k, 0]).mean())
        w = m.windows
        assert len(w["auc"]) == WINDOWS and w["start"][0] == 0 and w["end"][-1] == len(y)
        assert w["t_start_ms"] == sorted(w["t_start_ms"])
        a, b = w["start"][3], w["end"][3]
        assert w["logloss"][3] == pytest.approx(log_loss(y[a:b, 0], p[a:b, 0]).mean(), abs=1e-5)
    assert result.models["ftrl"].segments["all"]["purchase_auc"] is None


def test_several_logs_give_one_table(log, tmp_path):
    results = evaluate_logs([LogSpec(log, "taobao"), LogSpec(log, "taobao")], SETTINGS,
                            out_dir=tmp_path, progress=False, models=["online", "ftrl"])
    assert len(results) == 2
    suite = json.loads((tmp_path / "suite.json").read_text())
    assert set(suite) == {log.stem}  # same stem twice: one entry, both runs equal anyway
    assert (tmp_path / "suite.md").read_text().count("| head | online |") == 2
    a, b = (r.models["online"].segments for _, r in results)
    assert a == b  # deterministic, and nothing carried from one log to the next
    assert (tmp_path / log.stem / "auc_windows.png").stat().st_size > 0


def auc(y: np.ndarray, p: np.ndarray) -> float:
    pos, neg = p[y == 1], p[y == 0]
    return float(((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean())


def test_report_and_plots_are_written(run):
    result, out = run
    report = (out / "report.md").read_text()
    assert "| model | click AUC |" in report and "| online |" in report
    assert "impressions at its time minus 1 ms" in report and "10 min" in report
    assert "![AUC](auc.png)" in report
    for png in ("auc.png", "logloss.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_online_model_matches_a_plain_trainer_fed_the_same_examples(run, log):
    result, _ = run
    events, _ = read_log(log, "taobao", settings=SETTINGS)
    examples = list(build_examples(with_impressions(events, SETTINGS), SETTINGS))
    trainer = OnlineTrainer(SETTINGS)
    frozen = None
    expected, expected_frozen = [], []
    for start in range(0, len(examples), SETTINGS.batch_size):
        batch = examples[start:start + SETTINGS.batch_size]
        if start == result.frozen_at:
            frozen = trainer.frozen_copy()
        p = trainer.predict_many(batch)
        expected.append(p)
        expected_frozen.append(p if frozen is None else frozen.predict_many(batch))
        trainer.learn_many(batch)
    # the loop's scores come from the training forward pass with the position term swapped
    # for the serving one; predict_many encodes the serving position: equal up to float32
    np.testing.assert_allclose(result.predictions["online"], np.concatenate(expected), atol=1e-6)
    np.testing.assert_allclose(result.predictions["frozen"], np.concatenate(expected_frozen),
                               atol=1e-6)
    after = slice(result.frozen_at, None)
    assert not np.array_equal(result.predictions["online"][after],
                              result.predictions["frozen"][after])


def test_spool_returns_the_examples_in_order(log):
    events, _ = read_log(log, "taobao", settings=SETTINGS)
    examples = list(itertools.islice(build_examples(with_impressions(events, SETTINGS), SETTINGS),
                                     150))
    spool = ExampleSpool(examples)
    try:
        assert len(spool) == 150
        batches = list(spool.batches(64))
        assert [len(b) for b in batches] == [64, 64, 22]
        assert list(itertools.chain(*batches)) == examples
        assert list(itertools.chain(*spool.batches(64))) == examples  # re-readable
        assert spool.labels[:, 0].tolist() == [x.click for x in examples]
    finally:
        spool.close()


def test_score_metrics_and_missing_heads():
    y = np.array([[0, 0], [1, 0], [0, 0], [1, 1]] * 50, dtype=np.float64)
    perfect = np.column_stack([y[:, 0] * 0.8 + 0.1, np.full(len(y), np.nan)])
    m = score(y, perfect, step=16, every=50)
    assert m.auc == pytest.approx(1.0) and m.purchase_auc is None and m.purchase_logloss is None
    assert m.logloss == pytest.approx(-np.log(0.9))
    assert (m.examples, m.positives, m.purchases) == (200, 100, 50)
    assert m.curves["x"] == [64, 128, 192, 200]
    backwards = np.column_stack([1 - perfect[:, 0], np.full(len(y), 0.5)])
    assert score(y, backwards, step=16, every=50).auc == pytest.approx(0.0)


def test_a_subset_of_models_can_be_run(log, tmp_path):
    result = evaluate(log, "taobao", SETTINGS, progress=False, models=["frozen", "most_popular"])
    assert list(result.models) == ["frozen", "most_popular"] == list(result.predictions)
    with pytest.raises(ValueError, match="models must be some of"):
        evaluate(log, "taobao", SETTINGS, progress=False, models=["xgboost"])


def _cli_evaluate(log, out, models: str):
    return CliRunner().invoke(app, ["evaluate", str(log), "--format", "taobao", "--out", str(out),
                                    "--models", models], env=CLI_ENV)


def test_cli_runs_only_the_models_given(log, tmp_path):
    result = _cli_evaluate(log, tmp_path, "online, most_popular")
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "results.json").read_text())
    assert list(doc["models"]) == ["online", "most_popular"]
    assert doc["models"]["online"]["examples"] == doc["examples"] > 5_000
    assert "| most_popular |" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize(("models", "reason"), [("online,xgboost", "unknown: 'xgboost'"),
                                                (",", "none given")])
def test_cli_rejects_unknown_or_missing_models(log, tmp_path, models, reason):
    result = _cli_evaluate(log, tmp_path, models)
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert "error: models must be some of online, frozen, ftrl, most_popular" in message
    assert reason in message
    assert not (tmp_path / "results.json").exists()


def test_lean_runtime_restores_threads_and_the_collector():
    torch.set_num_threads(2)
    try:
        with lean_runtime():
            assert torch.get_num_threads() == 1 and not gc.isenabled()
        assert torch.get_num_threads() == 2 and gc.isenabled()
    finally:
        torch.set_num_threads(1)


@pytest.mark.parametrize("models", [MODELS, ("frozen", "most_popular")])
def test_baselines_in_a_second_process_give_the_same_predictions(log, models):
    events, _ = read_log(log, "taobao", settings=SETTINGS)
    examples = list(itertools.islice(build_examples(with_impressions(events, SETTINGS), SETTINGS),
                                     1_000))
    spool = ExampleSpool(examples)
    try:
        parallel, frozen_at = progressive_in_parallel(spool, SETTINGS, models=models,
                                                      min_examples=0)
        serial, serial_frozen_at = progressive(spool.batches(SETTINGS.batch_size), len(spool),
                                               SETTINGS, models=models)
    finally:
        spool.close()
    assert frozen_at == serial_frozen_at < len(spool) and list(parallel) == list(models)
    for name in models:
        np.testing.assert_array_equal(parallel[name], serial[name])
