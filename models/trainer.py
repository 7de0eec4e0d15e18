"""The online trainer: learns the :class:`~models.ranker.Ranker` from examples as they arrive.

* Optimisers (Wide & Deep): the wide part by FTRL-Proximal with L1 on its own logit
  (:class:`WideFtrl`: River's ``FTRLProximal`` step for step, example by example; the
  intercept by River's plain SGD; ``settings.wide_*``), the deep part by one
  ``torch.optim.Adagrad`` (lr ``settings.learning_rate``) on ``wide + deep`` with the wide
  logit held fixed, over sparse-gradient embedding tables (only the rows in a batch are read
  and updated) and the dense MLPs; the fusion's weights by each branch's log loss
  (:class:`~models.ranker.FusionArch`).
* Threads: run it with ``torch.set_num_threads(1)``. The model is small; on the 2-core
  machine two intra-op threads made ``learn_many`` about 10x slower than one
  (``bench/bench_trainer.py --threads 2``).
* Deep loss (ESMM, over all impressions): ``BCE(p_click, click) + BCE(p_purchase,
  click*purchase)`` with the wide + deep branch's ``p_click``;
  the click logit is trained at the impression's own position, every score is made at
  :data:`~models.ranker.SERVING_POSITION`, whose weight is the impression-weighted mean of the
  position weights.
* Deterministic: weights are initialised from ``settings.seed``; two trainers fed the same
  batches hold the same weights and give the same predictions.
* Change tracking for deltas: the sparse rows (embeddings and wide weights) touched since the
  last ``take_touched_rows`` (per table) and whether the dense tensors changed since they were
  last published.
* Progressive validation (:meth:`OnlineTrainer.progressive`): each batch is scored, the online
  metrics are updated, then the trainer learns from it. Metrics per head (click, purchase):
  River's exact ``RollingROCAUC`` over the last :data:`ROLLING_WINDOW` examples; a cumulative
  AUC from binned score counts (:class:`BinnedAUC`: River's ``ROCAUC`` interpolates between a
  handful of probability thresholds, too coarse for click rates of a few percent); log loss,
  cumulative and rolling, vectorised per batch (:class:`LossMeans`: River's per-example
  ``Rolling(LogLoss)`` cost more than the training step). River's ``ADWIN`` on the per-example
  click log loss counts drifts (``drift_detected``).
"""

from __future__ import annotations

import copy
import io
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from river import drift, metrics
from torch import Tensor

from config import TrainerSettings
from connectors.training_examples import TrainingExample
from models.ranker import (
    SERVING_POSITION,
    WIDE_FIELDS,
    Batch,
    Ranker,
    WideArch,
    encode_batch,
    wide_inputs,
)

ROLLING_WINDOW = 10_000
"""Examples in the rolling metrics' window."""
HEADS = ("click", "purchase")
SPARSE_TABLES = Ranker.embedding_names()[:3]
WIDE_TABLES = Ranker.embedding_names()[3:-1]
POSITION_TABLE = Ranker.embedding_names()[-1]


class BinnedAUC:
    """Cumulative ROC AUC from counts of positives and negatives per score bin.

    Scores are binned on the logit scale (``bins`` bins over ``[-limit, limit]``); pairs in
    the same bin count half, so the error is bounded by the mass sharing a bin. Memory is
    constant and one update of a batch is a couple of ``np.bincount`` calls.

    >>> auc = BinnedAUC()
    >>> auc.update(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    >>> auc.get()
    0.75
    """

    def __init__(self, bins: int = 4096, limit: float = 12.0) -> None:
        self.bins, self.limit = bins, limit
        self.pos = np.zeros(bins, dtype=np.int64)
        self.neg = np.zeros(bins, dtype=np.int64)

    def update(self, y_true: np.ndarray, p: np.ndarray) -> None:
        """Count a batch of labels (0/1) and probabilities."""
        p = np.clip(p, 1e-12, 1 - 1e-12)
        logit = np.log(p) - np.log1p(-p)
        b = ((logit + self.limit) / (2 * self.limit) * self.bins).astype(np.int64)
        b = np.clip(b, 0, self.bins - 1)
        y = np.asarray(y_true) > 0
        self.pos += np.bincount(b[y], minlength=self.bins)
        self.neg += np.bincount(b[~y], minlength=self.bins)

    def get(self) -> float:
        """AUC so far (0.0 until both classes were seen, as River's metrics do)."""
        n_pos, n_neg = int(self.pos.sum()), int(self.neg.sum())
        if n_pos == 0 or n_neg == 0:
            return 0.0
        neg_below = np.cumsum(self.neg) - self.neg
        wins = (self.pos * neg_below).sum() + 0.5 * (self.pos * self.neg).sum()
        return float(wins / (n_pos * n_neg))


