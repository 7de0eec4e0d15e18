"""``evaluate --format judgments`` on the committed fixture: reading, the stream's rules, NDCG,
honest progressive validation, and the text features paying."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from config import Settings
from models.judgments import (
    default_threshold,
    evaluate_judgments,
    ndcg,
    read_judgments,
    searches,
    title_id,
)
from streamrank.cli import app

FIXTURE = Path(__file__).parents[1] / "fixtures" / "search" / "judgments.csv"
SETTINGS = Settings(hash_buckets=20_011, embedding_dim=8)


@pytest.fixture(scope="module")
def result():
    return evaluate_judgments(FIXTURE, SETTINGS, progress=False)


def test_the_fixture_reads_as_stated() -> None:
    judgments = read_judgments(FIXTURE)
    assert len(judgments) == 380 and len({j.query for j in judgments}) == 34
    assert len({j.item_id for j in judgments}) == 100
    assert {j.grade for j in judgments} == {1.0, 2.0, 3.0, 4.0}


def test_crowdflower_names_are_accepted_and_ids_come_from_titles(tmp_path) -> None:
    path = tmp_path / "cf.csv"
    path.write_text('id,query,product_title,product_description,median_relevance\n'
                    '1,drill,"Drill, Cordless",x,4\n2,drill,Towel,,1\n')
    a, b = read_judgments(path)
    assert (a.query, a.title, a.grade, a.item_id) == ("drill", "Drill, Cordless", 4.0,
                                                      title_id("Drill, Cordless"))
    assert b.item_id == title_id("Towel") != a.item_id


def test_a_missing_column_or_a_bad_grade_is_refused(tmp_path) -> None:
    (tmp_path / "a.csv").write_text("query,title\nq,t\n")
    with pytest.raises(ValueError, match="no column for grade"):
        read_judgments(tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text("query,title,grade\nq,t,high\n")
    with pytest.raises(ValueError, match="row 2: grade 'high'"):
        read_judgments(tmp_path / "b.csv")


def test_threshold_is_the_upper_third_of_any_scale() -> None:
    assert default_threshold([1, 2, 3, 4]) == 3.0
    assert default_threshold([0.0, 0.5, 1.5]) == pytest.approx(1.0)


def test_searches_keep_query_order_and_show_items_in_a_grade_blind_fixed_order() -> None:
    judgments = read_judgments(FIXTURE)
    stream = searches(judgments)
    firsts = list(dict.fromkeys(j.query for j in judgments))
    assert [q for q, _ in stream] == firsts
    again = searches(list(reversed(judgments)))
    assert {q: [j.item_id for j in items] for q, items in stream} == \
        {q: [j.item_id for j in items] for q, items in again}
    grades_first = [items[0].grade for _, items in stream]
    assert len(set(grades_first)) > 1  # not sorted by grade


def test_ndcg_uses_graded_gains_and_the_cutoff() -> None:
    grades = np.array([1.0, 2.0, 4.0, 3.0])
    assert ndcg(grades, np.array([0.0, 1.0, 3.0, 2.0]), 1.0) == 1.0
    worst = ndcg(grades, np.array([3.0, 2.0, 0.0, 1.0]), 1.0)
    assert worst is not None and 0 < worst < 1
    # gains 0, 1, 7, 3: the ideal DCG is 7 + 3/log2(3) + 1/2
    ideal = 7 + 3 / np.log2(3) + 0.5
    assert worst == pytest.approx((1 / np.log2(3) + 3 / np.log2(4) + 7 / np.log2(5)) / ideal)
    assert ndcg(grades, np.array([0.0, 1.0, 3.0, 2.0]), 1.0, k=1) == 1.0
    assert ndcg(np.ones(3), np.zeros(3), 1.0) is None


def test_text_features_pay_on_the_fixture(result) -> None:
    m = result.models
    assert set(m) == {"online", "online_no_text", "bm25", "shown_order"}
    random_order = m["shown_order"].ndcg_at_10
    assert m["bm25"].ndcg_at_10 > random_order + 0.15
    assert m["online"].ndcg_at_10 > random_order + 0.2
    assert m["online"].ndcg_at_10 > m["online_no_text"].ndcg_at_10 + 0.2
    assert m["online"].ndcg_at_10 > m["bm25"].ndcg_at_10
    assert m["online"].auc > 0.7 and m["online_no_text"].auc < 0.6
    assert m["online"].logloss < m["online_no_text"].logloss
    assert m["bm25"].logloss is None and result.threshold == 3.0
    assert result.examples == 380 and result.clicks == 142 and result.ndcg_queries == 34


def test_each_list_is_scored_before_any_model_learns_it(tmp_path) -> None:
    """Flipping the grades of the last query changes no score of it (nor of any before)."""
    lines = FIXTURE.read_text().splitlines()
    last = searches(read_judgments(FIXTURE))[-1][0]
    flipped = [lines[0]] + [
        line.rsplit(",", 1)[0] + "," + str(5 - int(line.rsplit(",", 1)[1]))
        if line.startswith(last + ",") else line for line in lines[1:]]
    path = tmp_path / "flipped.csv"
    path.write_text("\n".join(flipped) + "\n")
    a = evaluate_judgments(FIXTURE, SETTINGS, progress=False, models=["online", "bm25"])
    b = evaluate_judgments(path, SETTINGS, progress=False, models=["online", "bm25"])
    for name in ("online", "bm25"):
        assert np.array_equal(a.models[name].scores, b.models[name].scores)
    assert a.models["online"].curve[-1] != b.models["online"].curve[-1]  # grades differ
    assert b.clicks != a.clicks


def test_cli_writes_ndcg_auc_and_logloss_per_model(tmp_path) -> None:
    out = tmp_path / "out"
    run = CliRunner().invoke(app, ["evaluate", str(FIXTURE), "--format", "judgments",
                                   "--models", "online,bm25", "--relevant-grade", "4",
                                   "--out", str(out)])
    assert run.exit_code == 0, run.output
    doc = json.loads((out / "results.json").read_text())
    assert set(doc["models"]) == {"online", "bm25"} and doc["clicks"] == 74
    for figures in doc["models"].values():
        assert 0 < figures["ndcg@10"] <= 1 and 0 < figures["auc"] < 1
    assert doc["models"]["online"]["logloss"] > 0 and doc["models"]["bm25"]["logloss"] is None
    assert (out / "report.md").is_file() and (out / "ndcg.png").is_file()


def test_cli_refuses_judgment_options_elsewhere(tmp_path) -> None:
    run = CliRunner().invoke(app, ["evaluate", str(FIXTURE), "--format", "taobao",
                                   "--relevant-grade", "3"])
    assert run.exit_code == 2 and "only applies to --format judgments" in run.output
    run = CliRunner().invoke(app, ["evaluate", str(FIXTURE), "--format", "judgments",
                                   "--models", "frozen"])
    assert run.exit_code == 2 and "models must be some of" in run.output
