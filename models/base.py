"""The contract every online ranker evaluated side by side implements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from connectors.training_examples import TrainingExample


@runtime_checkable
class OnlineRanker(Protocol):
    """Scores examples and learns from them, one mini-batch at a time.

    Progressive validation calls ``predict_many`` on a batch before ``learn_many`` on it.
    """

    def predict_many(self, examples: Sequence[TrainingExample]) -> np.ndarray:
        """``B X 2`` float64: columns p_click, p_purchase (NaN where a model has no such head)."""
        ...

    def learn_many(self, examples: Sequence[TrainingExample]) -> None:
        """Learn from labelled examples (the examples themselves are left unchanged)."""
        ...
