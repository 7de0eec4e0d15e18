"""The baselines, and the contract every OnlineRanker (trainer, frozen copy, baselines) keeps."""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import pytest
import torch
from river import linear_model, optim

from config import Settings
from connectors.training_examples import TrainingExample
from features.state import HOUR_MS
from models.base import OnlineRanker
from models.baselines import (
    FTRL_ALPHA,
    FTRL_BETA,
    FTRL_L1,
    FTRL_L2,
    FtrlLogisticRegression,
    MostPopular,
    RiverFtrlBaseline,
    river_features,
)
from models.trainer import FrozenRanker, OnlineTrainer

torch.set_num_threads(1)
SETTINGS = Settings(hash_buckets=1009, embedding_dim=8, batch_size=64, learning_rate=0.1)


def stream(n: int, seed: int = 0) -> list[TrainingExample]:
    """Half the items are liked (clicked 80 % of the time), half are not (10 %)."""
    rng = random.Random(seed)
    out = []
    for k in range(n):
        item = rng.randrange(40)
        click = int(rng.random() < (0.8 if item % 2 else 0.1))
        out.append(TrainingExample(
            example_id=f"{seed}-{k}", user_id=f"u{rng.randrange(30)}", item_id=f"i{item}",
            category_id=None if k % 5 == 0 else f"c{item % 4}", event_time=60_000 * k,
            click=click, purchase=int(click and rng.random() < 0.2),
            features={"i_ctr": rng.random(), "u_secs_since_last": 604_800.0}))
    return out


