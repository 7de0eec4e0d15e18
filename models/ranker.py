"""The ranking model: Wide & Deep over hashed IDs, their crosses, recent clicks and dense inputs.

One model, two parts whose logits add up (Cheng et al., 2016), trained together on every
batch (:mod:`models.trainer`): the wide part as a logistic regression of its own, the deep
part on top of the wide logit (it learns what the linear model misses):

* **Wide** (:class:`WideArch`): a logistic regression over one-hot hashed IDs — user, item,
  category, user x item, user x category — the impression's position and the ``log1p`` of the
  dense inputs; trained with FTRL-Proximal and L1. Its weights per ID are rows of ``D = 1``
  tables, so deltas carry the rows touched like embedding rows (:meth:`Ranker.embedding_names`).
* **Deep** (DLRM/DeepFM style): hashed ID embeddings for user, item and category, mean-pooled
  embeddings of the user's recent clicked items and categories (sharing the item and category
  tables), a dense arch, the pairwise dot interaction and an MLP with two outputs (ctr, cvr);
  trained with Adagrad. Its last layer starts at zero, so a fresh model *is* its wide part.

**Fusion** (:class:`FusionArch`): ``p_click = pi * sigmoid(wide) + (1 - pi) * sigmoid(wide +
deep_ctr)``, ``pi`` following whichever branch predicted better lately; a fresh model is its
wide part. Heads (ESMM): ``p_purchase = p_click * sigmoid(deep_cvr)``, so the purchase head is
learned over all impressions.

**Position** enters the wide part only, as one additive weight per position (clamped at
``POSITIONS - 1``; a training example without a position uses :data:`UNKNOWN_POSITION`).
Scoring uses a fixed position, :data:`SERVING_POSITION`, whose weight the trainer keeps at the
mean position weight of the training impressions: the score ranks as at a position-free slot
and stays calibrated on average. :func:`encode_batch` scores every object at that position;
the trainer encodes with ``training=True`` to learn at each impression's own position.

Shape letters: ``B`` batch size, ``F`` deep ID fields (:data:`SPARSE_FIELDS`: 3), ``W`` hashed
wide fields (:data:`WIDE_FIELDS`: 5), ``L`` recent clicks kept (:data:`RECENT`), ``D``
embedding dimension, ``N`` dense inputs (:data:`DENSE_INPUTS`), ``V`` vectors interacted
(``F + 2 + 1``: IDs, the two pooled histories, the dense arch's output).

* IDs are hashed with ``zlib.crc32`` (stable across processes) into ``hash_buckets`` rows per
  table; a missing ID is the empty string (row 0); a cross with a missing side is row 0.
* Dense inputs: :data:`features.schema.DENSE_FEATURES` (missing -> 0), then ``log1p(price)``,
  whether a price is known, whether the item is among the user's recent clicked items, and
  the query–item text features :data:`features.query_item.QUERY_ITEM_FEATURES` (0 without a
  query); clamped at 0 and ``log1p``-squashed inside the model. A model built with
  ``text=False`` leaves the text columns out (:meth:`Ranker.visible`): same encoder, fewer
  inputs.

>>> model = Ranker(hash_buckets=101, embedding_dim=4)
>>> x = TrainingExample(example_id="e", user_id="u", item_id="i", event_time=0, click=0,
...                     purchase=0, features={"i_ctr": 0.1}, recent_items=("j", "i"))
>>> batch = encode_batch([x, x], 101)
>>> batch.sparse.shape, batch.dense.shape, model(*batch).shape
(torch.Size([2, 3]), torch.Size([2, 22]), torch.Size([2, 2]))
>>> p = model.probabilities(model(*batch))
>>> bool(((p[:, 1] <= p[:, 0]) & (p > 0) & (p < 1)).all())
True
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from config import TrainerSettings
from connectors.training_examples import TrainingExample
from features.query_item import QUERY_ITEM_FEATURES
from features.schema import DENSE_FEATURES
from features.state import LAST_N

SPARSE_FIELDS: tuple[str, ...] = ("user_id", "item_id", "category_id")
"""The deep part's hashed ID fields, in the order of the sparse index columns."""
WIDE_FIELDS: tuple[str, ...] = ("user_id", "item_id", "category_id", "user_item",
                                "user_category")
