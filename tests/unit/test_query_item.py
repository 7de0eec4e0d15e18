"""The query–item text features: their definition, how the model takes them (with and without
the text switch), and no skew between a training example and a scored candidate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from config import Settings
from connectors.training_examples import TrainingExample, decode_example, encode_example
from features.lexical import Bm25
from features.online import OnlineInputs
from features.query_item import QUERY_ITEM_FEATURES, query_item_columns, query_item_features
from features.schema import DENSE_FEATURES
from features.text import embed, tokens
from models.ranker import DENSE_INPUTS, Ranker, encode_batch, encode_columns
from models.scorer.candidates import encode_candidates
from models.trainer import OnlineTrainer

TITLES = ["Cordless Drill Driver 18V", "Drill Bit Set 30 Pieces", "Cotton Bath Towel", ""]
BUCKETS = 1009


@pytest.fixture(scope="module")
def catalog() -> tuple[np.ndarray, list[list[str]], Bm25]:
    words = [tokens(t) for t in TITLES]
    bm25 = Bm25()
    for k, w in enumerate(words):
        bm25.add(f"i{k}", w)
    return embed(TITLES), words, bm25


def test_columns_relate_the_query_to_each_title(catalog) -> None:
    vecs, words, bm25 = catalog
    cols = query_item_features("cordless drill", vecs, words, bm25)
    assert cols.shape == (4, len(QUERY_ITEM_FEATURES)) and cols.dtype == np.float32
    cosine, lexical = cols[:, 0], cols[:, 1]
    assert cosine[0] > cosine[2] and (cosine >= 0).all() and cosine[3] == 0
    assert lexical[0] > lexical[1] > 0 and lexical[2] == lexical[3] == 0
    q = embed(["cordless drill"])[0]
    assert np.allclose(cosine, np.clip(vecs @ q, 0, None), atol=1e-6)
    assert np.allclose(lexical, bm25.scores(tokens("cordless drill"), words))


@pytest.mark.parametrize("query", [None, "", "  ", "?!"])
def test_no_query_gives_zeros(catalog, query) -> None:
    vecs, words, bm25 = catalog
    assert not query_item_features(query, vecs, words, bm25).any()
    assert not query_item_columns(None, [], vecs, words, bm25).any()


def test_mismatched_items_are_refused(catalog) -> None:
    vecs, words, bm25 = catalog
    with pytest.raises(ValueError, match="3 item embeddings for 4 titles"):
        query_item_columns(vecs[0], ["drill"], vecs[:3], words, bm25)


def _examples(cols: np.ndarray, query: str | None) -> list[TrainingExample]:
    return [TrainingExample(
        example_id=f"e{k}", request_id="r", user_id="u1", item_id=f"i{k}", category_id="c",
        position=k, event_time=1_000, click=k % 2, purchase=0, price=9.5, query=query,
        features={"i_ctr": 0.1 * k, "u_clicks_1h": 2.0,
                  **dict(zip(QUERY_ITEM_FEATURES, map(float, row)))},
        recent_items=("i2",), recent_categories=("c",)) for k, row in enumerate(cols)]


def test_a_search_example_encodes_as_its_scored_candidate(catalog) -> None:
    """No skew: the text columns a training example carries (after the wire) reach the model
    exactly as the scorer's candidates pass them."""
    vecs, words, bm25 = catalog
    cols = query_item_features("cordless drill", vecs, words, bm25)
    xs = [decode_example(encode_example(x)) for x in _examples(cols, "cordless drill")]
    trained = encode_batch(xs, BUCKETS)
    inputs = OnlineInputs(np.array([[x.features.get(n, 0.0) for n in DENSE_FEATURES]
                                    for x in xs]), ("i2",), ("c",))
    served = encode_candidates("u1", [x.item_id for x in xs], [x.category_id for x in xs],
                               [x.price for x in xs], inputs, BUCKETS, text=cols)
    for got, want in zip(served, trained):
        assert torch.equal(got, want)
    text = trained.dense[:, len(DENSE_INPUTS) - len(QUERY_ITEM_FEATURES):]
    assert torch.equal(text, torch.from_numpy(cols)) and text.any()
    by_columns = encode_columns(
        ["u1"] * 4, [x.item_id for x in xs], ["c"] * 4, inputs.dense, [9.5] * 4,
        [("i2",)] * 4, [("c",)] * 4, None, BUCKETS, text=cols)
    assert torch.equal(by_columns.dense, trained.dense)


def test_examples_without_a_query_decode_and_encode_as_before(catalog) -> None:
    old = b'{"example_id":"e","user_id":"u","item_id":"i","event_time":1,"click":0,' \
          b'"purchase":0,"features":{"i_ctr":0.5}}'
    x = decode_example(old)
    assert x.query is None and encode_example(x) == encode_example(decode_example(
        encode_example(x))) and b"query" not in encode_example(x)
    assert not encode_batch([x], BUCKETS).dense[0, -len(QUERY_ITEM_FEATURES):].any()


def test_the_model_without_text_ignores_the_text_columns(catalog) -> None:
    vecs, words, bm25 = catalog
    cols = query_item_features("cordless drill", vecs, words, bm25)
    with_text, blank = encode_batch(_examples(cols, "q"), BUCKETS), \
        encode_batch(_examples(np.zeros_like(cols), None), BUCKETS)
    torch.manual_seed(0)
    plain = Ranker(BUCKETS, 4, text=False)
    assert plain.wide.dense.shape == (len(DENSE_INPUTS) - len(QUERY_ITEM_FEATURES),)
    with torch.no_grad():
        plain.wide.dense.fill_(0.3)
        assert torch.equal(plain(*with_text), plain(*blank))
        full = Ranker(BUCKETS, 4)
        full.wide.dense.fill_(0.3)
        assert not torch.equal(full(*with_text), full(*blank))


def test_the_trainer_learns_the_text_weights_only_when_on(catalog) -> None:
    vecs, words, bm25 = catalog
    cols = query_item_features("cordless drill", vecs, words, bm25)
    xs = _examples(cols, "cordless drill")
    settings = Settings(hash_buckets=BUCKETS, embedding_dim=4, batch_size=4)
    on, off = OnlineTrainer(settings), OnlineTrainer(settings.model_copy(
        update={"text_features": False}))
    for _ in range(20):
        on.learn_many(xs)
        off.learn_many(xs)
    text_weights = on.model.wide.dense[-len(QUERY_ITEM_FEATURES):]
    assert text_weights.abs().sum() > 0
    assert len(off.model.wide.dense) == len(DENSE_INPUTS) - len(QUERY_ITEM_FEATURES)
