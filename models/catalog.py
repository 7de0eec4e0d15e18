"""The item catalog: the ``items`` topic followed into memory, with title embeddings in an
embedding index for ``/search``'s recall, and the query–item text features that the scorer and
the training job both compute from it (:class:`SearchText`).

:class:`Catalog` keeps, per item, its newest version, its title's embedding
(:func:`features.text.embed` of the title alone) and title tokens, and the embedding in a
usearch HNSW index (cosine, :data:`~features.text.EMBEDDING_DIM` dimensions) that grows as
items arrive: nothing is ever rebuilt. A title is embedded once per version that changes it (a
new price or category keeps the embedding); a changed title's vector replaces the old one
(removed, then added under a new index key); a tombstone removes the item. The catalog's
titles are also the corpus of the BM25 statistics (:class:`features.lexical.Bm25`) that the
query–item features (:mod:`features.query_item`) read. Pure: no Kafka.

:class:`CatalogFollower` is its I/O: a thread that reads the compacted ``items`` topic from the
start (:class:`connectors.items.ItemSubscriber`) into a catalog, as the
:class:`~models.scorer.reloader.Reloader` follows ``model.deltas``.

:class:`SearchText` is the one path from a query and item IDs to the text columns: the scorer
calls it for a ``/rank`` with a query, the training job for each training example of a search
(an impression that carried a query), so both sides read the same definition, the same
embedding of the query and the same catalog. The training job computes them when the example
arrives, not as of the impression: a title changed in between is read as it is now (a catalog
changes far more slowly than examples arrive, so the skew is a stated, small one).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from usearch.index import Index

from config import KafkaSettings
from connectors.items import CatalogItem, ItemRecord, ItemSubscriber
from connectors.training_examples import TrainingExample
from features.lexical import Bm25
from features.query_item import QUERY_ITEM_FEATURES, QueryText, query_item_columns, query_text
from features.text import EMBEDDING_DIM, embed, tokens

log = logging.getLogger(__name__)
POLL_S = 0.25
"""How long one poll of ``items`` waits for a first record (a record is taken as soon as it
arrives; this bounds how long stopping the follower waits)."""


@dataclass(frozen=True)
class CatalogEntry:
    """One item as served: its newest version, its title's embedding and tokens."""

    item: CatalogItem
    vector: np.ndarray
    tokens: tuple[str, ...]
    key: int
    """The embedding's key in the index."""


class Catalog:
    """Items by ID with their title embeddings in a growing index; safe across threads.

    ``embedder`` turns texts into L2-normalised vectors (:func:`features.text.embed`).
    ``embedded`` counts the titles embedded so far. One thread writes (:meth:`apply`); any
    number read.
    """

    def __init__(self, embedder: Callable[[list[str]], np.ndarray] = embed) -> None:
        self._embed = embedder
        self._lock = threading.Lock()
        self._index = Index(ndim=EMBEDDING_DIM, metric="cos", dtype="f32")
        self._entries: dict[str, CatalogEntry] = {}
        self._by_key: dict[int, str] = {}
        self._next_key = 0
        self._bm25 = Bm25()
        self.embedded = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, item_id: str) -> CatalogEntry | None:
        """The item's entry, None when the catalog does not have it."""
        return self._entries.get(item_id)

    def apply(self, records: Sequence[ItemRecord]) -> None:
        """Take item versions and tombstones in order (the last record of an item wins); the
        changed titles are embedded in one call."""
        latest = dict(records)
        retitled = [item for item in latest.values() if item is not None and (
            (old := self._entries.get(item.item_id)) is None or old.item.title != item.title)]
        vectors = self._embed([item.title for item in retitled]) if retitled else None
        new_vectors = {item.item_id: vectors[j] for j, item in enumerate(retitled)} \
            if vectors is not None else {}
        with self._lock:
            for item_id, item in latest.items():
                old = self._entries.get(item_id)
                if item is None:
                    if old is not None:
                        self._drop(old)
                        del self._entries[item_id]
                elif item_id in new_vectors:
                    if old is not None:
                        self._drop(old)
                    key = self._next_key
                    self._next_key += 1
                    vector = new_vectors[item_id]
                    self._index.add(key, vector)
                    self._by_key[key] = item_id
                    words = tuple(tokens(item.title))
                    self._bm25.add(item_id, words)
                    self._entries[item_id] = CatalogEntry(item, vector, words, key)
                else:
                    self._entries[item_id] = CatalogEntry(item, old.vector, old.tokens, old.key)
            self.embedded += len(new_vectors)

    def _drop(self, entry: CatalogEntry) -> None:
        self._index.remove(entry.key)
        del self._by_key[entry.key]

    def recall(self, vector: np.ndarray, n: int) -> list[tuple[str, float]]:
        """The ``n`` items whose title embeddings are nearest ``vector``: ``(item_id, cosine)``,
        nearest first."""
        with self._lock:
            if not self._entries:
                return []
            found = self._index.search(vector, n)
            return [(self._by_key[int(key)], 1.0 - float(distance))
                    for key, distance in zip(found.keys, found.distances)
                    if int(key) in self._by_key]

    def text_columns(self, query_vector: np.ndarray | None, query_tokens: Sequence[str],
                     item_ids: Sequence[str]) -> np.ndarray:
        """The query–item features (:func:`features.query_item.query_item_columns`) of the
        items for a query; an item the catalog does not have has no title (zeros)."""
        with self._lock:
            entries = [self._entries.get(i) for i in item_ids]
            vectors = np.zeros((len(item_ids), EMBEDDING_DIM), dtype=np.float32)
            for j, entry in enumerate(entries):
                if entry is not None:
                    vectors[j] = entry.vector
            return query_item_columns(query_vector, query_tokens, vectors,
                                      [() if e is None else e.tokens for e in entries],
                                      self._bm25)

    def status(self) -> dict[str, int]:
        """Items held, titles embedded, vectors in the index."""
        return {"items": len(self._entries), "embedded": self.embedded,
                "indexed": len(self._index)}


