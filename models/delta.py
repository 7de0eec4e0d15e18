"""Model updates (deltas and snapshots): build, encode, verify, decode and apply. Pure functions.

Wire format (one ``model.deltas`` message = one update)
-------------------------------------------------------
Safetensors bytes (``safetensors.torch.save``; never pickle). ``__metadata__`` (str -> str):

==================  =========================================================================
``format``          ``streamrank-update/1``
``model_id``        the model's id (``Settings.model_id``)
``kind``            ``delta`` or ``snapshot``
``version``         this update's version (decimal; versions only go up, from 1)
``base_version``    the version a delta applies on (``version - 1``); for a snapshot, the
                    version it follows (informational: a snapshot needs no base)
``watermark_ms``    the largest example event time (ms) learned into these weights
``examples``        examples learned in total
``metrics``         the trainer's online metrics, a JSON object of name -> number
``sha256``          hex SHA-256 of the canonical bytes (below)
``hmac``            hex HMAC-SHA256 of the canonical bytes under the shared key (only when
                    signing is on, ``STREAMRANK_DELTA_HMAC_KEY``)
==================  =========================================================================

Tensors: a **snapshot** holds every tensor of the model's state dict. A **delta** holds, for
each embedding table with rows touched since the previous version, ``<table>.__rows__`` (int64,
sorted row indices) and ``<table>`` (those rows' new values, ``rows X D``); and, when dense
tensors travel in this version, every other tensor in full. Everything is a value to set, so
applying an update twice is harmless.

Canonical bytes (what ``sha256`` and ``hmac`` cover; independent of how safetensors lays out
its header): first each metadata item except ``sha256`` and ``hmac``, sorted by key, as key and
value; then each tensor, sorted by name, as name, dtype (safetensors' code: ``F32``, ``I64``
...), shape (decimal, comma-separated) and its raw little-endian bytes. Every one of these
fields is written as an unsigned 64-bit little-endian length followed by the bytes (UTF-8 for
text). So a flipped payload byte and an edited metadata value both fail verification.
"""

from __future__ import annotations

import hashlib
import hmac as hmac_lib
import json
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, cast

import safetensors
import safetensors.torch
import torch
from pydantic import SecretStr
from torch import Tensor

from config import TrainerSettings

FORMAT = "streamrank-update/1"
ROWS_SUFFIX = ".__rows__"
"""A delta's row indices of table ``t`` are the tensor named ``t + ROWS_SUFFIX``."""
UpdateKind = Literal["delta", "snapshot"]
_DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.float16: "F16",
           torch.bfloat16: "BF16", torch.int64: "I64", torch.int32: "I32", torch.bool: "BOOL",
           torch.uint8: "U8"}
_UNSIGNED = ("sha256", "hmac")


class UpdateRejected(ValueError):
    """An update that must not be applied; ``reason`` is a stable code.

    ``bad_format`` (not a model update), ``bad_checksum``, ``bad_signature``,
    ``missing_signature`` (signing is on and the update carries none), ``incompatible``
    (tensor names or shapes do not fit the model).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ModelUpdate:
    """One decoded delta or snapshot (see the module docstring for the fields)."""

    model_id: str
    kind: UpdateKind
    version: int
    base_version: int
    watermark_ms: int
    examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    tensors: dict[str, Tensor] = field(default_factory=dict, repr=False)


def hmac_key(settings: TrainerSettings) -> bytes | None:
    """The signing key of ``settings`` as bytes (None when signing is off).

    Tolerates a plain ``str`` (``Settings.model_copy(update=...)`` skips validation).
    """
    key = settings.delta_hmac_key
    if key is None:
        return None
    return (key.get_secret_value() if isinstance(key, SecretStr) else str(key)).encode()


def snapshot_tensors(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Every tensor of a state dict (detached, contiguous, on the CPU)."""
    return {name: t.detach().cpu().contiguous() for name, t in state.items()}


def delta_tensors(state: Mapping[str, Tensor], rows: Mapping[str, Tensor],
                  with_dense: bool) -> dict[str, Tensor]:
    """A delta's tensors: touched ``rows`` per embedding table, plus dense tensors if asked.

    ``rows`` maps every embedding table's name (empty or not) to its touched row indices;
    dense tensors are the state's other tensors.

    >>> state = {"emb": torch.arange(6.0).reshape(3, 2), "bias": torch.ones(1)}
    >>> d = delta_tensors(state, {"emb": torch.tensor([2])}, with_dense=False)
    >>> sorted(d), d["emb"].tolist()
    (['emb', 'emb.__rows__'], [[4.0, 5.0]])
    """
    out: dict[str, Tensor] = {}
    for name, idx in rows.items():
        if len(idx):
            idx = idx.to(torch.int64).sort().values
            out[name + ROWS_SUFFIX] = idx.contiguous()
            out[name] = state[name].detach()[idx].contiguous()
    if with_dense:
        out |= {n: t.detach().cpu().contiguous() for n, t in state.items() if n not in rows}
    return out