def auc(y: np.ndarray, p: np.ndarray) -> float:
    pos, neg = p[y == 1], p[y == 0]
    return float(((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean())


def frozen() -> OnlineRanker:
    trainer = OnlineTrainer(SETTINGS)
    trainer.learn_many(stream(128, seed=9))
    return trainer.frozen_copy()


RANKERS: dict[str, Callable[[], OnlineRanker]] = {
    "trainer": lambda: OnlineTrainer(SETTINGS),
    "frozen": frozen,
    "ftrl": lambda: RiverFtrlBaseline(),
    "most_popular": lambda: MostPopular(),
}


# --- the shared contract ------------------------------------------------------------------------
@pytest.fixture(params=sorted(RANKERS))
def ranker(request: pytest.FixtureRequest) -> OnlineRanker:
    return RANKERS[request.param]()


def test_implements_the_protocol(ranker: OnlineRanker) -> None:
    assert isinstance(ranker, OnlineRanker)


def test_predict_many_shape_and_range(ranker: OnlineRanker) -> None:
    xs = stream(50)
    ranker.learn_many(stream(200, seed=1))
    p = ranker.predict_many(xs)
    assert p.shape == (50, 2) and p.dtype == np.float64
    assert ((p[:, 0] > 0) & (p[:, 0] < 1)).all()
    purchase = p[:, 1]
    assert np.isnan(purchase).all() or ((purchase >= 0) & (purchase <= p[:, 0])).all()
    assert ranker.predict_many([]).shape == (0, 2)


def test_predicting_does_not_learn(ranker: OnlineRanker) -> None:
    xs = stream(50)
    first = ranker.predict_many(xs)
    assert np.array_equal(ranker.predict_many(xs), first, equal_nan=True)


def test_learn_many_leaves_the_input_unchanged(ranker: OnlineRanker) -> None:
    xs = stream(100)
    before = [x.model_dump() for x in xs]
    ranker.learn_many(xs)
    assert [x.model_dump() for x in xs] == before


def test_learning_changes_predictions_except_when_frozen(ranker: OnlineRanker) -> None:
    xs = stream(100)
    before = ranker.predict_many(xs)
    ranker.learn_many(stream(300, seed=2))
    changed = not np.array_equal(ranker.predict_many(xs), before, equal_nan=True)
    assert changed == (not isinstance(ranker, FrozenRanker))


# --- the baselines ------------------------------------------------------------------------------
def progressive_auc(model: OnlineRanker, xs: list[TrainingExample]) -> float:
    scores = []
    for start in range(0, len(xs), 64):
        batch = xs[start:start + 64]
        scores.append(model.predict_many(batch)[:, 0])
        model.learn_many(batch)
    y = np.array([x.click for x in xs])
    half = len(xs) // 2
    return auc(y[half:], np.concatenate(scores)[half:])


@pytest.mark.parametrize("name", ["ftrl", "most_popular", "trainer"])
def test_rankers_learn_which_items_are_liked(name: str) -> None:
    assert progressive_auc(RANKERS[name](), stream(1_500)) > 0.75


def test_ftrl_has_no_purchase_head() -> None:
    assert np.isnan(RiverFtrlBaseline().predict_many(stream(3))[:, 1]).all()


def test_ftrl_matches_rivers_own_logistic_regression() -> None:
    """The faster dot product leaves the model as River's: same predictions, same weights."""
    ours = RiverFtrlBaseline()
    river = linear_model.LogisticRegression(
        optimizer=optim.FTRLProximal(alpha=FTRL_ALPHA, beta=FTRL_BETA, l1=FTRL_L1, l2=FTRL_L2))
    xs = stream(600, seed=3)
    got, expected = [], []
    for x in xs:
        got.append(ours.predict_many([x])[0, 0])
        expected.append(river.predict_proba_one(river_features(x))[True])
        ours.learn_many([x])
        river.learn_one(river_features(x), bool(x.click))
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    assert len(set(expected)) > 100  # it learned along the way
    def nonzero(weights: dict[str, float]) -> dict[str, float]:
        return {k: v for k, v in weights.items() if v}

    assert nonzero(ours.model.weights) == pytest.approx(nonzero(river.weights), rel=1e-9)


class CountedKey(str):
    """A feature name that counts how often it is hashed (looked up)."""

    lookups = 0

    def __hash__(self) -> int:
        CountedKey.lookups += 1
        return str.__hash__(self)

    __eq__ = str.__eq__


def lookups_of_an_unrelated_weight(model: linear_model.LogisticRegression
                                   | FtrlLogisticRegression) -> int:
    """How often 50 ``learn_one`` calls look up a weight none of their examples has."""
    if isinstance(model, FtrlLogisticRegression):
        model._state[CountedKey("user_id=elsewhere")] = [0.5, 0.0, 0.0]
    else:
        model._weights[CountedKey("user_id=elsewhere")] = 0.5
    CountedKey.lookups = 0
    for x in stream(50):
        model.learn_one(river_features(x), bool(x.click))
    return CountedKey.lookups


def test_ftrl_learning_looks_up_only_the_examples_weights() -> None:
    """A learn_one costs O(features of the example), not O(weights seen)."""
    assert lookups_of_an_unrelated_weight(RiverFtrlBaseline().model) == 0
    # River 0.23's own LogisticRegression looks up every weight on every call
    assert lookups_of_an_unrelated_weight(
        linear_model.LogisticRegression(optimizer=optim.FTRLProximal())) == 50


def test_river_features_one_hot_ids_and_log_dense() -> None:
    f = river_features(stream(1)[0])
    assert f["user_id=" + stream(1)[0].user_id] == 1.0 and f["category_id="] == 1.0
    assert f["u_secs_since_last"] == pytest.approx(np.log1p(604_800.0))
    assert f["i_clicks_1h"] == 0.0


def test_most_popular_decays_with_event_time() -> None:
    pop = MostPopular()
    click = stream(1)[0].model_copy(update={"click": 1, "event_time": 0, "item_id": "hot"})
    pop.learn_many([click] * 20)
    fresh = pop.predict_many([click])[0, 0]
    later = pop.predict_many([click.model_copy(update={"event_time": 3 * HOUR_MS})])[0, 0]
    unseen = pop.predict_many([click.model_copy(update={"item_id": "cold"})])[0, 0]
    assert fresh > later > unseen
