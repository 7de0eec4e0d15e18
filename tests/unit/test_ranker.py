"""The ranking model: hashing, batch encoding, module shapes, heads."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from connectors.training_examples import TrainingExample
from features.schema import DENSE_FEATURES
from models.ranker import (
    DENSE_INPUTS,
    RECENT,
    SERVING_POSITION,
    SPARSE_FIELDS,
    UNKNOWN_POSITION,
    WIDE_FIELDS,
    DenseArch,
    FusionArch,
    InteractionArch,
    OverArch,
    Ranker,
    SparseArch,
    encode_batch,
    hash_cross,
    hash_id,
)

torch.set_num_threads(1)
B, D, BUCKETS = 5, 8, 1009


def example(i: int, category: str | None = "c", **features: float) -> TrainingExample:
    return TrainingExample(example_id=f"e{i}", user_id=f"u{i}", item_id=f"i{i}",
                           category_id=category, event_time=i, click=i % 2, purchase=0,
                           features=features)


def test_hash_is_stable_across_processes() -> None:
    # Fixed values (crc32), not Python's per-process salted hash(): every trainer and scorer
    # process maps an ID to the same row.
    assert [hash_id(v, 200_003) for v in ("user-7", "4921478", "", None)] == [101678, 179574, 0, 0]


def test_encode_batch_reads_fields_and_features_in_schema_order() -> None:
    xs = [example(0, i_ctr=0.25, u_clicks_1h=3.0), example(1, category=None)]
    batch = encode_batch(xs, BUCKETS)
    sparse, dense = batch.sparse, batch.dense
    assert sparse.dtype == torch.int64 and sparse.shape == (2, len(SPARSE_FIELDS))
    assert dense.dtype == torch.float32 and dense.shape == (2, len(DENSE_INPUTS))
    assert sparse[0].tolist() == [hash_id(v, BUCKETS) for v in ("u0", "i0", "c")]
    assert sparse[1, 2] == 0  # missing category -> row 0
    assert dense[0, DENSE_INPUTS.index("i_ctr")] == 0.25
    assert dense[0, DENSE_INPUTS.index("u_clicks_1h")] == 3.0
    assert dense[0].count_nonzero() == 2 and dense[1].count_nonzero() == 0
    assert batch.wide[0].tolist() == [*sparse[0].tolist(), hash_cross("u0", "i0", BUCKETS),
                                      hash_cross("u0", "c", BUCKETS)]
    assert batch.wide[1, WIDE_FIELDS.index("user_category")] == 0  # a cross with a missing side


def test_encode_batch_reads_position_price_and_recent_clicks() -> None:
    x = example(0).model_copy(update={"position": 3, "price": 9.5,
                                      "recent_items": ("i7", "i0"), "recent_categories": ("c",)})
    train, serve = encode_batch([x], BUCKETS, training=True), encode_batch([x], BUCKETS)
    assert train.position.tolist() == [3] and serve.position.tolist() == [SERVING_POSITION]
    assert encode_batch([example(1)], BUCKETS, training=True).position.tolist() == \
        [UNKNOWN_POSITION]
    dense = dict(zip(DENSE_INPUTS, train.dense[0].tolist()))
    assert (dense["price"], dense["has_price"], dense["item_in_recent"]) == (9.5, 1.0, 1.0)
    assert train.recent_items[0].tolist() == [hash_id("i7", BUCKETS), hash_id("i0", BUCKETS)] \
        + [-1] * (RECENT - 2)
    assert train.recent_categories[0, 0] == hash_id("c", BUCKETS)
    assert (train.recent_categories[0, 1:] == -1).all()
    for a, b in zip(train, serve):  # everything but the position is the same
        if a is not train.position:
            assert torch.equal(a, b)


def test_a_scoring_candidate_encodes_like_its_training_example() -> None:
    # The scorer builds candidates from Feast rows (user_features.last_items, ...): any object
    # with the attributes goes through the same encoder.
    x = example(0, i_ctr=0.3).model_copy(update={"position": 2, "price": 4.0,
                                                 "recent_items": ("i9",)})
    candidate = SimpleNamespace(user_id="u0", item_id="i0", category_id="c", position=None,
                                features={"i_ctr": 0.3}, price=4.0, recent_items=["i9"],
                                recent_categories=[])
    for a, b in zip(encode_batch([x], BUCKETS), encode_batch([candidate], BUCKETS)):
        assert torch.equal(a, b)
    bare = SimpleNamespace(user_id="u0", item_id="i0", category_id="c", position=None,
                           features={"i_ctr": 0.3})  # no price, no recent clicks
    assert encode_batch([bare], BUCKETS).dense[0, DENSE_INPUTS.index("has_price")] == 0


def test_encode_empty_batch() -> None:
    batch = encode_batch([], BUCKETS)
    assert batch.sparse.shape == (0, 3) and batch.dense.shape == (0, len(DENSE_INPUTS))
    assert Ranker(BUCKETS, D)(*batch).shape == (0, 2)


def test_a_fresh_model_is_its_wide_part() -> None:
    model = Ranker(BUCKETS, D)
    with torch.no_grad():
        model.wide.tables["item_id"][hash_id("i1", BUCKETS)] = 2.0
        model.wide.bias.fill_(-1.0)
    logits = model(*encode_batch([example(1), example(2)], BUCKETS))
    assert logits[:, 0].tolist() == [1.0, -1.0] and logits[:, 1].tolist() == [0.0, 0.0]


def test_module_shapes() -> None:
    sparse = torch.randint(0, BUCKETS, (B, 3))
    dense = torch.rand(B, len(DENSE_FEATURES)) * 100
    emb = SparseArch(BUCKETS, D)(sparse)
    assert emb.shape == (B, 3, D)
    assert DenseArch(len(DENSE_FEATURES), D)(dense).shape == (B, D)
    inter = InteractionArch(4)(torch.rand(B, 4, D))
    assert inter.shape == (B, 4 * D + 6)
    assert OverArch(4 * D + 6)(inter).shape == (B, 2)


def test_interaction_holds_pairwise_dots() -> None:
    v = torch.rand(2, 3, 4)
    out = InteractionArch(3)(v)
    assert torch.allclose(out[:, 12], (v[:, 0] * v[:, 1]).sum(-1))
    assert torch.allclose(out[:, 14], (v[:, 1] * v[:, 2]).sum(-1))


def test_heads_are_esmm_probabilities() -> None:
    model = Ranker(BUCKETS, D)
    logits = model(*encode_batch([example(i) for i in range(B)], BUCKETS))
    p = Ranker.probabilities(logits)
    assert p.shape == (B, 2)
    assert torch.equal(p[:, 0], torch.sigmoid(logits[:, 0]))
    assert torch.allclose(p[:, 1], p[:, 0] * torch.sigmoid(logits[:, 1]))
    assert bool((p[:, 1] <= p[:, 0]).all())


def test_raw_counts_and_seconds_stay_finite() -> None:
    model = Ranker(BUCKETS, D)
    huge = example(0, u_secs_since_last=604_800.0, i_impressions_24h=1e9, uc_affinity=-3.0)
    p = Ranker.probabilities(model(*encode_batch([huge], BUCKETS)))
    assert bool(torch.isfinite(p).all())


def test_embeddings_have_sparse_gradients() -> None:
    model = Ranker(BUCKETS, D)
    model(*encode_batch([example(0)], BUCKETS)).sum().backward()
    for name, param in model.named_parameters():
        if name.startswith(("wide.", "fusion.")):  # set by FTRL and the fusion, not autograd
            assert not param.requires_grad and param.grad is None, name
            continue
        assert param.grad is not None
        assert param.grad.is_sparse == (name in Ranker.embedding_names()), name


def test_like_shares_tensors_and_scores_the_same() -> None:
    model = Ranker(BUCKETS, D)
    state = model.state_dict()
    twin = model.like(state)
    name = "sparse.tables.item_id.weight"
    assert twin.state_dict()[name].data_ptr() == state[name].data_ptr()
    batch = encode_batch([example(i) for i in range(B)], BUCKETS)
    assert torch.equal(model(*batch), twin(*batch))


@pytest.mark.parametrize("buckets, dim", [(0, D), (BUCKETS, 0)])
def test_constructor_rejects_bad_sizes(buckets: int, dim: int) -> None:
    with pytest.raises(AssertionError, match="must be positive"):
        Ranker(buckets, dim)


def test_fusion_follows_the_branch_that_predicts_better() -> None:
    fusion = FusionArch(decay=1e-3, prior=2.0)
    same = torch.tensor([[0.3, 0.3], [-2.0, -2.0]])
    assert torch.allclose(fusion.mix(same), same[:, 0])  # equal branches: that logit
    click = torch.tensor([1.0, 0.0] * 64)
    good = torch.where(click > 0, 3.0, -3.0)  # the second branch is right, the first unsure
    branches = torch.stack([torch.zeros_like(good), good], dim=1)
    start = fusion.mix(branches[:2])
    for _ in range(5):
        fusion.update(branches.double(), click.double())
    pi = torch.softmax(fusion.log_weights, 0)
    assert pi[1] > 0.99
    assert fusion.mix(branches[:2])[0] > start[0] and fusion.mix(branches[:2])[1] < start[1]
