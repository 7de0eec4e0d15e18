"""Model updates on the wire (encode, verify, decode, apply) and the publisher that cuts them."""

from __future__ import annotations

import json
import struct
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from config import Settings
from connectors.snapshot_store import SnapshotStore
from connectors.training_examples import TrainingExample
from models.delta import (
    ROWS_SUFFIX,
    ModelUpdate,
    UpdateRejected,
    apply_update,
    decode_message,
    delta_tensors,
    encode_delta,
    read_metadata,
)
from models.ranker import Ranker
from models.trainer import OnlineTrainer
from models.versions import VersionCutter

torch.set_num_threads(1)
KEY = b"shared-secret"
SETTINGS = Settings(hash_buckets=1009, embedding_dim=8, batch_size=64, snapshot_every=4,
                    dense_every=1, delta_interval_examples=100, delta_interval_s=60.0)


def examples(n: int, start: int = 0) -> list[TrainingExample]:
    return [TrainingExample(example_id=str(k), user_id=f"u{k % 37}", item_id=f"i{k % 53}",
                            category_id=f"c{k % 7}", event_time=1_000 * k, click=int(k % 3 == 0),
                            purchase=int(k % 9 == 0), features={"i_ctr": 0.1})
            for k in range(start, start + n)]


def update(**changes: Any) -> ModelUpdate:
    base = ModelUpdate(model_id="m", kind="delta", version=3, base_version=2, watermark_ms=42,
                       examples=100, metrics={"click_auc": 0.75},
                       tensors={"emb": torch.arange(6.0).reshape(3, 2),
                                "emb" + ROWS_SUFFIX: torch.tensor([0, 2, 5]),
                                "bias": torch.tensor([0.5])})
    return replace(base, **changes)


def edit_metadata(data: bytes, key: str, value: str) -> bytes:
    """The same safetensors bytes with one metadata value changed (header re-laid out)."""
    (n,) = struct.unpack_from("<Q", data)
    header = json.loads(data[8:8 + n])
    header["__metadata__"][key] = value
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data[8 + n:]


# --- encode / decode ----------------------------------------------------------------------------
def test_round_trip_keeps_metadata_and_tensors() -> None:
    u = update()
    got = decode_message(encode_delta(u, KEY), KEY)
    assert (got.model_id, got.kind, got.version, got.base_version) == ("m", "delta", 3, 2)
    assert (got.watermark_ms, got.examples) == (42, 100)
    assert got.metrics == {"click_auc": 0.75}
    assert set(got.tensors) == set(u.tensors)
    assert all(torch.equal(got.tensors[k], u.tensors[k]) for k in u.tensors)


def test_metadata_fields_are_on_the_wire() -> None:
    meta = read_metadata(encode_delta(update(), KEY))
    assert {"model_id", "kind", "version", "base_version", "watermark_ms", "examples", "sha256",
            "hmac", "metrics"} <= set(meta)
    assert "hmac" not in read_metadata(encode_delta(update()))


def test_flipped_payload_byte_fails_the_checksum() -> None:
    data = bytearray(encode_delta(update()))
    data[-3] ^= 0x01
    with pytest.raises(UpdateRejected) as err:
        decode_message(bytes(data), None)
    assert err.value.reason == "bad_checksum"


@pytest.mark.parametrize("tensor", [
    torch.randn(4, 3, dtype=torch.float64), torch.tensor(2.5), torch.zeros(0, 8),
    torch.tensor([True, False, True]), torch.arange(5, dtype=torch.int32),
    torch.randn(2, 2).to(torch.bfloat16), torch.randn(6, 2).t(),  # not contiguous
])
def test_the_stored_bytes_verify_like_the_tensors_they_encode(tensor: torch.Tensor) -> None:
    """The signer digests tensors, the receiver the bytes as stored: the same canonical
    bytes for every dtype and shape, or a good update would be rejected."""
    sent = update(tensors={"a.b": tensor, "emb": torch.ones(1, 2),
                           "emb" + ROWS_SUFFIX: torch.tensor([1])})
    got = decode_message(encode_delta(sent, KEY), KEY)
    assert got.tensors["a.b"].dtype == tensor.dtype
    assert torch.equal(got.tensors["a.b"], tensor.contiguous())


