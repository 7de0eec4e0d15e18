"""Following a trainer's model updates: the library every scorer uses.

A :class:`ModelFollower` holds the served ``(version, model)`` pair and moves it forward:

* :meth:`ModelFollower.bootstrap` takes a snapshot (e.g. the snapshot store's latest) as is.
* :meth:`ModelFollower.apply` takes the next message from ``model.deltas``:

  - a version at or below the current one -> ``ignored`` (duplicates, replays: harmless);
  - a snapshot above the current version -> ``applied`` (how a follower heals by itself);
  - a delta whose ``base_version`` is the current version -> ``applied``;
  - a delta on any other base (a gap) -> ``needs_bootstrap``: nothing changes; bootstrap from
    the latest snapshot or wait for the next snapshot on the topic;
  - a bad checksum, a bad or (with a key) missing signature, malformed bytes, another model's
    id, or tensors that do not fit -> ``rejected``: the last good version keeps serving.

Swaps are atomic: an update builds a new state (new tensors only for the tables it changes)
and a new model around it, then replaces the served pair with one assignment. Readers call
:meth:`ModelFollower.served` (or ``model``/``version``) and keep using what they got; they
never see half an update. Writers are serialised by a lock.

A table a delta changes is written into a copy no served model reads: the copy that the
previous change of that table retired, brought up to date by copying the rows it lacks
(:class:`TableRecycler`), once no model built on it is alive; else a new clone. A delta then
costs about its own rows instead of a copy of every table it touches (the five embedding
tables of the default model: 64 MB, 11 to 160 ms per delta on a 2-core machine, depending on
whether the allocator had to fault the pages in anew).
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, replace
from enum import StrEnum

import torch
from torch import Tensor, nn

from models.delta import ModelUpdate, UpdateRejected, apply_update, decode_message
from models.ranker import Ranker


class Status(StrEnum):
    """What :meth:`ModelFollower.apply` did with a message."""

    APPLIED = "applied"
    IGNORED = "ignored"
    NEEDS_BOOTSTRAP = "needs_bootstrap"
    REJECTED = "rejected"


@dataclass(frozen=True)
class Outcome:
    """The status, the version served afterwards, the message's version and why."""

    status: Status
    version: int
    message_version: int | None = None
    reason: str = ""


class TableRecycler:
    """Tables for :func:`~models.delta.apply_update` to write a delta's rows into: the copy of
    the table that the table's previous change retired, instead of a new clone.

    The retired copy lags the served table by the rows that change wrote; it is taken once
    every model built on it is gone (weak references: a model held by a forward pass, a pin
    or the quality guard keeps its tensors unchanged) and those rows are copied over from the
    served table first. Call :meth:`writable` through ``apply_update``, then :meth:`adopt`
    once the new state serves or :meth:`forget` when the apply failed (the copies it took are
    then gone: the next change of those tables clones).
    ``recycled`` counts the tables written in place of a clone.
    """

    def __init__(self) -> None:
        self._served: dict[str, tuple[Tensor, list[weakref.ref[nn.Module]]]] = {}
        self._retired: dict[str, tuple[Tensor, list[weakref.ref[nn.Module]], Tensor]] = {}
        self._written: dict[str, Tensor] = {}
        self.recycled = 0

    def writable(self, name: str, table: Tensor, rows: Tensor) -> Tensor:
        """A tensor equal to ``table`` that no live model reads, for ``rows`` to be written."""
        self._written[name] = rows
        retired = self._retired.pop(name, None)
        if retired is not None:
            copy_, users, lags = retired
            if (copy_.shape == table.shape and copy_.dtype == table.dtype
                    and copy_.device == table.device and all(u() is None for u in users)):
                copy_[lags] = table[lags]
                self.recycled += 1
                return copy_
        return table.clone()

    def adopt(self, state: dict[str, Tensor], model: nn.Module) -> None:
        """``model`` serves ``state`` (the result of the last apply)."""
        user = weakref.ref(model)
        written, self._written = self._written, {}
        for name, tensor in state.items():
            served = self._served.get(name)
            if served is not None and served[0] is tensor:
                served[1][:] = [u for u in served[1] if u() is not None] + [user]
                continue
            self._retired.pop(name, None)
            if served is not None and name in written:  # differs from ``tensor`` by these rows
                self._retired[name] = (served[0], served[1], written[name])
            self._served[name] = (tensor, [user])

    def forget(self) -> None:
        """Forget the writes of an apply that failed (the copies it took are gone with it)."""
        self._written.clear()


