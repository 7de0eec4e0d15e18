"""BM25 over item titles, with corpus statistics kept up to date as catalog items arrive.

Okapi BM25 (Robertson et al.) with Lucene's non-negative IDF, so every score is ``>= 0``:

``score(q, t) = sum over distinct terms w of q in t: idf(w) * tf * (k1 + 1) /
(tf + k1 * (1 - b + b * |t| / avgdl))`` with ``idf(w) = log(1 + (N - df(w) + 0.5) /
(df(w) + 0.5))``, ``tf`` the count of ``w`` in the title, ``N`` the titles added, ``df(w)``
those containing ``w`` and ``avgdl`` their mean length in tokens. A query term repeated counts
once; a term no title has yet gets the largest IDF. Tokens come from
:func:`features.text.tokens`.

>>> from features.text import tokens
>>> bm25 = Bm25()
>>> for item, title in [("a", "cordless drill 18v"), ("b", "bath towel"), ("c", "drill bits")]:
...     bm25.add(item, tokens(title))
>>> q = tokens("cordless drill")
>>> [round(bm25.score(q, tokens(t)), 3) for t in ("cordless drill 18v", "drill bits", "towel")]
[1.299, 0.499, 0.0]
>>> bm25.add("b", tokens("cordless drill"))  # a changed title replaces the item's counts
>>> len(bm25), bm25.df("towel"), bm25.df("drill")
(3, 0, 3)
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np

K1 = 1.2
"""Term-frequency saturation."""
B = 0.75
"""Length normalisation."""


class Bm25:
    """BM25 scorer over a growing catalog of titles (see the module docstring)."""

    def __init__(self, k1: float = K1, b: float = B) -> None:
        self.k1, self.b = k1, b
        self._titles: dict[str, tuple[int, frozenset[str]]] = {}
        """Per item: its title's length and distinct terms (what its counts added)."""
        self._df: Counter[str] = Counter()
        self._total_length = 0

    def __len__(self) -> int:
        return len(self._titles)

    def add(self, item_id: str, title_tokens: Sequence[str]) -> None:
        """Count ``item_id``'s title; an item added before has its old title's counts replaced."""
        old = self._titles.get(item_id)
        if old is not None:
            self._total_length -= old[0]
            for term in old[1]:
                self._df[term] -= 1
                if not self._df[term]:
                    del self._df[term]
        terms = frozenset(title_tokens)
        self._titles[item_id] = (len(title_tokens), terms)
        self._total_length += len(title_tokens)
        self._df.update(terms)

    def df(self, term: str) -> int:
        """Titles containing ``term``."""
        return self._df[term]

    def idf(self, term: str) -> float:
        """``log(1 + (N - df + 0.5) / (df + 0.5))``: positive, larger for rarer terms."""
        df = self.df(term)
        return math.log1p((len(self._titles) - df + 0.5) / (df + 0.5))

    def score(self, query_tokens: Sequence[str], title_tokens: Sequence[str]) -> float:
        """BM25 of one title for the query (0 when they share no term)."""
        return float(self.scores(query_tokens, [title_tokens])[0])

    def scores(self, query_tokens: Sequence[str],
               titles: Sequence[Sequence[str]]) -> np.ndarray:
        """BM25 of each title for the query, float64 of shape ``(len(titles),)``."""
        out = np.zeros(len(titles))
        idf = {term: self.idf(term) for term in set(query_tokens)}
        if not idf:
            return out
        avgdl = self._total_length / len(self._titles) if self._titles else 0.0
        k1, b = self.k1, self.b
        for j, title in enumerate(titles):
            tf = Counter(token for token in title if token in idf)
            if not tf:
                continue
            norm = k1 * (1.0 - b + b * len(title) / avgdl) if avgdl else k1
            out[j] = sum(idf[w] * n * (k1 + 1.0) / (n + norm) for w, n in tf.items())
        return out
