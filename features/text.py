"""Text: the bundled embedding model and the tokens lexical features count.

The model is WordLlama's ``l2_supercat`` static token embeddings (256 dimensions), shipped
inside the ``wordllama`` wheel and loaded from there with downloads disabled: nothing is
fetched at run time. A text's embedding is the model's pooled, L2-normalised vector, so the
cosine of two texts is their dot product; an empty text embeds to zeros (cosine 0).
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import numpy as np

EMBEDDING_DIM = 256
MODEL_NAME = "wordllama l2_supercat 256"

_TOKEN = re.compile(r"[0-9a-z]+")


@lru_cache(maxsize=1)
def _model():
    import wordllama
    from wordllama import WordLlama

    # The wheel ships its tokenizer under ``wordllama/tokenizers``; pointing the cache there
    # and disabling downloads makes loading work with no network.
    return WordLlama.load(cache_dir=Path(wordllama.__file__).parent, disable_download=True,
                          dim=EMBEDDING_DIM)


def embed(texts: list[str]) -> np.ndarray:
    """The texts' L2-normalised embeddings, float32 of shape ``(len(texts), EMBEDDING_DIM)``.

    >>> v = embed(["cordless drill", "18V lithium drill driver", "bath towel", ""])
    >>> v.shape
    (4, 256)
    >>> bool(v[0] @ v[1] > v[0] @ v[2] + 0.2), float(abs(v[3]).sum())
    (True, 0.0)
    """
    out = np.zeros((len(texts), EMBEDDING_DIM), dtype=np.float32)
    present = [i for i, text in enumerate(texts) if text and text.strip()]
    if present:
        vectors = _model().embed([texts[i] for i in present], norm=True)
        out[present] = np.asarray(vectors, dtype=np.float32)
    return out


def tokens(text: str | None) -> list[str]:
    """Lower-case alphanumeric tokens, in order.

    >>> tokens("18V Lithium-Ion Drill/Driver")
    ['18v', 'lithium', 'ion', 'drill', 'driver']
    """
    return _TOKEN.findall(text.lower()) if text else []
