"""Baselines the torch ranker is evaluated against.

Both implement :class:`~models.base.OnlineRanker` and are built like
:class:`~models.trainer.OnlineTrainer`, as ``cls(settings)``.

* :class:`FtrlBaseline` — River's logistic regression trained by FTRL-Proximal on one-hot user,
  item and category IDs plus the ``log1p``'d dense features (clicks only: p_purchase is NaN).
  IDs are not hashed: one weight per ID seen, and a ``learn_one`` costs O(features of the
  example) (see :class:`SparseLogisticRegression`).
* :class:`MostPopular` — the item's exponentially decayed click count (event time,
  half-life :data:`POPULARITY_HALF_LIFE_MS`), squashed to (0, 1): the floor any ranker must beat.
  Its scores rank; they are not calibrated click probabilities.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from river import linear_model, optim

from connectors.examples import TrainingExample
from features.schema import DENSE_FEATURES
from features.state import HOUR_MS, Decayed
from models.ranker import SPARSE_FIELDS
from streamrank.config import Settings

FTRL_ALPHA, FTRL_BETA, FTRL_L1, FTRL_L2 = 0.05, 1.0, 0.0, 1.0
"""FTRL-Proximal's hyper-parameters (River's defaults)."""
POPULARITY_HALF_LIFE_MS = HOUR_MS
POPULARITY_SCALE = 10.0
"""The popularity score is ``(c + 1) / (c + 1 + POPULARITY_SCALE)`` of ``c`` decayed clicks."""


def river_features(x: TrainingExample) -> dict[str, float]:
    """One-hot IDs (``"<field>=<id>": 1.0``) and ``log1p`` of the non-negative dense features.

    >>> x = TrainingExample(example_id="e", user_id="u1", item_id="i9", event_time=0, click=0,
    ...                     purchase=0, features={"i_ctr": math.e - 1})
    >>> f = river_features(x)
    >>> f["user_id=u1"], f["category_id="], f["i_ctr"], f["u_clicks_1h"]
    (1.0, 1.0, 1.0, 0.0)
    """
    out = {f"{field}={getattr(x, field) or ''}": 1.0 for field in SPARSE_FIELDS}
    out |= {name: math.log1p(max(0.0, x.features.get(name, 0.0))) for name in DENSE_FEATURES}
    return out


class SparseLogisticRegression(linear_model.LogisticRegression):
    """River's ``LogisticRegression`` with ``w·x`` summed over the example's features only.

    In River 0.23, ``learn_one`` takes ``w·x`` on the weights wrapped in a masked ``VectorDict``
    with a default factory, which walks every weight ever seen: each call cost O(weights)
    (about 2 ms at 50k weights, 8 ms at 200k). River fixed it upstream (online-ml/river#1913).
    Predictions and weights are River's up to floating-point rounding, except that a weight the
    optimizer never set stays absent instead of being stored as 0.
    """

    def _raw_dot_one(self, x: dict) -> float:
        w = self._weights
        return sum(xi * w.get(i, 0.0) for i, xi in x.items()) + self.intercept


class FtrlBaseline:
    """:class:`SparseLogisticRegression` with River's ``FTRLProximal``, one example at a time.

    Built like every ranker, from ``settings`` (it has no settings of its own yet).
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self.model = SparseLogisticRegression(
            optimizer=optim.FTRLProximal(alpha=FTRL_ALPHA, beta=FTRL_BETA, l1=FTRL_L1, l2=FTRL_L2))

    def predict_many(self, examples: Sequence[TrainingExample]) -> np.ndarray:
        """``B X 2`` float64: p_click, NaN."""
        out = np.full((len(examples), 2), np.nan)
        for i, x in enumerate(examples):
            out[i, 0] = self.model.predict_proba_one(river_features(x))[True]
        return out

    def learn_many(self, examples: Sequence[TrainingExample]) -> None:
        """``learn_one`` on each example's click label, in order."""
        for x in examples:
            self.model.learn_one(river_features(x), bool(x.click))


class MostPopular:
    """Scores an item by its ``c`` decayed clicks: ``(c + 1) / (c + 1 + POPULARITY_SCALE)``.

    >>> x = TrainingExample(example_id="e", user_id="u", item_id="i", event_time=0, click=1,
    ...                     purchase=0, features={})
    >>> pop = MostPopular(Settings())
    >>> before = pop.predict_many([x])[0, 0]
    >>> pop.learn_many([x] * 9)
    >>> round(float(before), 4), float(pop.predict_many([x])[0, 0])
    (0.0909, 0.5)
    """

    def __init__(self, settings: Settings | None = None,
                 half_life_ms: int = POPULARITY_HALF_LIFE_MS) -> None:
        self.half_life_ms = half_life_ms
        self.clicks: dict[str, Decayed] = {}

    def predict_many(self, examples: Sequence[TrainingExample]) -> np.ndarray:
        """``B X 2`` float64: popularity score, NaN."""
        out = np.full((len(examples), 2), np.nan)
        for i, x in enumerate(examples):
            counter = self.clicks.get(x.item_id)
            c = counter.read(x.event_time) if counter is not None else 0.0
            out[i, 0] = (c + 1.0) / (c + 1.0 + POPULARITY_SCALE)
        return out

    def learn_many(self, examples: Sequence[TrainingExample]) -> None:
        """Count each click at its event time."""
        for x in examples:
            if x.click:
                counter = self.clicks.get(x.item_id) or Decayed(self.half_life_ms)
                self.clicks[x.item_id] = counter.add(x.event_time)