_LENGTH = struct.Struct("<Q")


def _field(data: bytes) -> Iterator[bytes]:
    yield _LENGTH.pack(len(data))
    yield data


_Stored = tuple[str, str, Sequence[int], bytes | memoryview]
"""A tensor as the canonical bytes see it: name, dtype code, shape, raw little-endian bytes."""


def _tensors_stored(tensors: Mapping[str, Tensor]) -> Iterator[_Stored]:
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        yield (name, _DTYPES[t.dtype], t.shape,
               t.reshape(-1).view(torch.uint8).numpy().data if t.numel() else b"")


def _message_stored(data: bytes) -> Iterator[_Stored]:
    """The tensors of safetensors bytes (validated by ``safetensors``) as they lie in them,
    without a torch call per tensor."""
    (n,) = struct.unpack_from("<Q", data)
    header = json.loads(bytes(data[8:8 + n]))
    body = memoryview(data)[8 + n:]
    for name in sorted(k for k in header if k != "__metadata__"):
        entry = header[name]
        begin, end = entry["data_offsets"]
        yield name, entry["dtype"], entry["shape"], body[begin:end]


def _canonical(metadata: Mapping[str, str],
               tensors: Iterable[_Stored]) -> Iterator[bytes | memoryview]:
    for key in sorted(metadata):
        if key not in _UNSIGNED:
            yield from _field(key.encode())
            yield from _field(metadata[key].encode())
    for name, dtype, shape, raw in tensors:
        head = (name.encode(), dtype.encode(), ",".join(map(str, shape)).encode())
        yield b"".join(part for text in head for part in (_LENGTH.pack(len(text)), text))
        yield _LENGTH.pack(len(raw))
        yield raw


_HASH_CHUNK = 1 << 16
"""Canonical pieces shorter than this are gathered and hashed together."""


def digests(metadata: Mapping[str, str], tensors: Mapping[str, Tensor],
            key: bytes | None) -> tuple[str, str | None]:
    """Hex SHA-256 and (with a key) HMAC-SHA256 of the canonical bytes."""
    return _digests(_canonical(metadata, _tensors_stored(tensors)), key)


def _digests(canonical: Iterable[bytes | memoryview], key: bytes | None) -> tuple[str, str | None]:
    """:func:`digests` of canonical pieces.

    The small pieces (lengths, names, a delta's rows) are gathered into chunks before they
    are hashed: a delta has hundreds of them, and one ``update`` per piece made the digests
    a third of a scorer's apply (profiled), all of it holding the interpreter lock
    (``hashlib`` releases it only for pieces over 2 KiB)."""
    hashes = [hashlib.sha256()]
    if key is not None:
        hashes.append(hmac_lib.new(key, digestmod=hashlib.sha256))
    gathered = bytearray()
    for piece in canonical:
        if len(piece) < _HASH_CHUNK:
            gathered += piece
            if len(gathered) < _HASH_CHUNK:
                continue
            piece, gathered = gathered, bytearray()
        elif gathered:
            for h in hashes:
                h.update(gathered)
            gathered = bytearray()
        for h in hashes:
            h.update(piece)
    for h in hashes:
        h.update(gathered)
    return hashes[0].hexdigest(), (hashes[1].hexdigest() if key is not None else None)


def _metadata(update: ModelUpdate) -> dict[str, str]:
    return {
        "format": FORMAT, "model_id": update.model_id, "kind": update.kind,
        "version": str(update.version), "base_version": str(update.base_version),
        "watermark_ms": str(update.watermark_ms), "examples": str(update.examples),
        "metrics": json.dumps(update.metrics, sort_keys=True),
    }


def encode_delta(update: ModelUpdate, hmac_key: bytes | None = None) -> bytes:
    """The wire bytes of a delta or snapshot, checksummed and (with a key) signed.

    >>> u = ModelUpdate("m", "delta", 2, 1, 10, 5, {"auc": 0.5}, {"w": torch.ones(2)})
    >>> decode_message(encode_delta(u, b"k"), b"k").tensors["w"].tolist()
    [1.0, 1.0]
    """
    metadata = _metadata(update)
    sha, mac = digests(metadata, update.tensors, hmac_key)
    metadata["sha256"] = sha
    if mac is not None:
        metadata["hmac"] = mac
    return safetensors.torch.save(
        {n: t.detach().cpu().contiguous() for n, t in update.tensors.items()}, metadata)


