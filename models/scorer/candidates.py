"""A request's candidates as model input: the encoder of training examples,
:func:`models.ranker.encode_batch`, over objects carrying what a training example carries.

A candidate is an impression that has not happened yet: the user, the item and its category,
the dense features and the user's recent clicked items and categories read from the online
store as of the request time (:class:`features.online.OnlineInputs`, the same functions that
give a training example its features and history), and the item's price from the request.
Its position is unknown: every candidate is scored at the model's fixed
:data:`~models.ranker.SERVING_POSITION` (``encode_batch`` without ``training``), as the
trainer's own predictions are.

>>> from features.online import OnlineInputs
>>> from features.schema import DENSE_FEATURES
>>> inputs = OnlineInputs([{n: 1.0 for n in DENSE_FEATURES}] * 2, ("b",), ("c",))
>>> batch = encode_candidates("u", ["a", "b"], ["c", None], [9.5, None], inputs, 101)
>>> tuple(batch.sparse.shape), tuple(batch.dense.shape), batch.dense[:, -3:].tolist()
((2, 3), (2, 20), [[9.5, 1.0, 0.0], [0.0, 0.0, 1.0]])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from features.online import OnlineInputs
from models.ranker import Batch, encode_batch


@dataclass(frozen=True, slots=True)
class Candidate:
    """What :func:`models.ranker.encode_batch` reads of a training example, for serving.

    ``position`` is unknown when ranking (the encoder scores at the serving position).
    """

    user_id: str
    item_id: str
    category_id: str | None
    features: dict[str, float]
    price: float | None = None
    recent_items: tuple[str, ...] = ()
    recent_categories: tuple[str, ...] = ()
    position: int | None = None


def candidates(user_id: str, item_ids: Sequence[str], category_ids: Sequence[str | None],
               prices: Sequence[float | None], inputs: OnlineInputs) -> list[Candidate]:
    """One :class:`Candidate` per item (``prices[j]``: item ``j``'s price, None if unknown)."""
    if not len(item_ids) == len(category_ids) == len(prices) == len(inputs.features):
        raise ValueError("items, categories, prices and features must have the same length")
    return [Candidate(user_id, i, c, f, p, inputs.recent_items, inputs.recent_categories)
            for i, c, p, f in zip(item_ids, category_ids, prices, inputs.features)]


def encode_candidates(user_id: str, item_ids: Sequence[str], category_ids: Sequence[str | None],
                      prices: Sequence[float | None], inputs: OnlineInputs,
                      hash_buckets: int) -> Batch:
    """The model input (:class:`~models.ranker.Batch`) of showing the items to the user."""
    return encode_batch(candidates(user_id, item_ids, category_ids, prices, inputs),
                        hash_buckets)