class LossMeans:
    """Mean per-example loss, over everything and over the last ``window`` examples.

    >>> m = LossMeans(window=2)
    >>> m.update(np.array([1.0, 2.0, 3.0]))
    >>> m.cumulative(), m.rolling()
    (2.0, 2.5)
    """

    def __init__(self, window: int = ROLLING_WINDOW) -> None:
        self._ring = np.zeros(window, dtype=np.float64)
        self._next = 0
        self._total = 0.0
        self._count = 0

    def update(self, losses: np.ndarray) -> None:
        """Add a batch of per-example losses."""
        self._total += float(losses.sum())
        self._count += len(losses)
        tail = losses[-len(self._ring):]
        self._ring[(self._next + np.arange(len(tail))) % len(self._ring)] = tail
        self._next = (self._next + len(tail)) % len(self._ring)

    def cumulative(self) -> float:
        """Mean over every example (0.0 before any)."""
        return self._total / self._count if self._count else 0.0

    def rolling(self) -> float:
        """Mean over the last ``window`` examples (0.0 before any)."""
        n = min(self._count, len(self._ring))
        return float(self._ring.sum() / n) if n else 0.0


def log_loss(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Per-example binary log loss, probabilities clamped to ``[1e-7, 1 - 1e-7]``.

    >>> log_loss(np.array([1.0, 0.0]), np.array([0.5, 0.5])).round(4).tolist()
    [0.6931, 0.6931]
    """
    q = np.clip(p, 1e-7, 1 - 1e-7)
    return -(y * np.log(q) + (1 - y) * np.log1p(-q))


class HeadMetrics:
    """Online metrics of one head: cumulative and rolling AUC and log loss."""

    def __init__(self) -> None:
        self.auc = BinnedAUC()
        self.auc_rolling = metrics.RollingROCAUC(window_size=ROLLING_WINDOW)
        self.logloss = LossMeans()

    def update(self, y: np.ndarray, p: np.ndarray) -> np.ndarray:
        """Score a batch of labels and probabilities; returns the per-example log losses."""
        self.auc.update(y, p)
        for yt, yp in zip((y > 0).tolist(), p.tolist()):
            self.auc_rolling.update(yt, yp)
        losses = log_loss(y, p)
        self.logloss.update(losses)
        return losses

    def as_dict(self, head: str) -> dict[str, float]:
        """``<head>_`` + ``auc``, ``auc_rolling``, ``logloss``, ``logloss_rolling``."""
        return {
            f"{head}_auc": self.auc.get(),
            f"{head}_auc_rolling": float(self.auc_rolling.get()),
            f"{head}_logloss": self.logloss.cumulative(),
            f"{head}_logloss_rolling": self.logloss.rolling(),
        }


def labels(examples: Sequence[TrainingExample]) -> Tensor:
    """``B X 2`` float32 targets: click, click * purchase (the CTCVR label)."""
    return torch.tensor([[x.click, x.click * x.purchase] for x in examples],
                        dtype=torch.float32).reshape(len(examples), 2)


def _predict(model: Ranker, examples: Sequence[TrainingExample], buckets: int) -> np.ndarray:
    if not examples:
        return np.zeros((0, 2), dtype=np.float64)
    with torch.no_grad():
        batch = encode_batch(examples, buckets)
        return Ranker.probabilities(model(*batch)).double().numpy()


class WideFtrl:
    """FTRL-Proximal for the wide part (McMahan et al., 2013), River's ``FTRLProximal`` rule,
    one example at a time.

    For each example of a batch, in order: its logit (the wide part's, plus the deep part's
    fixed ``offset`` where given) at the weights the examples before it left, the log loss
    gradient ``g = p - y``, the intercept by SGD (``b -= intercept_lr * g``), then per
    coordinate ``i`` of the example (its hashed rows, its position, every dense input ``x_i``):
    ``w_i = -(z_i - sign(z_i) l1) / ((beta + sqrt(n_i)) / alpha + l2)`` where ``|z_i| > l1``
    (elsewhere ``w_i`` keeps its value, as in River: a coordinate whose ``|z|`` never passes
    ``l1`` stays at 0), then ``z_i += g_i - (sqrt(n_i + g_i^2) - sqrt(n_i)) / alpha * w_i`` and
    ``n_i += g_i^2`` with ``g_i = g * x_i``. This is River's
    ``LogisticRegression(optimizer=FTRLProximal(...))`` step for step, whatever the batch size
    (one FTRL step per batch, on the summed gradient, learned far slower). The batch's rows
    are gathered once into Python floats and written back once; state is float64.
    """

    def __init__(self, wide: WideArch, settings: TrainerSettings) -> None:
        self.alpha, self.beta = settings.wide_alpha, settings.wide_beta
        self.l1, self.l2 = settings.wide_l1, settings.wide_l2
        self.intercept_lr = settings.wide_intercept_lr
        self.state = {name: (torch.zeros(p.shape, dtype=torch.float64),
                             torch.zeros(p.shape, dtype=torch.float64))
                      for name, p in wide.named_parameters() if name != "bias"}
        self.position_counts = torch.zeros(SERVING_POSITION, dtype=torch.float64)
        self.dense_pending: list[int] = []
        """Dense inputs updated at the last example that had them (their w is set again at
        the next example, as River does)."""

    def step(self, wide: WideArch, batch: Batch, click: Tensor,
             offset: Tensor | None = None) -> None:
        """Learn ``batch`` (``B`` labels ``click``; ``offset``: ``B`` logits added to the wide
        part's, e.g. the deep part's) in order, updating ``wide`` in place."""
        alpha, beta, l1, l2, lr = self.alpha, self.beta, self.l1, self.l2, self.intercept_lr
        tables = [(f"tables.{f}", wide.tables[f], batch.wide[:, k])
                  for k, f in enumerate(WIDE_FIELDS)]
        tables.append(("position", wide.position, batch.position))
        cells: list[dict[int, list[float]]] = []  # per table: row -> [w, z, n]
        gathered = []
        for name, table, rows in tables:
            unique = rows.unique()
            z, n = self.state[name]
            cells.append(dict(zip(unique.tolist(), map(list, zip(
                table.data[unique, 0].tolist(), z[unique, 0].tolist(), n[unique, 0].tolist())))))
            gathered.append(unique)
        per_example = [[cells[t][r] for t, r in enumerate(rows)]
                       for rows in zip(*(rows.tolist() for _, _, rows in tables))]
        dz, dn = self.state["dense"]
        dense = [[w, z, n] for w, z, n in zip(wide.dense.data.tolist(), dz.tolist(), dn.tolist())]
        bias = float(wide.bias)
        xs = wide_inputs(batch.dense).double().tolist()
        ys = click.tolist()
        offsets = offset.tolist() if offset is not None else [0.0] * len(ys)
        sqrt, copysign, exp = math.sqrt, math.copysign, math.exp
        pending = self.dense_pending  # dense inputs whose w_i River would catch up next
        for coords, x, y, off in zip(per_example, xs, ys, offsets):
            nonzero = [(j, xi) for j, xi in enumerate(x) if xi]
            logit = bias + off + sum([c[0] for c in coords]) + sum(
                [dense[j][0] * xi for j, xi in nonzero])
            sign = 1.0 if y > 0 else -1.0
            g = -sign / (exp(logit * sign) + 1.0)
            bias -= lr * g
            # River sets every w_i of the example (a dense input of value 0 too) from its z_i
            # and n_i, then updates z_i and n_i of the non-zero ones; a w_i whose z_i and n_i
            # did not change since it was last set stays what it is, so only the inputs
            # updated at their last example need it again, and of those the ones of value 0
            # here (the others are set below, from the same z_i and n_i).
            for j in pending:
                if not x[j]:
                    c = dense[j]
                    if abs(c[1]) > l1:
                        c[0] = -(c[1] - copysign(l1, c[1])) / ((beta + sqrt(c[2])) / alpha + l2)
            pending = []
            for c in coords:
                wi, zi, ni = c
                root = sqrt(ni)
                if abs(zi) > l1:
                    wi = -(zi - copysign(l1, zi)) / ((beta + root) / alpha + l2)
                s = (sqrt(ni + g * g) - root) / alpha
                c[0], c[1], c[2] = wi, zi + (g - s * wi), ni + g * g
            for j, xi in nonzero:
                c = dense[j]
                wi, zi, ni = c
                root = sqrt(ni)
                if abs(zi) > l1:
                    wi = -(zi - copysign(l1, zi)) / ((beta + root) / alpha + l2)
                gi = g * xi
                s = (sqrt(ni + gi * gi) - root) / alpha
                c[0], c[1], c[2] = wi, zi + (gi - s * wi), ni + gi * gi
                pending.append(j)
        self.dense_pending = pending
        for (name, table, _), unique, cell in zip(tables, gathered, cells):
            values = torch.tensor([cell[r] for r in unique.tolist()], dtype=torch.float64)
            z, n = self.state[name]
            table.data[unique, 0] = values[:, 0].float()
            z[unique, 0], n[unique, 0] = values[:, 1], values[:, 2]
        values = torch.tensor(dense, dtype=torch.float64)
        wide.dense.data.copy_(values[:, 0])
        dz.copy_(values[:, 1])
        dn.copy_(values[:, 2])
        wide.bias.data.fill_(bias)
        self.position_counts += torch.bincount(batch.position, minlength=SERVING_POSITION)[
            :SERVING_POSITION].double()
        weights = wide.position.data[:SERVING_POSITION, 0].double()
        wide.position.data[SERVING_POSITION, 0] = (
            (self.position_counts * weights).sum() / self.position_counts.sum())

    def state_dict(self) -> dict[str, Tensor]:
        """The FTRL state by name (for checkpoints)."""
        out = {f"{name}.z": z for name, (z, _) in self.state.items()}
        out |= {f"{name}.n": n for name, (_, n) in self.state.items()}
        pending = torch.zeros(len(self.state["dense"][0]), dtype=torch.bool)
        pending[self.dense_pending] = True
        return out | {"position_counts": self.position_counts, "dense_pending": pending}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore :meth:`state_dict`."""
        for name, (z, n) in self.state.items():
            z.copy_(state[f"{name}.z"])
            n.copy_(state[f"{name}.n"])
        self.position_counts.copy_(state["position_counts"])
        self.dense_pending = state["dense_pending"].nonzero().flatten().tolist()


class FrozenRanker:
    """A copy of a trainer's model that scores but never learns (the frozen baseline)."""

    def __init__(self, model: Ranker) -> None:
        self.model = model
        self._buckets = model.hparams["hash_buckets"]

    def predict_many(self, examples: Sequence[TrainingExample]) -> np.ndarray:
        """``B X 2`` float64 (p_click, p_purchase)."""
        return _predict(self.model, examples, self._buckets)

    def learn_many(self, examples: Sequence[TrainingExample]) -> None:
        """Nothing: the model stays as it was when frozen."""


class OnlineTrainer:
    """Learns a :class:`Ranker` online in mini-batches of ``settings.batch_size``.

    Implements :class:`~models.base.OnlineRanker`. Attributes: ``model``, ``examples_seen``
    (examples learned), ``watermark_ms`` (max event time learned; 0 before any),
    ``drift_detected`` (ADWIN drifts seen by :meth:`progressive`), ``dense_changed``.
    ``online_metrics=False`` keeps no online metrics (for a caller that measures the scores
    itself, as ``evaluate`` does); the scores and the learning are the same.
    """

    def __init__(self, settings: TrainerSettings, *, online_metrics: bool = True) -> None:
        self.settings = settings
        self.online_metrics = online_metrics
        # Adagrad builds sparse gradients; opting out of invariant checks (torch's default)
        # explicitly keeps torch from warning about it.
        torch.sparse.check_sparse_tensor_invariants.disable()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed)
            self.model = Ranker.from_settings(settings)
        self.optimizer = torch.optim.Adagrad(
            [p for p in self.model.parameters() if p.requires_grad], lr=settings.learning_rate)
        self.ftrl = WideFtrl(self.model.wide, settings)
        self._buckets = settings.hash_buckets
        state = self.model.state_dict()
        self._touched = {name: torch.zeros(len(state[name]), dtype=torch.bool)
                         for name in Ranker.embedding_names()}
        self.dense_changed = False
        self.examples_seen = 0
        self.watermark_ms = 0
        self.drift_detected = 0
        self._scored = 0
        self._heads = {head: HeadMetrics() for head in HEADS}
        self._adwin = drift.ADWIN()

    # --- OnlineRanker -------------------------------------------------------------------------
    def predict_many(self, examples: Sequence[TrainingExample]) -> np.ndarray:
        """``B X 2`` float64 (p_click, p_purchase) with the current weights."""
        return _predict(self.model, examples, self._buckets)

    def learn_many(self, examples: Sequence[TrainingExample]) -> None:
        """One Adagrad step per ``batch_size`` slice of ``examples``, in order."""
        for start in range(0, len(examples), self.settings.batch_size):
            self._step(examples[start:start + self.settings.batch_size])

    # --- progressive validation ------------------------------------------------------------
    def progressive(self, examples: Sequence[TrainingExample]) -> np.ndarray:
        """Score each batch, update the online metrics (if kept), then learn from it;
        ``B X 2`` scores.

        Each ``batch_size`` slice is scored by the weights that learned every slice before it
        (one forward pass serves both the score and the update).
        """
        out = []
        for start in range(0, len(examples), self.settings.batch_size):
            batch = examples[start:start + self.settings.batch_size]
            p = self._step(batch)
            if self.online_metrics:
                self._observe(batch, p)
            out.append(p)
        return np.concatenate(out) if out else np.zeros((0, 2), dtype=np.float64)

    def metrics(self) -> dict[str, float]:
        """The online metrics by name (see the module docstring), plus counters."""
        result: dict[str, float] = {"examples": float(self.examples_seen),
                                    "scored": float(self._scored),
                                    "drift_detected": float(self.drift_detected)}
        for head, m in self._heads.items():
            result |= m.as_dict(head)
        return result

    def frozen_copy(self) -> FrozenRanker:
        """A copy of the current model that no longer learns."""
        return FrozenRanker(copy.deepcopy(self.model))

    # --- change tracking for deltas ---------------------------------------------------------
    def take_touched_rows(self) -> dict[str, Tensor]:
        """Sorted int64 row indices touched per embedding table since the last call (resets)."""
        rows = {name: mask.nonzero().flatten() for name, mask in self._touched.items()}
        for mask in self._touched.values():
            mask.zero_()
        return rows

    def dense_published(self) -> None:
        """The dense tensors as they are now went out: clear ``dense_changed``."""
        self.dense_changed = False

    # --- restart -------------------------------------------------------------------------------
    def checkpoint(self) -> bytes:
        """Optimiser state and counters (``torch.save``; local trusted storage, never the wire)."""
        buf = io.BytesIO()
        torch.save({"optimizer": self.optimizer.state_dict(), "ftrl": self.ftrl.state_dict(),
                    "examples_seen": self.examples_seen, "watermark_ms": self.watermark_ms}, buf)
        return buf.getvalue()

    def restore(self, weights: dict[str, Tensor], checkpoint: bytes | None = None) -> None:
        """Load published weights (and, when given, a :meth:`checkpoint` of the same version).

        Resets the change tracking; online metrics start afresh.
        """
        self.model.load_state_dict(weights)
        if checkpoint is not None:
            saved = torch.load(io.BytesIO(checkpoint), weights_only=True)
            self.optimizer.load_state_dict(saved["optimizer"])
            self.ftrl.load_state_dict(saved["ftrl"])
            self.examples_seen = int(saved["examples_seen"])
            self.watermark_ms = int(saved["watermark_ms"])
        self.take_touched_rows()
        self.dense_changed = True

    # --- internals -----------------------------------------------------------------------------
    def _step(self, batch: Sequence[TrainingExample]) -> np.ndarray:
        """One step on ``batch``: Adagrad for the deep part (on top of the wide logit), the
        fusion's weights, FTRL for the wide part (example by example); returns the batch's
        ``B X 2`` scores, made at the serving position, from before the step."""
        encoded = self.model.visible(encode_batch(batch, self._buckets, training=True))
        y = labels(batch)
        deep = self.model.deep_logits(encoded.sparse, encoded.dense, encoded.recent_items,
                                      encoded.recent_categories)
        wide = self.model.wide(encoded.wide, encoded.position, encoded.dense).detach()
        fusion = self.model.fusion
        branches = torch.stack([wide, wide + deep[:, 0]], dim=1)  # B X 2 click logits
        position = self.model.wide.position.detach()[:, 0]
        shift = position[SERVING_POSITION] - position[encoded.position]
        served = branches.detach() + shift.unsqueeze(1)
        click_score = fusion.mix(served) if self.settings.deep else served[:, 0]
        scores = torch.stack([click_score, deep[:, 1].detach()], dim=1)
        if self.settings.deep:
            p_click = torch.sigmoid(branches[:, 1])
            p_purchase = p_click * torch.sigmoid(deep[:, 1])
            loss = (F.binary_cross_entropy_with_logits(branches[:, 1], y[:, 0])
                    + F.binary_cross_entropy(p_purchase, y[:, 1]))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            fusion.update(branches.detach().double(), y[:, 0].double())
        # The wide part is FTRL on its own logit (the deep part learns on top of it), one
        # example at a time as River's.
        self.ftrl.step(self.model.wide, encoded, y[:, 0].double())
        self._track(encoded)
        self.dense_changed = True
        self.examples_seen += len(batch)
        self.watermark_ms = max(self.watermark_ms, max(x.event_time for x in batch))
        return Ranker.probabilities(scores.detach()).double().numpy()

    def _track(self, encoded: Batch) -> None:
        touched = self._touched
        for i, field in enumerate(SPARSE_TABLES):
            touched[field][encoded.sparse[:, i]] = True
        for rows, field in ((encoded.recent_items, SPARSE_TABLES[1]),
                            (encoded.recent_categories, SPARSE_TABLES[2])):
            touched[field][rows[rows >= 0]] = True
        for i, field in enumerate(WIDE_TABLES):
            touched[field][encoded.wide[:, i]] = True
        touched[POSITION_TABLE][encoded.position] = True
        touched[POSITION_TABLE][SERVING_POSITION] = True

    def _observe(self, batch: Sequence[TrainingExample], p: np.ndarray) -> None:
        y = labels(batch).numpy().astype(np.float64)
        losses = self._heads["click"].update(y[:, 0], p[:, 0])
        self._heads["purchase"].update(y[:, 1], p[:, 1])
        for loss in losses.tolist():
            self._adwin.update(loss)
            self.drift_detected += int(self._adwin.drift_detected)
        self._scored += len(batch)