"""The wide part's hashed fields (IDs and crosses), in the order of the wide index columns."""
POSITIONS = 32
"""Position rows: ``0 .. POSITIONS - 1`` (later positions share the last)."""
UNKNOWN_POSITION = POSITIONS
"""The position row of a training example that has no position."""
SERVING_POSITION = POSITIONS + 1
"""The fixed position every score uses (see the module docstring)."""
RECENT = LAST_N
"""Recent clicked items (and categories) pooled."""
DENSE_INPUTS: tuple[str, ...] = (*DENSE_FEATURES, "price", "has_price", "item_in_recent",
                                  *QUERY_ITEM_FEATURES)
"""The dense inputs, in column order (the text features last)."""
FUSION_DECAY = 1e-4
"""The fusion forgets a branch's past log loss at this rate per example (about the last 10k)."""
LINEAR_PRIOR = 8.0
"""The fusion starts this many nats of log loss in favour of the linear branch."""
HIDDEN = 64
"""Width of the dense arch and of the over arch's first layer."""
INIT_STD = 0.01
"""Standard deviation of the initial embedding rows."""


HASH_CACHE = 1 << 18
"""IDs whose rows are remembered per table size (users, items and categories repeat across
examples and requests; at most ≈ 40 MB for each size in use, and a process uses one).
Crosses are not: pairs rarely repeat, and a cache miss costs ≈ 3x the hash."""


def hash_id(value: str | None, buckets: int) -> int:
    """Stable row of an ID in a table of ``buckets`` rows (a missing ID is row 0).

    >>> hash_id("item-42", 1000), hash_id(None, 1000)
    (728, 0)
    """
    return id_rows(buckets)(value)


@functools.lru_cache(maxsize=8)
def id_rows(buckets: int) -> Callable[[str | None], int]:
    """:func:`hash_id` for a fixed ``buckets``, remembered per ID: a one-argument cache looks
    a string up without building a key tuple, so ``map(id_rows(b), ids)`` costs a fraction of
    a ``hash_id`` call per ID."""

    @functools.lru_cache(maxsize=HASH_CACHE)
    def row(value: str | None) -> int:
        return zlib.crc32((value or "").encode()) % buckets

    return row


def hash_cross(a: str | None, b: str | None, buckets: int) -> int:
    """Stable row of the pair ``(a, b)``; row 0 when either is missing.

    >>> hash_cross("u", "i", 1000) == hash_cross("i", "u", 1000), hash_cross("u", None, 1000)
    (False, 0)
    """
    return hash_crosses([a], [b], buckets)[0]


def hash_crosses(a: Sequence[str | None], b: Sequence[str | None], buckets: int) -> list[int]:
    """:func:`hash_cross` of each pair ``(a[j], b[j])`` (one comprehension: a call per pair
    costs as much as the hash).

    >>> hash_crosses(["u", "u", None], ["i", "j", "i"], 1000)[2]
    0
    """
    crc = zlib.crc32
    return [crc(f"{x}\x1f{y}".encode()) % buckets if x and y else 0 for x, y in zip(a, b)]


def position_row(position: int | None) -> int:
    """The position table's row of a training impression's position.

    >>> position_row(0), position_row(500), position_row(None) == UNKNOWN_POSITION
    (0, 31, True)
    """
    return UNKNOWN_POSITION if position is None else min(max(position, 0), POSITIONS - 1)


class Batch(NamedTuple):
    """Encoded objects; ``model(*batch)`` scores them."""

    sparse: Tensor
    """``B X F`` int64 rows of the deep ID tables."""
    dense: Tensor
    """``B X N`` float32 raw dense inputs (:data:`DENSE_INPUTS`; a ``text=False`` model reads
    the first ``N - len(QUERY_ITEM_FEATURES)``)."""
    wide: Tensor
    """``B X W`` int64 rows of the wide tables (:data:`WIDE_FIELDS`)."""
    position: Tensor
    """``B`` int64 row of the position table."""
    recent_items: Tensor
    """``B X L`` int64 rows of the item table, ``-1`` where there is none."""
    recent_categories: Tensor
    """``B X L`` int64 rows of the category table, ``-1`` where there is none."""


