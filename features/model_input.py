"""The model's dense input from feature state: one function for training and serving.

:func:`model_features` turns the states of a user, an item and their (user, category) pair,
as of time ``t``, into the features dict the model reads (keyed and ordered as
:data:`~features.schema.DENSE_FEATURES`). The example builder calls it with the job's state
before an impression (:meth:`features.examples.ExampleBuilder.features`); the scorer calls
:func:`model_features_many` with the states it turned back from Feast rows
(:mod:`features.rows`), so a served candidate gets the features its training example carries.

>>> from features.state import ItemState, UserCategoryState, UserState, apply_user
>>> u = apply_user(UserState(), "click", 0, "i1", "c1")
>>> f = model_features(u, ItemState(), UserCategoryState(), "c1", 1_000)
>>> list(f) == list(DENSE_FEATURES), f["u_clicks_24h"] > 0.99, f["uc_in_last_categories"]
(True, True, 1.0)
"""

from __future__ import annotations

from collections.abc import Sequence

from features.schema import DENSE_FEATURES
from features.state import (
    ItemState,
    UserCategoryState,
    UserState,
    item_features,
    user_category_features,
    user_features,
)

Candidate = tuple[ItemState, UserCategoryState, "str | None"]
"""One candidate's item state, (user, category) state and category ID."""


def model_features_many(user: UserState, candidates: Sequence[Candidate],
                        t: int) -> list[dict[str, float]]:
    """The dense features of showing each candidate to ``user`` at ``t``, keyed in
    :data:`~features.schema.DENSE_FEATURES` order (the user part is read once, the user x
    category part once per distinct (state, category))."""
    base = user_features(user, t)
    by_category: dict[tuple[int, str | None], dict[str, float]] = {}
    out = []
    for item, user_category, category in candidates:
        key = (id(user_category), category)
        uc = by_category.get(key)
        if uc is None:
            uc = by_category[key] = user_category_features(user_category, user, category, t)
        out.append({**base, **item_features(item, t), **uc})
    return out


def model_features(user: UserState, item: ItemState, user_category: UserCategoryState,
                   category: str | None, t: int) -> dict[str, float]:
    """The dense features of showing ``item`` (in ``category``) to ``user`` at ``t``."""
    return model_features_many(user, [(item, user_category, category)], t)[0]