def test_edited_metadata_fails_the_checksum() -> None:
    data = edit_metadata(encode_delta(update()), "version", "4")
    assert read_metadata(data)["version"] == "4"
    with pytest.raises(UpdateRejected) as err:
        decode_message(data, None)
    assert err.value.reason == "bad_checksum"


def test_forged_checksum_fails_the_signature() -> None:
    from models.delta import digests

    data = encode_delta(update(), KEY)
    forged_meta = read_metadata(data) | {"version": "9"}
    sha, _ = digests(forged_meta, decode_message(data, KEY).tensors, None)
    forged = edit_metadata(edit_metadata(data, "version", "9"), "sha256", sha)
    assert decode_message(forged, None).version == 9  # consistent without a key...
    with pytest.raises(UpdateRejected) as err:
        decode_message(forged, KEY)  # ...but not signed by it
    assert err.value.reason == "bad_signature"


@pytest.mark.parametrize("signed_with, reason",
                         [(None, "missing_signature"), (b"other", "bad_signature")])
def test_signature_required_when_a_key_is_set(signed_with: bytes | None, reason: str) -> None:
    with pytest.raises(UpdateRejected) as err:
        decode_message(encode_delta(update(), signed_with), KEY)
    assert err.value.reason == reason


@pytest.mark.parametrize("data", [b"", b"\x05\x00\x00\x00\x00\x00\x00\x00{}",
                                  b"not safetensors at all"])
def test_garbage_is_bad_format(data: bytes) -> None:
    with pytest.raises(UpdateRejected) as err:
        decode_message(data, None)
    assert err.value.reason == "bad_format"


# --- apply --------------------------------------------------------------------------------------
def test_apply_sets_rows_and_dense_and_leaves_the_input_alone() -> None:
    state = {"emb": torch.zeros(6, 2), "bias": torch.zeros(1), "other": torch.ones(2)}
    new = apply_update(state, update())
    assert new["emb"][[0, 2, 5]].tolist() == [[0, 1], [2, 3], [4, 5]]
    assert new["emb"][[1, 3, 4]].abs().sum() == 0
    assert new["bias"].item() == 0.5 and new["other"] is state["other"]
    assert state["emb"].abs().sum() == 0 and state["bias"].item() == 0.0


def test_reapplying_a_delta_is_harmless() -> None:
    state = {"emb": torch.zeros(6, 2), "bias": torch.zeros(1)}
    once = apply_update(state, update())
    twice = apply_update(once, update())
    assert all(torch.equal(once[k], twice[k]) for k in once)


@pytest.mark.parametrize("tensors", [
    {"emb": torch.ones(1, 3), "emb" + ROWS_SUFFIX: torch.tensor([0])},  # wrong width
    {"emb": torch.ones(1, 2), "emb" + ROWS_SUFFIX: torch.tensor([6])},  # row out of range
    {"nope": torch.ones(1)},  # unknown tensor
    {"bias": torch.ones(2)},  # wrong dense shape
])
def test_apply_refuses_what_does_not_fit(tensors: dict[str, torch.Tensor]) -> None:
    with pytest.raises(UpdateRejected) as err:
        apply_update({"emb": torch.zeros(6, 2), "bias": torch.zeros(1)}, update(tensors=tensors))
    assert err.value.reason == "incompatible"


def test_delta_tensors_carry_touched_rows_only() -> None:
    model = Ranker(1009, 8)
    state = model.state_dict()
    rows = {name: torch.tensor([], dtype=torch.int64) for name in Ranker.embedding_names()}
    rows["sparse.tables.item_id.weight"] = torch.tensor([7, 3])
    sparse_only = delta_tensors(state, rows, with_dense=False)
    table = "sparse.tables.item_id.weight"
    assert set(sparse_only) == {table, table + ROWS_SUFFIX}
    assert sparse_only[table + ROWS_SUFFIX].tolist() == [3, 7]
    assert torch.equal(sparse_only[table], state[table][[3, 7]])
    dense = set(delta_tensors(state, rows, with_dense=True)) - set(sparse_only)
    assert dense == set(state) - set(Ranker.embedding_names())