def _recent(ids: Sequence[str], buckets: int) -> list[int]:
    rows = list(map(id_rows(buckets), ids[:RECENT]))
    return rows + [-1] * (RECENT - len(rows))


def encode_batch(objects: Sequence[Any], hash_buckets: int, training: bool = False) -> Batch:
    """The encoder of training examples: objects -> :class:`Batch` (:func:`encode_columns`).

    Reads ``user_id``, ``item_id``, ``category_id``, ``position`` and ``features`` (a dict of
    :data:`features.schema.DENSE_FEATURES` and, where the impression had a query,
    :data:`~features.query_item.QUERY_ITEM_FEATURES`), and, where present, ``price``, ``recent_items``
    and ``recent_categories`` (the user's ``last_items``/``last_categories``, newest first):
    a :class:`~connectors.training_examples.TrainingExample` or any object with those attributes.
    Every object is scored at :data:`SERVING_POSITION`, except with ``training``: then at its
    own position (:func:`position_row`).
    """
    dense = [[x.features.get(name, 0.0) for name in DENSE_FEATURES] for x in objects]
    text = [[x.features.get(name, 0.0) for name in QUERY_ITEM_FEATURES] for x in objects]
    return encode_columns(
        [x.user_id for x in objects], [x.item_id for x in objects],
        [x.category_id for x in objects],
        np.array(dense, dtype=np.float64).reshape(len(objects), len(DENSE_FEATURES)),
        [getattr(x, "price", None) for x in objects],
        [getattr(x, "recent_items", ()) or () for x in objects],
        [getattr(x, "recent_categories", ()) or () for x in objects],
        [getattr(x, "position", None) for x in objects] if training else None, hash_buckets,
        np.array(text, dtype=np.float32).reshape(len(objects), len(QUERY_ITEM_FEATURES)))


def encode_columns(user_ids: Sequence[str], item_ids: Sequence[str],
                   category_ids: Sequence[str | None], dense: np.ndarray,
                   prices: Sequence[float | None], recent_items: Sequence[Sequence[str]],
                   recent_categories: Sequence[Sequence[str]],
                   positions: Sequence[int | None] | None, hash_buckets: int,
                   text: np.ndarray | None = None) -> Batch:
    """The one encoder of training and serving: row ``j`` of each column -> row ``j`` of a
    :class:`Batch`. ``dense`` is ``B X len(DENSE_FEATURES)``; ``positions`` None scores every
    row at :data:`SERVING_POSITION` (the scorer's candidates), else at :func:`position_row`;
    ``text`` is ``B X len(QUERY_ITEM_FEATURES)``
    (:func:`features.query_item.query_item_columns`; None: no query, zeros).
    """
    n = len(item_ids)
    b = hash_buckets
    row = id_rows(b)
    ids = np.empty((n, len(WIDE_FIELDS)), dtype=np.int64)
    for j, column in enumerate((map(row, user_ids), map(row, item_ids), map(row, category_ids),
                                hash_crosses(user_ids, item_ids, b),
                                hash_crosses(user_ids, category_ids, b))):
        ids[:, j] = np.fromiter(column, np.int64, n)
    k = len(DENSE_FEATURES)
    inputs = np.empty((n, len(DENSE_INPUTS)), dtype=np.float32)
    inputs[:, :k] = dense
    inputs[:, k] = [0.0 if p is None else p for p in prices]
    inputs[:, k + 1] = [p is not None for p in prices]
    inputs[:, k + 2] = [i in r for i, r in zip(item_ids, recent_items)]
    inputs[:, k + 3:] = 0.0 if text is None else text
    position = ([SERVING_POSITION] * n if positions is None
                else [position_row(p) for p in positions])
    return Batch(
        torch.from_numpy(np.ascontiguousarray(ids[:, :len(SPARSE_FIELDS)])),
        torch.from_numpy(inputs),
        torch.from_numpy(np.ascontiguousarray(ids)),
        _tensor(position, np.int64, (n,)),
        _recent_rows(recent_items, b),
        _recent_rows(recent_categories, b),
    )


