"""The online trainer: determinism, learning, progressive validation, change tracking, restarts."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from config import Settings
from connectors.training_examples import TrainingExample
from models.ranker import Ranker, hash_id
from models.trainer import BinnedAUC, LossMeans, OnlineTrainer

torch.set_num_threads(1)
SETTINGS = Settings(hash_buckets=1009, embedding_dim=8, batch_size=64, learning_rate=0.1, seed=3)


def separable(n: int, seed: int = 0, flip: bool = False) -> list[TrainingExample]:
    """Users and items in two hidden groups; a click exactly when the groups match."""
    rng = random.Random(seed)
    group = {f"{kind}{k}": rng.random() < 0.5 for kind in "ui" for k in range(50)}
    out = []
    for k in range(n):
        user, item = f"u{rng.randrange(50)}", f"i{rng.randrange(50)}"
        click = int((group[user] == group[item]) != flip)
        out.append(TrainingExample(
            example_id=f"{seed}-{k}", user_id=user, item_id=item, category_id=f"c{item[-1]}",
            event_time=1_000 * k, click=click, purchase=int(click and rng.random() < 0.3),
            features={"i_ctr": 0.1, "u_secs_since_last": float(rng.randrange(1000))}))
    return out


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """Exact AUC by comparing every positive with every negative."""
    pos, neg = p[y == 1], p[y == 0]
    return float(((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean())


def test_same_seed_same_predictions() -> None:
    xs = separable(640)
    a, b = OnlineTrainer(SETTINGS), OnlineTrainer(SETTINGS)
    assert np.array_equal(a.predict_many(xs[:64]), b.predict_many(xs[:64]))
    a.learn_many(xs)
    b.learn_many(xs)
    assert np.array_equal(a.predict_many(xs[:64]), b.predict_many(xs[:64]))
    other = OnlineTrainer(SETTINGS.model_copy(update={"seed": 4}))
    other.learn_many(xs)
    assert not np.array_equal(a.predict_many(xs[:64]), other.predict_many(xs[:64]))


def test_without_online_metrics_the_scores_and_weights_are_the_same() -> None:
    xs = separable(640)
    kept, left_out = OnlineTrainer(SETTINGS), OnlineTrainer(SETTINGS, online_metrics=False)
    assert np.array_equal(kept.progressive(xs), left_out.progressive(xs))
    for a, b in zip(kept.model.state_dict().values(), left_out.model.state_dict().values()):
        assert torch.equal(a, b)
    assert kept.metrics()["scored"] == 640 and left_out.metrics()["scored"] == 0


def test_predictions_shape_and_range() -> None:
    p = OnlineTrainer(SETTINGS).predict_many(separable(10))
    assert p.shape == (10, 2) and p.dtype == np.float64
    assert ((p > 0) & (p < 1)).all() and (p[:, 1] <= p[:, 0]).all()


def test_trainer_learns_a_separable_stream() -> None:
    trainer = OnlineTrainer(SETTINGS)
    xs = separable(5_000)
    trainer.learn_many(xs[:4_000])
    p = trainer.progressive(xs[4_000:])
    y = np.array([x.click for x in xs[4_000:]])
    assert auc(y, p[:, 0]) > 0.9
    ctcvr = np.array([x.click * x.purchase for x in xs[4_000:]])
    assert auc(ctcvr, p[:, 1]) > 0.65


def test_progressive_scores_before_learning() -> None:
    xs = separable(128)
    a, b = OnlineTrainer(SETTINGS), OnlineTrainer(SETTINGS)
    first = b.predict_many(xs[:64])
    b.learn_many(xs[:64])
    second = b.predict_many(xs[64:])
    assert np.allclose(a.progressive(xs), np.concatenate([first, second]), rtol=0, atol=1e-6)
    assert a.examples_seen == 128 and a.watermark_ms == xs[-1].event_time


def test_metrics_follow_the_stream() -> None:
    trainer = OnlineTrainer(SETTINGS)
    trainer.progressive(separable(3_000))
    m = trainer.metrics()
    assert m["examples"] == m["scored"] == 3_000
    for key in ("click_auc", "click_auc_rolling", "purchase_auc", "purchase_auc_rolling"):
        assert 0.5 < m[key] <= 1.0, key
    # fewer examples than the rolling window: the rolling loss is the cumulative one
    assert m["click_logloss_rolling"] == pytest.approx(m["click_logloss"], rel=1e-9)
    assert 0.0 < m["click_logloss"] < 0.7


def test_adwin_flags_a_label_flip() -> None:
    trainer = OnlineTrainer(SETTINGS)
    trainer.progressive(separable(3_000))
    before = trainer.drift_detected
    trainer.progressive(separable(1_000, flip=True))
    assert trainer.drift_detected > before
    assert trainer.metrics()["drift_detected"] == trainer.drift_detected


def test_touched_rows_and_dense_changes_are_tracked() -> None:
    trainer = OnlineTrainer(SETTINGS)
    assert not trainer.dense_changed
    xs = separable(64)
    trainer.learn_many(xs)
    rows = trainer.take_touched_rows()
    assert set(rows) == set(Ranker.embedding_names())
    for field in ("user_id", "item_id"):
        expected = sorted({hash_id(getattr(x, field), 1009) for x in xs})
        assert rows[f"sparse.tables.{field}.weight"].tolist() == expected
    assert trainer.dense_changed
    trainer.dense_published()
    assert not trainer.dense_changed
    assert all(len(r) == 0 for r in trainer.take_touched_rows().values())


def test_only_touched_rows_change() -> None:
    trainer = OnlineTrainer(SETTINGS)
    # A fresh model's deep output layer is zero and FTRL sets a weight from the state before
    # the step, so the first step moves neither embeddings nor wide rows: warm up first.
    trainer.learn_many(separable(64, seed=1) * 2)
    trainer.take_touched_rows()
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.learn_many(separable(64, seed=1))
    rows = trainer.take_touched_rows()
    for name, idx in rows.items():
        after = trainer.model.state_dict()[name]
        untouched = torch.ones(len(after), dtype=torch.bool)
        untouched[idx] = False
        assert torch.equal(after[untouched], before[name][untouched])
        assert not torch.equal(after[idx], before[name][idx])


def test_frozen_copy_stops_learning() -> None:
    trainer = OnlineTrainer(SETTINGS)
    xs = separable(256)
    trainer.learn_many(xs)
    frozen = trainer.frozen_copy()
    before = frozen.predict_many(xs[:32])
    assert np.array_equal(before, trainer.predict_many(xs[:32]))
    frozen.learn_many(xs)
    trainer.learn_many(xs)
    assert np.array_equal(frozen.predict_many(xs[:32]), before)
    assert not np.array_equal(trainer.predict_many(xs[:32]), before)


def test_checkpoint_restores_the_optimiser() -> None:
    xs = separable(512)
    original = OnlineTrainer(SETTINGS)
    original.learn_many(xs[:256])
    restarted = OnlineTrainer(SETTINGS.model_copy(update={"seed": 99}))
    restarted.restore({k: v.clone() for k, v in original.model.state_dict().items()},
                      original.checkpoint())
    assert (restarted.examples_seen, restarted.watermark_ms) == (256, xs[255].event_time)
    original.learn_many(xs[256:])
    restarted.learn_many(xs[256:])
    assert np.array_equal(original.predict_many(xs), restarted.predict_many(xs))


def test_binned_auc_matches_the_exact_auc() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(5_000) < 0.1
    p = 1 / (1 + np.exp(-(rng.normal(size=5_000) + 1.5 * y - 2.5)))
    metric = BinnedAUC()
    for start in range(0, 5_000, 256):
        metric.update(y[start:start + 256], p[start:start + 256])
    assert metric.get() == pytest.approx(auc(y.astype(int), p), abs=1e-3)
    assert BinnedAUC().get() == 0.0


def test_loss_means_window() -> None:
    m = LossMeans(window=3)
    m.update(np.array([1.0, 1.0]))
    m.update(np.array([4.0, 4.0, 4.0, 7.0]))
    assert m.cumulative() == pytest.approx(21 / 6)
    assert m.rolling() == pytest.approx(5.0)