class CatalogFollower(threading.Thread):
    """Follows the ``items`` topic into ``catalog`` until :meth:`stop`."""

    def __init__(self, settings: KafkaSettings, catalog: Catalog) -> None:
        super().__init__(name="catalog-follower", daemon=True)
        self.settings = settings
        self.catalog = catalog
        self._halt = threading.Event()
        self.loaded = threading.Event()
        """Set once the catalog holds the whole topic as it was when the follower started."""
        self.rejected = 0
        """Records of ``items`` that did not decode (skipped)."""
        self.error: BaseException | None = None

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ask the thread to finish and wait for it."""
        self._halt.set()
        if self.is_alive():
            self.join(timeout_s)

    def run(self) -> None:
        try:
            with ItemSubscriber(self.settings, **{"fetch.wait.max.ms": 100,
                                                  "enable.partition.eof": True}) as subscriber:
                while not self._halt.is_set():
                    records = subscriber.poll(timeout_s=POLL_S)
                    if subscriber.rejected > self.rejected:
                        log.warning("items: %d record(s) rejected, last: %s",
                                    subscriber.rejected - self.rejected, subscriber.last_error)
                        self.rejected = subscriber.rejected
                    if records:
                        self.catalog.apply(records)
                    if subscriber.reached_end:
                        self.loaded.set()
        except BaseException as err:  # noqa: BLE001 - kept for /status and the log
            self.error = err
            log.exception("catalog follower stopped")


class SearchText:
    """The query–item text columns of a catalog, with the last ``cache_size`` queries'
    embeddings cached (repeated queries are embedded once). ``on_embed`` is told the seconds
    each lookup took (the scorer's metric)."""

    def __init__(self, catalog: Catalog, cache_size: int,
                 on_embed: Callable[[float], None] = lambda s: None) -> None:
        self.catalog = catalog
        self._query_text = lru_cache(maxsize=cache_size)(query_text)
        self._on_embed = on_embed

    def query(self, query: str) -> QueryText:
        """The query's embedding and tokens, from the cache when it was seen lately."""
        started = time.perf_counter()
        text = self._query_text(query)
        self._on_embed(time.perf_counter() - started)
        return text

    def columns(self, query: str, item_ids: Sequence[str]) -> np.ndarray:
        """``len(item_ids) X len(QUERY_ITEM_FEATURES)`` float32 text columns."""
        return self.catalog.text_columns(*self.query(query), item_ids)

    def enrich(self, example: TrainingExample) -> TrainingExample:
        """A search's training example with its text features (as the scorer computes them
        for the same query and item); any other example as it is."""
        if not example.query:
            return example
        row = self.columns(example.query, [example.item_id])[0]
        return example.model_copy(update={"features": {
            **example.features, **dict(zip(QUERY_ITEM_FEATURES, map(float, row)))}})