def _recent_rows(lists: Sequence[Sequence[str]], buckets: int) -> Tensor:
    """``B X RECENT`` rows of each row's recent IDs (``-1``: none); each distinct list object
    is hashed once (a request's candidates share one)."""
    index: dict[int, int] = {}
    table: list[list[int]] = []
    at = []
    for ids in lists:
        k = index.get(id(ids))
        if k is None:
            k = index[id(ids)] = len(table)
            table.append(_recent(ids, buckets))
        at.append(k)
    rows = np.array(table, dtype=np.int64).reshape(len(table), RECENT)
    return torch.from_numpy(rows[np.array(at, dtype=np.intp)])


def _tensor(rows: list[Any], dtype: type[np.generic], shape: tuple[int, ...]) -> Tensor:
    """Nested lists as a tensor, through numpy (about twice as fast as ``torch.tensor``)."""
    return torch.from_numpy(np.array(rows, dtype=dtype).reshape(shape))


def wide_inputs(dense: Tensor) -> Tensor:
    """The wide part's dense inputs: ``log1p`` of the clamped raw inputs, ``B X N``."""
    return torch.log1p(dense.clamp_min(0.0))


class WideArch(nn.Module):
    """Logistic-regression logit over one-hot hashed rows, position and dense inputs.

    ``B X W`` rows, ``B`` position rows, ``B X N`` raw dense -> ``B`` logits. Its tensors are
    set by FTRL-Proximal in the trainer, not by autograd (``requires_grad=False``).
    """

    def __init__(self, hash_buckets: int, num_dense: int) -> None:
        super().__init__()
        self.tables = nn.ParameterDict({
            field: nn.Parameter(torch.zeros(hash_buckets, 1), requires_grad=False)
            for field in WIDE_FIELDS})
        self.position = nn.Parameter(torch.zeros(SERVING_POSITION + 1, 1), requires_grad=False)
        self.dense = nn.Parameter(torch.zeros(num_dense), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(1), requires_grad=False)

    def forward(self, wide: Tensor, position: Tensor, dense: Tensor) -> Tensor:
        """``B X W``, ``B``, ``B X N`` -> ``B``."""
        ids = sum((self.tables[field][wide[:, k], 0] for k, field in enumerate(WIDE_FIELDS)),
                  torch.zeros(len(wide)))
        return ids + self.position[position, 0] + wide_inputs(dense) @ self.dense + self.bias


class FusionArch(nn.Module):
    """Online mixture of the wide part alone and wide + deep: ``B X 2`` click logits -> ``B``.

    ``p = pi * sigmoid(wide) + (1 - pi) * sigmoid(wide + deep)`` with ``pi = softmax(log_weights)
    [0]``; the trainer moves ``log_weights`` by each branch's log loss (exponential weights
    with forgetting, :meth:`update`), so the model follows whichever predicts better lately:
    the linear model while the deep part has seen little, wide + deep once it helps.
    """

    def __init__(self, decay: float = FUSION_DECAY, prior: float = LINEAR_PRIOR) -> None:
        super().__init__()
        self.decay = decay
        self.log_weights = nn.Parameter(torch.tensor([0.0, -prior]), requires_grad=False)

    def mix(self, branches: Tensor) -> Tensor:
        """``B X 2`` logits (wide, wide + deep) -> ``B`` logits of the mixture."""
        log_pi = torch.log_softmax(self.log_weights, 0)
        log_p = torch.logsumexp(F.logsigmoid(branches) + log_pi, dim=1)
        log_q = torch.logsumexp(F.logsigmoid(-branches) + log_pi, dim=1)
        return log_p - log_q

    def update(self, branches: Tensor, click: Tensor) -> None:
        """Exponential weights on the branches' per-example log losses, forgetting at
        ``decay`` per example (``B X 2`` logits, ``B`` labels)."""
        losses = F.binary_cross_entropy_with_logits(
            branches, click.unsqueeze(1).expand_as(branches), reduction="none").sum(0)
        keep = (1.0 - self.decay) ** len(branches)
        w = self.log_weights.data.double() * keep - losses
        self.log_weights.data.copy_((w - w.max()).float())


