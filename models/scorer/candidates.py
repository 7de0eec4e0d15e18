"""A request's candidates as model input: the same encoder as training examples.

>>> from features.schema import DENSE_FEATURES
>>> sparse, dense = encode_candidates("u", ["a", "b"], ["c", None],
...                                   [{n: 1.0 for n in DENSE_FEATURES}] * 2, 101)
>>> tuple(sparse.shape), tuple(dense.shape)
((2, 3), (2, 17))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from models.ranker import encode_batch


@dataclass(frozen=True, slots=True)
class Candidate:
    """What :func:`models.ranker.encode_batch` reads of a training example, for serving.

    ``position`` is unknown when ranking (None, as in an example without one).
    """

    user_id: str
    item_id: str
    category_id: str | None
    features: dict[str, float]
    position: int | None = None


def encode_candidates(user_id: str, item_ids: Sequence[str], category_ids: Sequence[str | None],
                      features: Sequence[dict[str, float]], hash_buckets: int) -> tuple[Tensor, Tensor]:
    """Sparse ``B X F`` and dense ``B X N`` model input of showing the items to the user."""
    return encode_batch([Candidate(user_id, i, c, f)  # type: ignore[arg-type]
                         for i, c, f in zip(item_ids, category_ids, features)], hash_buckets)
