"""The catalog records and the catalog store: validation with line numbers, one embedding per
title version, an index that grows and replaces vectors in place, and the text features the
training job and the scorer both take from it."""

from __future__ import annotations

import numpy as np
import pytest

from connectors.errors import DecodeError
from connectors.items import CatalogItem, read_catalog
from connectors.training_examples import TrainingExample, decode_example, encode_example
from features.online import OnlineInputs
from features.query_item import QUERY_ITEM_FEATURES
from features.schema import DENSE_FEATURES as DENSE
from features.text import embed
from models.catalog import Catalog, SearchText
from models.ranker import encode_batch
from models.scorer.candidates import encode_candidates

BUCKETS = 1009


class CountingEmbedder:
    """The real embedding model, counting the texts it embeds."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.texts.extend(texts)
        return embed(texts)


def item(item_id: str, title: str, **fields: object) -> CatalogItem:
    return CatalogItem(item_id=item_id, title=title, **fields)


def top(catalog: Catalog, query: str, n: int = 3) -> list[str]:
    return [item_id for item_id, _ in catalog.recall(embed([query])[0], n)]


def test_read_catalog_reports_bad_rows_by_line() -> None:
    text = ('{"item_id": "a", "title": "Cordless drill", "price": 59.0}\n'
            '\n'
            '{"item_id": "b"}\n'
            '{"item_id": "c", "title": "Towel", "price": -1}\n'
            'not json\n'
            '{"item_id": 7, "title": "Hammer", "category_id": "tools", "extra": 1}\n')
    rows = list(read_catalog(text, "jsonl"))
    assert [n for n, _ in rows] == [1, 3, 4, 5, 6]
    assert isinstance(rows[0][1], CatalogItem) and rows[0][1].price == 59.0
    assert [r.reason for _, r in rows[1:4] if isinstance(r, DecodeError)] == [
        "invalid_field", "invalid_field", "bad_json"]
    assert "title" in str(rows[1][1]) and "price" in str(rows[2][1])
    assert rows[4][1] == item("7", "Hammer", category_id="tools")


def test_read_catalog_csv() -> None:
    text = "item_id,title,description,category_id,price,brand,ignored\n" \
           "a,Cordless drill,18V,tools,59.5,Bosch,x\n" \
           "b,Bath towel,,home,,,\n" \
           "c,Broken,,home,cheap,,\n"
    rows = list(read_catalog(text, "csv"))
    assert rows[0] == (2, item("a", "Cordless drill", description="18V", category_id="tools",
                               price=59.5, brand="Bosch"))
    assert rows[1] == (3, item("b", "Bath towel", category_id="home"))
    assert rows[2][0] == 4 and isinstance(rows[2][1], DecodeError)
    (n, err), = read_catalog("id,name\n1,x\n", "csv")
    assert n == 1 and isinstance(err, DecodeError) and "item_id" in str(err)


def test_catalog_embeds_once_per_title_and_replaces_vectors() -> None:
    counter = CountingEmbedder()
    catalog = Catalog(counter)
    catalog.apply([("d1", item("d1", "Cordless drill driver 18V", category_id="tools")),
                   ("t1", item("t1", "Cotton bath towel", category_id="home")),
                   ("h1", item("h1", "Claw hammer steel", category_id="tools"))])
    assert len(counter.texts) == 3
    assert catalog.status() == {"items": 3, "embedded": 3, "indexed": 3}
    assert top(catalog, "cordless drill", 1) == ["d1"]

    # a new price or category: a new version, the same embedding (nothing embedded)
    catalog.apply([("d1", item("d1", "Cordless drill driver 18V", category_id="power",
                               price=99.0))])
    assert len(counter.texts) == 3
    entry = catalog.get("d1")
    assert entry is not None and entry.item.price == 99.0 and entry.item.category_id == "power"
    assert entry.tokens == ("cordless", "drill", "driver", "18v")

    # a new title: embedded once, its vector replaces the old one in the index
    catalog.apply([("t1", item("t1", "Cordless impact drill", category_id="tools")),
                   ("t1", item("t1", "Beach towel, large", category_id="home"))])
    assert counter.texts[3:] == ["Beach towel, large"]
    assert catalog.status() == {"items": 3, "embedded": 4, "indexed": 3}
    assert top(catalog, "beach towel", 1) == ["t1"]
    assert np.allclose(catalog.get("t1").vector, embed(["Beach towel, large"])[0])

    # the index grows without a rebuild; a tombstone removes the item
    catalog.apply([(f"x{k}", item(f"x{k}", f"garden hose {k} m")) for k in range(300)])
    assert catalog.status() == {"items": 303, "embedded": 304, "indexed": 303}
    assert top(catalog, "cordless drill", 1) == ["d1"]
    catalog.apply([("d1", None), ("nobody", None)])
    assert catalog.get("d1") is None and "d1" not in top(catalog, "cordless drill", 10)
    assert catalog.status()["indexed"] == 302
    recalled = catalog.recall(embed(["garden hose"])[0], 1_000)
    assert len(recalled) == 302 and recalled[0][1] == pytest.approx(max(s for _, s in recalled))


def test_empty_catalog_recalls_nothing() -> None:
    assert Catalog().recall(embed(["anything"])[0], 5) == []


def test_a_search_example_learns_the_columns_its_candidate_is_served() -> None:
    """No skew: the training job's text features of a search example (through the wire) enter
    the model exactly as the scorer's columns for the same query, item and catalog."""
    catalog = Catalog()
    catalog.apply([("d", item("d", "Cordless drill driver 18V")),
                   ("t", item("t", "Cotton bath towel"))])
    text = SearchText(catalog, cache_size=8)
    shown = [TrainingExample(example_id=f"e{i}", user_id="u", item_id=i, event_time=1, click=0,
                             purchase=0, features={"i_ctr": 0.25}, query=query)
             for i, query in (("d", "cordless drill"), ("t", "cordless drill"), ("x", "drill"),
                              ("d", None))]
    learned = [decode_example(encode_example(text.enrich(x))) for x in shown]
    assert learned[0].features["query_item_cosine"] > learned[1].features["query_item_cosine"]
    assert learned[0].features["query_item_bm25"] > 0 == learned[1].features["query_item_bm25"]
    assert learned[3] == shown[3]  # not a search: as it came
    for x in learned[:3]:
        assert x.query is not None
        served = encode_candidates("u", [x.item_id], [None], [None],
                                   OnlineInputs(np.array([[0.25 if n == "i_ctr" else 0.0
                                                           for n in DENSE]]), (), ()),
                                   BUCKETS, text.columns(x.query, [x.item_id]))
        assert np.array_equal(served.dense.numpy(), encode_batch([x], BUCKETS).dense.numpy())
    assert set(QUERY_ITEM_FEATURES) <= set(learned[2].features)  # an unknown item: zeros
    assert not any(learned[2].features[n] for n in QUERY_ITEM_FEATURES)