class ModelFollower:
    """Serves the newest model version it could apply strictly in order.

    ``model`` fixes the architecture and is served as version 0 until the first snapshot;
    ``hmac_key`` (bytes) turns on signature checking: unsigned updates are then rejected.
    ``device`` is where the served weights live (updates are applied there, e.g. ``cuda``).
    ``last_update`` is the metadata (no tensors) of the update behind the served version.
    """

    def __init__(self, model: Ranker, hmac_key: bytes | None = None,
                 device: str | torch.device = "cpu") -> None:
        self._template = model
        self._key = hmac_key
        self.device = torch.device(device)
        self._lock = threading.Lock()
        model = model.to(self.device).eval()
        self._state = {name: t.detach() for name, t in model.state_dict().items()}
        self._served: tuple[int, Ranker] = (0, model)
        self.tables = TableRecycler()
        self.model_id: str | None = None
        self.last_update: ModelUpdate | None = None

    @property
    def version(self) -> int:
        """The version served now (0 before the first snapshot)."""
        return self._served[0]

    @property
    def model(self) -> Ranker:
        """The model served now."""
        return self._served[1]

    def served(self) -> tuple[int, Ranker]:
        """The served ``(version, model)`` pair, read at once (use both from one call)."""
        return self._served

    def bootstrap(self, snapshot_bytes: bytes) -> Outcome:
        """Serve a snapshot, whatever the current version (e.g. after ``needs_bootstrap``)."""
        return self._take(snapshot_bytes, bootstrap=True)

    def apply(self, message_bytes: bytes) -> Outcome:
        """Apply the next ``model.deltas`` message (see the module docstring for the rules)."""
        return self._take(message_bytes, bootstrap=False)

    def _take(self, data: bytes, bootstrap: bool) -> Outcome:
        with self._lock:
            current = self.version
            try:
                update = decode_message(data, self._key)
            except UpdateRejected as err:
                return Outcome(Status.REJECTED, current, None, err.reason)
            if bootstrap and update.kind != "snapshot":
                return Outcome(Status.REJECTED, current, update.version, "not_a_snapshot")
            if self.model_id is not None and update.model_id != self.model_id:
                return Outcome(Status.REJECTED, current, update.version,
                               f"other_model: {update.model_id}")
            if not bootstrap:
                if update.version <= current:
                    return Outcome(Status.IGNORED, current, update.version, "already_applied")
                if update.kind == "delta" and update.base_version != current:
                    return Outcome(Status.NEEDS_BOOTSTRAP, current, update.version,
                                   f"gap: delta on {update.base_version}, serving {current}")
            if self.device.type != "cpu":
                update = replace(update, tensors={
                    name: t.to(self.device) for name, t in update.tensors.items()})
            try:
                state = apply_update(self._state, update, self.tables.writable)
                model = rebind(self._template, state)
            except UpdateRejected as err:
                self.tables.forget()
                return Outcome(Status.REJECTED, current, update.version, err.reason)
            self.tables.adopt(state, model)
            self._state = state
            self._served = (update.version, model)
            self.model_id = update.model_id
            self.last_update = replace(update, tensors={})
            return Outcome(Status.APPLIED, update.version, update.version)


def rebind(template: Ranker, state: dict[str, Tensor]) -> Ranker:
    """A copy of ``template`` (in eval mode, no gradients) whose parameters and buffers *are*
    ``state``'s tensors (no copy of the weights).

    Shallow copies of the module tree with new parameter and buffer dicts: about a hundred
    times cheaper than constructing the model (which initialises every table) per update, and
    the same for any module tree. Names missing from ``state`` (non-persistent buffers) keep
    the template's tensors; names of ``state`` the tree does not have are an error.
    """
    unused = set(state)

    def copy_module(module: nn.Module, prefix: str) -> nn.Module:
        # copy.copy's shallow copy, written into __dict__ directly: Module.__setattr__'s checks
        # and copy's protocol were a quarter of an apply (profiled)
        new = object.__new__(type(module))
        attrs = new.__dict__
        attrs.update(module.__dict__)
        parameters: dict[str, nn.Parameter | None] = {}
        for name, param in module._parameters.items():  # noqa: SLF001
            key = prefix + name
            if param is None or key not in state:
                parameters[name] = param
                continue
            unused.discard(key)
            parameters[name] = nn.Parameter(state[key], requires_grad=False)
        buffers: dict[str, Tensor | None] = {}
        for name, buf in module._buffers.items():  # noqa: SLF001
            key = prefix + name
            unused.discard(key)
            buffers[name] = state.get(key, buf)
        attrs["_parameters"], attrs["_buffers"] = parameters, buffers
        attrs["_modules"] = {name: copy_module(child, f"{prefix}{name}.")
                             for name, child in module._modules.items()  # noqa: SLF001
                             if child is not None}
        attrs["training"] = False
        return new

    model = copy_module(template, "")
    if unused:
        raise UpdateRejected("incompatible", f"tensors the model does not have: {sorted(unused)}")
    return model  # type: ignore[return-value]
