"""Baselines the torch ranker is evaluated against.

Both implement :class:`~models.base.OnlineRanker`; neither takes settings (their
hyper-parameters are River's defaults and stated below).

* :class:`RiverFtrlBaseline` — River's logistic regression trained by FTRL-Proximal on one-hot user,
  item and category IDs plus the ``log1p``'d dense features (clicks only: p_purchase is NaN).
  IDs are not hashed: one weight per ID seen, and a ``learn_one`` costs O(features of the
  example) (see :class:`FtrlLogisticRegression`, River's arithmetic in plain Python).
* :class:`MostPopular` — the item's exponentially decayed click count (event time,
  half-life :data:`POPULARITY_HALF_LIFE_MS`), squashed to (0, 1): the floor any ranker must beat.
  Its scores rank; they are not calibrated click probabilities.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from connectors.training_examples import TrainingExample
from features.schema import DENSE_FEATURES
from features.state import HOUR_MS, Decayed
from models.ranker import SPARSE_FIELDS

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
    for name in DENSE_FEATURES:
        value = x.features.get(name, 0.0)
        out[name] = math.log1p(value) if value > 0.0 else 0.0
    return out


_UNSEEN = (0.0, 0.0, 0.0)
"""``[w, z, n]`` of a feature never learned."""


class FtrlLogisticRegression:
    """River's ``LogisticRegression(optimizer=FTRLProximal(alpha, beta, l1, l2))``, step for
    step, in plain Python over the example's features only.

    Same arithmetic as River 0.23 (``river.linear_model.GLM._fit`` with
    ``river.optim.FTRLProximal._step_with_dict``): the log loss gradient
    ``-y / (exp(y * logit) + 1)`` (``y`` in {-1, 1}), the intercept by SGD at ``intercept_lr``,
    then per feature ``w_i`` set from ``z_i, n_i`` where ``|z_i| > l1`` before ``z_i`` and
    ``n_i`` take the gradient; River's sigmoid clamps at |logit| > 30. River's own wraps the
    weights in a ``VectorDict`` whose dot product walks every weight ever seen (8 ms a call at
    200k weights; online-ml/river#1913) and builds several dicts per call; this costs
    O(features of the example), one lookup per feature (its ``[w, z, n]``).
    ``tests/unit/test_baselines.py`` checks the predictions equal River's to 1e-9.
    """

    def __init__(self, alpha: float = FTRL_ALPHA, beta: float = FTRL_BETA, l1: float = FTRL_L1,
                 l2: float = FTRL_L2, intercept_lr: float = 0.01) -> None:
        self.alpha, self.beta, self.l1, self.l2 = alpha, beta, l1, l2
        self.intercept_lr = intercept_lr
        self.intercept = 0.0
        self._state: dict[str, list[float]] = {}
        """``[w, z, n]`` per feature seen."""

    @property
    def weights(self) -> dict[str, float]:
        """The weights by feature name (0.0 for a feature whose weight was never set)."""
        return {i: wzn[0] for i, wzn in self._state.items()}

    def _logit(self, x: dict[str, float]) -> float:
        state = self._state
        return sum([xi * state.get(i, _UNSEEN)[0] for i, xi in x.items()]) + self.intercept

    def proba(self, x: dict[str, float]) -> float:
        """The probability of a click."""
        logit = self._logit(x)
        return 0.0 if logit < -30 else 1.0 if logit > 30 else 1.0 / (1.0 + math.exp(-logit))

    def predict_proba_one(self, x: dict[str, float]) -> dict[bool, float]:
        """``{False: 1 - p, True: p}`` as River's."""
        p = self.proba(x)
        return {False: 1.0 - p, True: p}

    def learn_one(self, x: dict[str, float], y: bool) -> None:
        """One FTRL-Proximal step on ``x`` with label ``y``."""
        sign = 1 if y else -1
        loss_gradient = -sign / (math.exp(self._logit(x) * sign) + 1.0)
        self.intercept -= self.intercept_lr * loss_gradient
        state = self._state
        alpha, beta, l1, l2 = self.alpha, self.beta, self.l1, self.l2
        for i, xi in x.items():
            wzn = state.get(i)
            if wzn is None:
                wzn = state[i] = [0.0, 0.0, 0.0]
            w, z, n = wzn
            if abs(z) > l1:
                w = -(((beta + n ** 0.5) / alpha + l2) ** -1) * (z - math.copysign(l1, z))
            gi = loss_gradient * xi
            s = ((n + gi**2) ** 0.5 - n**0.5) / alpha
            wzn[0], wzn[1], wzn[2] = w, z + gi - s * w, n + gi**2


class RiverFtrlBaseline:
    """:class:`FtrlLogisticRegression` (River's FTRL-Proximal semantics), one example at a
    time.

    The features of a batch scored by :meth:`predict_many` are kept for the :meth:`learn_many` of
    the same batch that follows (progressive validation computes them once).
    """

    def __init__(self) -> None:
        self.model = FtrlLogisticRegression()
        self._cached: tuple[Sequence[TrainingExample], list[dict[str, float]]] | None = None

    def _features(self, examples: Sequence[TrainingExample]) -> list[dict[str, float]]:
        if self._cached is not None and self._cached[0] is examples:
            return self._cached[1]
        features = [river_features(x) for x in examples]
        self._cached = (examples, features)
        return features

    def predict_many(self, examples: Sequence[TrainingExample]) -> np.ndarray:
        """``B X 2`` float64: p_click, NaN."""
        out = np.full((len(examples), 2), np.nan)
        out[:, 0] = [self.model.proba(f) for f in self._features(examples)]
        return out

    def learn_many(self, examples: Sequence[TrainingExample]) -> None:
        """``learn_one`` on each example's click label, in order."""
        for x, f in zip(examples, self._features(examples)):
            self.model.learn_one(f, bool(x.click))
        self._cached = None


class MostPopular:
    """Scores an item by its ``c`` decayed clicks: ``(c + 1) / (c + 1 + POPULARITY_SCALE)``.

    >>> x = TrainingExample(example_id="e", user_id="u", item_id="i", event_time=0, click=1,
    ...                     purchase=0, features={})
    >>> pop = MostPopular()
    >>> before = pop.predict_many([x])[0, 0]
    >>> pop.learn_many([x] * 9)
    >>> round(float(before), 4), float(pop.predict_many([x])[0, 0])
    (0.0909, 0.5)
    """

    def __init__(self, half_life_ms: int = POPULARITY_HALF_LIFE_MS) -> None:
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
