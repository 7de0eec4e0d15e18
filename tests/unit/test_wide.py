"""The wide part alone is River's FTRL-Proximal logistic regression on the same features."""

from __future__ import annotations

import math
import random

import pytest
import torch
from river import linear_model, optim

from config import Settings
from connectors.training_examples import TrainingExample
from features.schema import DENSE_FEATURES
from models.ranker import DENSE_INPUTS, WIDE_FIELDS, Ranker, encode_batch
from models.trainer import OnlineTrainer

torch.set_num_threads(1)
BUCKETS = 10_007


def stream(n: int, seed: int = 0) -> list[TrainingExample]:
    """Users, items and categories with a hidden click propensity; positions, prices and
    recent clicks where a real log has them."""
    rng = random.Random(seed)
    like = {f"i{k}": rng.random() for k in range(40)}
    out = []
    for k in range(n):
        item = f"i{rng.randrange(40)}"
        position = rng.randrange(8) if rng.random() < 0.8 else None
        p = like[item] * (0.5 if position and position > 3 else 1.0)
        out.append(TrainingExample(
            example_id=f"e{k}", user_id=f"u{rng.randrange(30)}", item_id=item,
            category_id=f"c{int(item[1:]) % 5}" if rng.random() < 0.9 else None,
            position=position, event_time=1_000 * k, click=int(rng.random() < p), purchase=0,
            price=round(rng.uniform(1, 90), 2) if rng.random() < 0.5 else None,
            recent_items=tuple(f"i{rng.randrange(40)}" for _ in range(rng.randrange(4))),
            features={name: rng.choice([0.0, rng.uniform(0, 50)]) for name in DENSE_FEATURES}))
    return out


def river_features(x: TrainingExample) -> dict[str, float]:
    """The wide part's inputs as River features: one-hot rows and log1p dense inputs."""
    batch = encode_batch([x], BUCKETS, training=True)
    out = {f"{field}={int(row)}": 1.0 for field, row in zip(WIDE_FIELDS, batch.wide[0])}
    out[f"position={int(batch.position[0])}"] = 1.0
    dense = batch.dense[0].double().clamp_min(0).tolist()
    return out | {name: math.log1p(v) for name, v in zip(DENSE_INPUTS, dense)}


@pytest.mark.parametrize("l1, batch_size", [(0.0, 1), (0.05, 1), (0.0, 64)])
def test_wide_part_alone_reproduces_rivers_ftrl(l1: float, batch_size: int) -> None:
    """Deep part off: every prediction (at the example's own position, before the batch is
    learned) equals River's FTRL-Proximal logistic regression fed the same features one by
    one, to 1e-6 over the stream, whatever the batch size."""
    settings = Settings(hash_buckets=BUCKETS, embedding_dim=4, batch_size=batch_size,
                        deep=False, wide_l1=l1)
    trainer = OnlineTrainer(settings)
    river = linear_model.LogisticRegression(optimizer=optim.FTRLProximal(
        alpha=settings.wide_alpha, beta=settings.wide_beta, l1=l1, l2=settings.wide_l2),
        intercept_lr=settings.wide_intercept_lr)
    xs = stream(640)
    worst = 0.0
    for start in range(0, len(xs), batch_size):
        batch = xs[start:start + batch_size]
        with torch.no_grad():
            ours = Ranker.probabilities(
                trainer.model(*encode_batch(batch, BUCKETS, training=True)))[:, 0].tolist()
        theirs = [river.predict_proba_one(river_features(x))[True] for x in batch]
        worst = max(worst, *(abs(a - b) for a, b in zip(ours, theirs)))
        trainer.learn_many(batch)
        for x in batch:
            river.learn_one(river_features(x), bool(x.click))
    assert worst < 1e-6
    assert trainer.model.wide.tables["item_id"].abs().sum() > 1  # it did learn


def test_scores_use_the_mean_position_weight() -> None:
    settings = Settings(hash_buckets=BUCKETS, embedding_dim=4, batch_size=64, deep=False)
    trainer = OnlineTrainer(settings)
    xs = stream(2_000, seed=1)
    scores = trainer.progressive(xs)
    position = trainer.model.wide.position[:, 0].double()
    rows = encode_batch(xs, BUCKETS, training=True).position
    counts = torch.bincount(rows, minlength=len(position)).double()
    assert float(position[-1]) == pytest.approx(float((counts * position).sum() / counts.sum()),
                                                abs=1e-6)
    assert position[4:8].mean() < position[0:4].mean()  # later positions are clicked less
    # A score does not depend on the position it was shown at.
    x = xs[0]
    moved = [x.model_copy(update={"position": p}) for p in (0, 5, None)]
    p = trainer.predict_many(moved)[:, 0]
    assert p[0] == p[1] == p[2]
    assert scores.shape == (2_000, 2)