class SparseArch(nn.Module):
    """One hashed embedding table per field: ``B X F`` indices -> ``B X F X D``."""

    def __init__(self, hash_buckets: int, embedding_dim: int, sparse_grad: bool = True) -> None:
        super().__init__()
        tables = {field: nn.Embedding(hash_buckets, embedding_dim, sparse=sparse_grad)
                  for field in SPARSE_FIELDS}
        for table in tables.values():
            nn.init.normal_(table.weight, std=INIT_STD)
        self.tables = nn.ModuleDict(tables)

    def forward(self, sparse: Tensor) -> Tensor:
        """``B X F`` int64 -> ``B X F X D``."""
        return torch.stack(
            [self.tables[field](sparse[:, i]) for i, field in enumerate(SPARSE_FIELDS)], dim=1)

    def pooled(self, field: str, rows: Tensor) -> Tensor:
        """Mean of ``field``'s rows ``B X L`` (``-1``: none) -> ``B X D`` (zeros when none)."""
        table = cast(nn.Embedding, self.tables[field])
        mask = rows >= 0
        emb = F.embedding(rows.clamp_min(0), table.weight, sparse=table.sparse)
        emb = emb * mask.unsqueeze(-1)
        return emb.sum(1) / mask.sum(1, keepdim=True).clamp_min(1)


class DenseArch(nn.Module):
    """``log1p`` of the raw dense inputs through an MLP: ``B X N`` -> ``B X D``."""

    def __init__(self, num_dense: int, embedding_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(num_dense, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, embedding_dim))

    def forward(self, dense: Tensor) -> Tensor:
        """``B X N`` raw non-negative values -> ``B X D``."""
        return self.mlp(wide_inputs(dense))


class InteractionArch(nn.Module):
    """DLRM dot interaction: ``B X V X D`` -> ``B X (V*D + V*(V-1)/2)``.

    The flattened vectors (first-order, as in DeepFM's deep part) followed by the dot products
    of every distinct pair (the FM second-order terms).
    """

    def __init__(self, num_vectors: int) -> None:
        super().__init__()
        self._pairs = [(i, j) for i in range(num_vectors) for j in range(i + 1, num_vectors)]

    def forward(self, vectors: Tensor) -> Tensor:
        """``B X V X D`` -> ``B X (V*D + V*(V-1)/2)``."""
        rows, cols = zip(*self._pairs)
        dots = torch.bmm(vectors, vectors.transpose(1, 2))[:, list(rows), list(cols)]
        return torch.cat([vectors.flatten(1), dots], dim=1)


