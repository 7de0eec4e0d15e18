"""BM25 over titles: properties of the score and of the incrementally kept statistics."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from features.lexical import Bm25

WORDS = st.sampled_from(["drill", "cordless", "towel", "bath", "18v", "steel", "red", "set"])
TITLE = st.lists(WORDS, min_size=0, max_size=8)
CATALOG = st.lists(TITLE, min_size=0, max_size=12)


def _bm25(titles: list[list[str]]) -> Bm25:
    bm25 = Bm25()
    for k, title in enumerate(titles):
        bm25.add(f"i{k}", title)
    return bm25


@given(CATALOG, TITLE, TITLE)
def test_scores_are_finite_and_non_negative(catalog, query, title) -> None:
    score = _bm25(catalog).score(query, title)
    assert math.isfinite(score) and score >= 0.0


@given(CATALOG, st.lists(WORDS, min_size=1, max_size=4), TITLE, st.randoms())
def test_a_title_with_a_query_term_scores_above_one_without(catalog, query, rest, rnd) -> None:
    bm25 = _bm25(catalog)
    without = [w for w in rest if w not in query]
    with_term = [*without, rnd.choice(query)]
    assert bm25.score(query, with_term) > bm25.score(query, without) == 0.0


@given(CATALOG, TITLE, TITLE, st.randoms())
def test_the_order_and_repeats_of_query_tokens_do_not_matter(catalog, query, title, rnd) -> None:
    bm25 = _bm25(catalog)
    shuffled = [*query, *query]
    rnd.shuffle(shuffled)
    assert bm25.score(shuffled, title) == bm25.score(query, title)


@given(CATALOG, TITLE, TITLE, TITLE)
def test_re_adding_a_changed_title_equals_adding_only_the_new_one(catalog, old, new, query) -> None:
    changed = _bm25([*catalog, old])
    changed.add(f"i{len(catalog)}", new)
    fresh = _bm25([*catalog, new])
    assert len(changed) == len(fresh)
    for term in set(query) | set(old) | set(new):
        assert changed.df(term) == fresh.df(term)
    assert math.isclose(changed.score(query, new), fresh.score(query, new), rel_tol=1e-12)


def test_rarer_terms_weigh_more_and_scores_follow_the_catalog() -> None:
    bm25 = _bm25([["drill", "set"], ["towel", "set"], ["bath", "towel", "set"]])
    assert bm25.idf("drill") > bm25.idf("towel") > bm25.idf("set") > 0
    before = bm25.score(["towel"], ["towel"])
    bm25.add("i9", ["towel"])  # towels get commoner: each counts less
    assert bm25.score(["towel"], ["towel"]) < before


def test_scores_of_many_titles_equal_one_at_a_time() -> None:
    bm25 = _bm25([["cordless", "drill"], ["drill", "bits"], ["towel"]])
    titles = [["drill", "drill", "bits"], [], ["towel"], ["cordless", "drill", "18v"]]
    assert bm25.scores(["drill", "cordless"], titles).tolist() == [
        bm25.score(["drill", "cordless"], t) for t in titles]