# --- publisher ----------------------------------------------------------------------------------
def kinds(messages: list[bytes]) -> list[tuple[str, int, int]]:
    metadata = map(read_metadata, messages)
    return [(m["kind"], int(m["version"]), int(m["base_version"])) for m in metadata]


def test_cadence_snapshots_and_dense_every(tmp_path: Path) -> None:
    settings = SETTINGS.model_copy(update={"dense_every": 2})
    trainer = OnlineTrainer(settings)
    publisher = VersionCutter(trainer, settings, SnapshotStore(str(tmp_path)))
    assert publisher.maybe_publish() == []  # nothing learned yet
    sent: list[bytes] = []
    for i in range(6):
        trainer.learn_many(examples(50, 100 * i))
        assert publisher.maybe_publish() == []  # 50 < delta_interval_examples
        trainer.learn_many(examples(50, 100 * i + 50))
        sent += publisher.maybe_publish()
    assert kinds(sent) == [("snapshot", 1, 0), ("delta", 2, 1), ("delta", 3, 2), ("snapshot", 4, 3),
                           ("delta", 5, 4), ("delta", 6, 5)]
    has_dense = ["dense.mlp.0.weight" in decode_message(m, None).tensors for m in sent]
    assert has_dense == [True, True, False, True, False, True]
    assert SnapshotStore(str(tmp_path)).versions() == [1, 4]


def test_time_interval_cuts_a_version() -> None:
    now = [0.0]
    trainer = OnlineTrainer(SETTINGS)
    publisher = VersionCutter(trainer, SETTINGS, clock=lambda: now[0])
    trainer.learn_many(examples(10))
    assert not publisher.due()
    now[0] = SETTINGS.delta_interval_s
    assert publisher.due()
    assert kinds(publisher.maybe_publish()) == [("snapshot", 1, 0)]
    now[0] += 2 * SETTINGS.delta_interval_s
    assert not publisher.due()  # time passed but nothing learned


def test_versions_continue_upward_after_a_restart(tmp_path: Path) -> None:
    store = SnapshotStore(str(tmp_path))
    trainer = OnlineTrainer(SETTINGS)
    publisher = VersionCutter(trainer, SETTINGS, store)
    before: list[bytes] = []
    for i in range(6):  # snapshots 1 and 4, deltas up to 6
        trainer.learn_many(examples(100, 100 * i))
        before += publisher.publish()

    restarted = OnlineTrainer(SETTINGS)
    again = VersionCutter(restarted, SETTINGS)
    assert again.resume(store) == 4
    snap = decode_message(store.get(4), None)
    assert all(torch.equal(restarted.model.state_dict()[k], v) for k, v in snap.tensors.items())
    assert restarted.examples_seen == snap.examples == 400
    restarted.learn_many(examples(100, 600))
    after = again.publish()
    assert kinds(after) == [("snapshot", 7, 6)]
    for i, expected in ((7, ("snapshot", 8, 7)), (8, ("delta", 9, 8))):  # 8: every 4th
        restarted.learn_many(examples(100, 100 * i))
        assert kinds(again.publish()) == [expected]
    assert store.published_version() == 9
    versions = [v for _, v, _ in kinds(before + after)]
    assert versions == sorted(set(versions))


def test_resume_from_an_empty_store_starts_at_one(tmp_path: Path) -> None:
    trainer = OnlineTrainer(SETTINGS)
    publisher = VersionCutter(trainer, SETTINGS)
    assert publisher.resume(SnapshotStore(str(tmp_path))) == 0
    trainer.learn_many(examples(10))
    assert kinds(publisher.publish()) == [("snapshot", 1, 0)]