class OverArch(nn.Module):
    """MLP from the interaction to the two logits: ``B X I`` -> ``B X 2`` (ctr, cvr).

    The last layer starts at zero: a fresh deep part adds nothing to the wide part's logit.
    """

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_features, HIDDEN), nn.ReLU(),
            nn.Linear(HIDDEN, HIDDEN // 2), nn.ReLU(),
            nn.Linear(HIDDEN // 2, 2))
        last = cast(nn.Linear, self.mlp[-1])
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``B X I`` -> ``B X 2``."""
        return self.mlp(x)


class Ranker(nn.Module):
    """Wide & Deep click and purchase ranker (see the module docstring).

    ``forward(*batch)`` returns the logits ``B X 2`` (ctr, cvr); :meth:`probabilities` turns
    them into ``B X 2`` (p_click, p_purchase). Sparse tables — the deep embeddings and the wide
    rows — are listed by :meth:`embedding_names`; everything else is dense. ``deep=False``
    leaves the deep part out (the model is then its wide part alone); ``text=False`` leaves
    the query–item text features out (the last ``len(QUERY_ITEM_FEATURES)`` of ``num_dense``).
    """

    def __init__(self, hash_buckets: int, embedding_dim: int,
                 num_dense: int = len(DENSE_INPUTS), sparse_grad: bool = True,
                 deep: bool = True, text: bool = True) -> None:
        super().__init__()
        assert hash_buckets > 0, f"hash_buckets must be positive, got {hash_buckets}"
        assert embedding_dim > 0, f"embedding_dim must be positive, got {embedding_dim}"
        self.hparams: dict[str, Any] = {
            "hash_buckets": hash_buckets, "embedding_dim": embedding_dim, "num_dense": num_dense,
            "sparse_grad": sparse_grad, "deep": deep, "text": text}
        self.inputs = num_dense if text else num_dense - len(QUERY_ITEM_FEATURES)
        """The dense inputs the model reads (the first ``inputs`` columns)."""
        num_vectors = len(SPARSE_FIELDS) + 3
        self.wide = WideArch(hash_buckets, self.inputs)
        self.fusion = FusionArch()
        self.sparse = SparseArch(hash_buckets, embedding_dim, sparse_grad)
        self.dense = DenseArch(self.inputs, embedding_dim)
        self.interaction = InteractionArch(num_vectors)
        self.over = OverArch(num_vectors * embedding_dim + num_vectors * (num_vectors - 1) // 2)

    @classmethod
    def from_settings(cls, settings: TrainerSettings) -> Ranker:
        """The default model of ``settings`` (hash_buckets, embedding_dim, deep, text)."""
        return cls(settings.hash_buckets, settings.embedding_dim, deep=settings.deep,
                   text=settings.text_features)

    def visible(self, batch: Batch) -> Batch:
        """``batch`` with the dense inputs this model reads (all but the text features when
        built with ``text=False``)."""
        return batch._replace(dense=batch.dense[:, :self.inputs])

    @staticmethod
    def embedding_names() -> tuple[str, ...]:
        """State-dict names of the sparse tables: deep embeddings (SPARSE_FIELDS order), then
        the wide rows (WIDE_FIELDS order), then the position weights."""
        return (*(f"sparse.tables.{field}.weight" for field in SPARSE_FIELDS),
                *(f"wide.tables.{field}" for field in WIDE_FIELDS), "wide.position")

    def deep_logits(self, sparse: Tensor, dense: Tensor, recent_items: Tensor,
                    recent_categories: Tensor) -> Tensor:
        """The deep part's ``B X 2`` logits (zeros with ``deep=False``)."""
        if not self.hparams["deep"]:
            return torch.zeros(len(sparse), 2)
        vectors = torch.cat([
            self.sparse(sparse),
            self.sparse.pooled("item_id", recent_items).unsqueeze(1),
            self.sparse.pooled("category_id", recent_categories).unsqueeze(1),
            self.dense(dense).unsqueeze(1)], dim=1)
        return self.over(self.interaction(vectors))

    def forward(self, sparse: Tensor, dense: Tensor, wide: Tensor, position: Tensor,
                recent_items: Tensor, recent_categories: Tensor) -> Tensor:
        """A :class:`Batch`'s tensors -> logits ``B X 2`` (ctr, cvr)."""
        dense = dense[:, :self.inputs]
        logits = self.deep_logits(sparse, dense, recent_items, recent_categories)
        linear = self.wide(wide, position, dense)
        if not self.hparams["deep"]:
            return torch.stack([linear, logits[:, 1]], dim=1)
        ctr = self.fusion.mix(torch.stack([linear, linear + logits[:, 0]], dim=1))
        return torch.stack([ctr, logits[:, 1]], dim=1)

    @staticmethod
    def probabilities(logits: Tensor) -> Tensor:
        """Logits ``B X 2`` -> ``B X 2`` (p_click, p_purchase = p_click * p_cvr)."""
        p = torch.sigmoid(logits)
        return torch.stack([p[:, 0], p[:, 0] * p[:, 1]], dim=1)

    def like(self, state: dict[str, Tensor]) -> Ranker:
        """A model of the same shape whose tensors *are* ``state``'s (no copy).

        Built on the meta device, then ``load_state_dict(assign=True)``: cheap, and the caller
        must not modify ``state``'s tensors in place afterwards.
        """
        with torch.device("meta"):
            model = Ranker(**self.hparams)
        model.load_state_dict(state, assign=True)
        return model.eval()
