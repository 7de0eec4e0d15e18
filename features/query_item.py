"""The query–item text features: the one definition training examples and the scorer share.

For a query and ``n`` items (:data:`QUERY_ITEM_FEATURES`, in column order):

* ``query_item_cosine`` — the cosine of the query's and the item title's embeddings
  (:func:`features.text.embed`, L2-normalised, so a dot product), clamped at 0;
* ``query_item_bm25`` — BM25 of the title for the query's tokens (:class:`features.lexical.Bm25`
  over the catalog's titles), raw: the model ``log1p``-squashes every dense input.

No query (``None`` or no tokens) gives zeros, so ranking without a query sees what it saw
before these features existed; an item with no title has a zero embedding and no tokens, so
zeros too.

>>> from features.lexical import Bm25
>>> from features.text import embed, tokens
>>> titles = ["cordless drill 18v", "bath towel"]
>>> bm25 = Bm25()
>>> for item, title in zip("ab", titles):
...     bm25.add(item, tokens(title))
>>> cols = query_item_features("drill", embed(titles), [tokens(t) for t in titles], bm25)
>>> cols.shape, cols.dtype, bool(cols[0, 0] > cols[1, 0]), bool(cols[0, 1] > 0 == cols[1, 1])
((2, 2), dtype('float32'), True, True)
>>> float(abs(query_item_features(None, embed(titles), [[], []], bm25)).sum())
0.0
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from features.lexical import Bm25
from features.text import embed, tokens

QUERY_ITEM_FEATURES: tuple[str, ...] = ("query_item_cosine", "query_item_bm25")
"""The text features' names, in column order (also their keys in a training example's
``features``)."""


def query_item_columns(query_vec: np.ndarray | None, query_tokens: Sequence[str],
                       item_vecs: np.ndarray, item_title_tokens: Sequence[Sequence[str]],
                       bm25: Bm25) -> np.ndarray:
    """The features of ``n`` items for one query, float32 ``(n, len(QUERY_ITEM_FEATURES))``.

    ``query_vec``: the query's embedding (``EMBEDDING_DIM``; None: no query); ``query_tokens``:
    its tokens; ``item_vecs``: ``(n, EMBEDDING_DIM)`` title embeddings; ``item_title_tokens``:
    each title's tokens.
    """
    n = len(item_title_tokens)
    if len(item_vecs) != n:
        raise ValueError(f"{len(item_vecs)} item embeddings for {n} titles")
    out = np.zeros((n, len(QUERY_ITEM_FEATURES)), dtype=np.float32)
    if query_vec is None or not query_tokens or not n:
        return out
    out[:, 0] = np.clip(np.asarray(item_vecs, dtype=np.float32) @ query_vec, 0.0, None)
    out[:, 1] = bm25.scores(query_tokens, item_title_tokens)
    return out


QueryText = tuple[np.ndarray | None, tuple[str, ...]]
"""A query's embedding (None when it has no tokens: no text features) and tokens."""


def query_text(query: str | None) -> QueryText:
    """The embedding and tokens of a query, as :func:`query_item_columns` takes them (the
    embedding read-only, so that callers may cache it)."""
    words = tuple(tokens(query))
    if not query or not words:
        return None, words
    vector = embed([query])[0]
    vector.flags.writeable = False
    return vector, words


def query_item_features(query: str | None, item_vecs: np.ndarray,
                        item_title_tokens: Sequence[Sequence[str]], bm25: Bm25) -> np.ndarray:
    """:func:`query_item_columns` of a query given as text (:func:`query_text`)."""
    return query_item_columns(*query_text(query), item_vecs, item_title_tokens, bm25)