def read_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of safetensors bytes, without reading the tensors (unverified)."""
    try:
        (n,) = struct.unpack_from("<Q", data)
        if n > len(data) - 8:
            raise ValueError("header longer than the message")
        meta = json.loads(bytes(data[8:8 + n])).get("__metadata__") or {}
    except (struct.error, ValueError, AttributeError) as err:
        raise UpdateRejected("bad_format", str(err)) from None
    if not isinstance(meta, dict):
        raise UpdateRejected("bad_format", "__metadata__ is not an object")
    return meta


def decode_message(data: bytes, hmac_key: bytes | None) -> ModelUpdate:
    """Verify and decode wire bytes; raises :class:`UpdateRejected`.

    The checksum is always checked; with a key the signature must be present and valid.
    """
    meta = read_metadata(data)
    try:
        tensors = safetensors.torch.load(data)
    except (safetensors.SafetensorError, ValueError, RuntimeError) as err:
        raise UpdateRejected("bad_format", str(err)) from None
    if meta.get("format") != FORMAT:
        raise UpdateRejected("bad_format", f"format {meta.get('format')!r}, expected {FORMAT!r}")
    sha, mac = _digests(_canonical(meta, _message_stored(data)), hmac_key)  # as stored
    if not hmac_lib.compare_digest(sha, meta.get("sha256", "")):
        raise UpdateRejected("bad_checksum", "sha256 does not match the content")
    if mac is not None:
        if "hmac" not in meta:
            raise UpdateRejected("missing_signature", "signing is on and the update is unsigned")
        if not hmac_lib.compare_digest(mac, meta["hmac"]):
            raise UpdateRejected("bad_signature", "hmac does not match the content")
    try:
        kind = meta["kind"]
        if kind not in ("delta", "snapshot"):
            raise ValueError(f"kind {kind!r}")
        return ModelUpdate(
            model_id=meta["model_id"], kind=cast(UpdateKind, kind), version=int(meta["version"]),
            base_version=int(meta["base_version"]), watermark_ms=int(meta["watermark_ms"]),
            examples=int(meta["examples"]), metrics=json.loads(meta.get("metrics", "{}")),
            tensors=tensors)
    except (KeyError, ValueError) as err:
        raise UpdateRejected("bad_format", f"metadata: {err}") from None


def apply_update(model_state: Mapping[str, Tensor], update: ModelUpdate,
                 writable: Callable[[str, Tensor, Tensor], Tensor] = lambda name, table, rows:
                 table.clone()) -> dict[str, Tensor]:
    """The state after ``update``, as a new dict; ``model_state``'s tensors are not modified.

    Tensors the update does not touch are shared with ``model_state``; a table with rows in
    the delta is a modified copy: ``writable(name, table, rows)`` gives a tensor equal to
    ``table`` that no one else reads (default: a clone; :class:`models.follower.TableRecycler`
    gives a retired copy brought up to date), and the delta's rows are written into it.
    Version order is the caller's business (see :mod:`models.follower`); this only checks that
    names and shapes fit.

    >>> state = {"emb": torch.zeros(3, 2), "bias": torch.zeros(1)}
    >>> u = ModelUpdate("m", "delta", 2, 1, 0, 0, tensors={
    ...     "emb.__rows__": torch.tensor([1]), "emb": torch.ones(1, 2)})
    >>> new = apply_update(state, u)
    >>> new["emb"].tolist(), state["emb"].sum().item(), new["bias"] is state["bias"]
    ([[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]], 0.0, True)
    """
    tensors = update.tensors
    if update.kind == "snapshot":
        _check(set(tensors) == set(model_state), "snapshot tensors differ from the model's")
        for name, t in tensors.items():
            _check_like(name, t, model_state[name])
        return dict(tensors)
    new = dict(model_state)
    for name, t in tensors.items():
        if name.endswith(ROWS_SUFFIX):
            continue
        _check(name in model_state, f"unknown tensor {name}")
        rows = tensors.get(name + ROWS_SUFFIX)
        if rows is None:
            _check_like(name, t, model_state[name])
            new[name] = t
            continue
        table = model_state[name]
        _check(rows.dtype == torch.int64 and rows.dim() == 1 and t.dtype == table.dtype
               and t.shape == (len(rows), *table.shape[1:]),
               f"{name}: {len(rows)} rows, values {t.dtype} {tuple(t.shape)}")
        _check(not len(rows) or (0 <= int(rows.min()) and int(rows.max()) < len(table)),
               f"{name}: row index out of range")
        table = writable(name, table, rows)
        table[rows] = t
        new[name] = table
    for name in tensors:
        if name.endswith(ROWS_SUFFIX):
            _check(name[:-len(ROWS_SUFFIX)] in tensors, f"{name} without values")
    return new


def _check_like(name: str, t: Tensor, current: Tensor) -> None:
    _check(t.shape == current.shape and t.dtype == current.dtype,
           f"{name}: {t.dtype} {tuple(t.shape)}, "
           f"the model has {current.dtype} {tuple(current.shape)}")


def _check(ok: bool, detail: str) -> None:
    if not ok:
        raise UpdateRejected("incompatible", detail)
