"""A request's candidates as model input: the encoder of training examples,
:func:`models.ranker.encode_columns`, over the columns a training example carries.

A candidate is an impression that has not happened yet: the user, the item and its category,
the dense features and the user's recent clicked items and categories read from the online
store as of the request time (:class:`features.online.OnlineInputs`, the same functions that
give a training example its features and history), and the item's price from the request.
With a query, the query–item text features of each candidate
(:func:`features.query_item.query_item_columns`) come as ``text``; without one they are zeros.
Its position is unknown: every candidate is scored at the model's fixed
:data:`~models.ranker.SERVING_POSITION`, as the trainer's own predictions are.

>>> import numpy as np
>>> from features.online import OnlineInputs
>>> from features.schema import DENSE_FEATURES
>>> inputs = OnlineInputs(np.ones((2, len(DENSE_FEATURES))), ("b",), ("c",))
>>> batch = encode_candidates("u", ["a", "b"], ["c", None], [9.5, None], inputs, 101)
>>> tuple(batch.sparse.shape), tuple(batch.dense.shape), batch.dense[:, -5:-2].tolist()
((2, 3), (2, 22), [[9.5, 1.0, 0.0], [0.0, 0.0, 1.0]])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from features.online import OnlineInputs
from models.ranker import Batch, encode_columns


def encode_candidates(user_id: str, item_ids: Sequence[str], category_ids: Sequence[str | None],
                      prices: Sequence[float | None], inputs: OnlineInputs,
                      hash_buckets: int, text: np.ndarray | None = None) -> Batch:
    """The model input (:class:`~models.ranker.Batch`) of showing the items to the user
    (``prices[j]``: item ``j``'s price, None if unknown; ``text``: the query–item features,
    ``n X len(QUERY_ITEM_FEATURES)``, None without a query)."""
    n = len(item_ids)
    if not n == len(category_ids) == len(prices) == len(inputs.dense):
        raise ValueError("items, categories, prices and features must have the same length")
    return encode_columns([user_id] * n, item_ids, category_ids, inputs.dense, prices,
                          [inputs.recent_items] * n, [inputs.recent_categories] * n, None,
                          hash_buckets, text)
