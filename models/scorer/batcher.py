"""Gathers concurrent scoring requests into one forward pass, on the scorer's device.

Requests hand their encoded candidates (a :class:`~models.ranker.Batch`, the encoder's output
for training examples too) to :meth:`Batcher.score` and await the result. The pass runs on the
event loop itself, with no hand-off to a thread: the requests that handed in their batches in
the same turn of the loop (those whose feature reads completed together, typically while the
previous pass ran) share it. While other admitted requests are still being prepared
(features being read), a pass waits up to ``max_wait_s`` for them, up to ``max_candidates``
candidates; the served model is read once per pass, so every request of a pass gets the same
version. With nothing else in preparation a request is scored at once, so light load pays no
wait.

On a GPU (:data:`DEVICE_POLICY`) a pass runs in the batcher's own thread instead, one at a
time: the loop goes on reading features while the device computes, and the requests handed in
meanwhile make up the next pass, so a pass grows with the load (up to a larger
``max_candidates``: a GPU's pass costs about the same from one candidate to tens of thousands).
On a CPU the pass and the loop would share one core and the interpreter lock: the hand-off
would only add a wake-up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from models.ranker import Batch, Ranker
from models.scorer.service import Served


@dataclass(frozen=True)
class DevicePolicy:
    """How a device's passes are gathered: ``offload`` runs them in the batcher's thread, one
    at a time; ``max_candidates`` caps a pass when ``max_batch_candidates`` is 0."""

    offload: bool
    max_candidates: int


DEVICE_POLICY = {"cpu": DevicePolicy(offload=False, max_candidates=16_384),
                 "cuda": DevicePolicy(offload=True, max_candidates=131_072)}
"""Per device type (others take the CPU's)."""


def device_policy(device: torch.device) -> DevicePolicy:
    """The batching policy of ``device``'s type."""
    return DEVICE_POLICY.get(device.type, DEVICE_POLICY["cpu"])


@dataclass
class _Job:
    batch: Batch
    future: asyncio.Future[tuple[int, np.ndarray]]


def concat(batches: list[Batch]) -> Batch:
    """The batches' rows one after the other (one batch: itself)."""
    if len(batches) == 1:
        return batches[0]
    return Batch(*(torch.cat(parts) for parts in zip(*batches)))


class HostStaging:
    """Host buffers a batch is copied into before it goes to the device, grown as needed and
    reused pass after pass; page-locked (pinned) with ``pin``, so that the copy to a CUDA
    device is one asynchronous DMA per tensor instead of a staged, blocking one.

    A buffer is written again only by the next pass, after :func:`forward` has waited for the
    previous one's result (``.cpu()``), so no upload still reads it.
    """

    def __init__(self, pin: bool) -> None:
        self.pin = pin
        self._buffers: list[torch.Tensor] = []

    def stage(self, batch: Batch) -> Batch:
        """``batch``'s tensors copied into the buffers (views of them, same shapes)."""
        out = []
        for k, t in enumerate(batch):
            if k == len(self._buffers):
                self._buffers.append(torch.empty(0, dtype=t.dtype))
            buffer = self._buffers[k]
            if buffer.numel() < t.numel() or buffer.dtype != t.dtype:
                buffer = torch.empty(max(t.numel(), 2 * buffer.numel()), dtype=t.dtype)
                self._buffers[k] = buffer = buffer.pin_memory() if self.pin else buffer
            out.append(buffer[:t.numel()].view(t.shape).copy_(t))
        return Batch(*out)


def forward(served: Served, batch: Batch, staging: HostStaging | None = None) -> np.ndarray:
    """``B X 2`` float64 (p_click, p_purchase) of one pass on the model's device (through
    ``staging`` when given)."""
    model = served[1]
    device = next(model.parameters()).device
    if staging is not None:
        batch = staging.stage(batch)
    with torch.inference_mode():
        logits = model(*(x.to(device, non_blocking=True) for x in batch))
        return Ranker.probabilities(logits).double().cpu().numpy()


class Batcher:
    """One forward pass for the requests gathered (module docstring).

    ``current`` gives the served pair; ``observe(candidates, requests)`` sees every pass.
    ``max_candidates`` 0 takes the device's (:data:`DEVICE_POLICY`), as does ``offload``
    when None. On a CUDA ``device`` the batches go up through pinned :class:`HostStaging`
    buffers. Call :meth:`start` inside the event loop and :meth:`close` at the end.
    """

    def __init__(self, current: Callable[[], Served], max_wait_s: float, max_candidates: int,
                 observe: Callable[[int, int], None] = lambda candidates, requests: None,
                 device: torch.device = torch.device("cpu"), offload: bool | None = None,
                 ) -> None:
        policy = device_policy(device)
        self._current = current
        self._staging = HostStaging(pin=True) if device.type == "cuda" else None
        self._max_wait = max_wait_s
        self.max_candidates = max_candidates or policy.max_candidates
        self._observe = observe
        self._pending: list[_Job] = []
        self._size = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._soon: asyncio.Handle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._device_thread = (ThreadPoolExecutor(1, thread_name_prefix="forward")
                               if (policy.offload if offload is None else offload) else None)
        self._in_flight = False
        self.preparing = 0
        """Requests admitted and not yet handed to :meth:`score` (maintained by the app)."""

    def start(self) -> None:
        """Bind to the running loop."""
        self._loop = asyncio.get_running_loop()

    async def close(self) -> None:
        """Cancel the requests still waiting for a pass."""
        for handle in (self._soon, self._timer):
            if handle is not None:
                handle.cancel()
        for job in self._pending:
            job.future.cancel()
        self._pending, self._size = [], 0
        if self._device_thread is not None:
            self._device_thread.shutdown(wait=True)

    async def score(self, batch: Batch) -> tuple[int, np.ndarray]:
        """The version and ``B X 2`` probabilities of these encoded candidates."""
        loop = self._loop or asyncio.get_running_loop()
        future: asyncio.Future[tuple[int, np.ndarray]] = loop.create_future()
        self._pending.append(_Job(batch, future))
        self._size += len(batch.sparse)
        if self.preparing <= 0 or self._size >= self.max_candidates:
            if self._soon is None:
                self._soon = loop.call_soon(self._flush)
        elif self._timer is None:
            self._timer = loop.call_later(self._max_wait, self._flush)
        return await future

    def _flush(self) -> None:
        """One pass over the pending requests (up to ``max_candidates``; the rest next)."""
        for handle in (self._soon, self._timer):
            if handle is not None:
                handle.cancel()
        self._soon = self._timer = None
        if self._in_flight:  # offloaded: the pass under way flushes again when it ends
            return
        jobs: list[_Job] = []
        size = 0
        while self._pending and (not jobs or size + len(self._pending[0].batch.sparse)
                                 <= self.max_candidates):
            job = self._pending.pop(0)
            jobs.append(job)
            size += len(job.batch.sparse)
        self._size -= size
        jobs = [job for job in jobs if not job.future.done()]  # cancelled: client gone
        if self._device_thread is not None and jobs:
            self._in_flight = True
            task = asyncio.get_running_loop().run_in_executor(
                self._device_thread, self._pass, [job.batch for job in jobs])
            task.add_done_callback(lambda done: self._passed(jobs, done))
            return
        if self._pending:
            self._soon = asyncio.get_running_loop().call_soon(self._flush)
        if jobs:
            try:
                result = self._pass([job.batch for job in jobs])
            except Exception as err:  # noqa: BLE001 - every waiting request gets the error
                self._answer(jobs, err)
                return
            self._answer(jobs, result)

    def _pass(self, batches: list[Batch]) -> tuple[Served, np.ndarray]:
        served = self._current()
        return served, forward(served, concat(batches), self._staging)

    def _passed(self, jobs: list[_Job], done: asyncio.Future[tuple[Served, np.ndarray]]) -> None:
        """An offloaded pass ended: answer its requests and start the next pass."""
        self._in_flight = False
        if self._pending and self._soon is None:
            self._soon = asyncio.get_running_loop().call_soon(self._flush)
        if done.cancelled():
            self._answer(jobs, asyncio.CancelledError())
            return
        error = done.exception()
        self._answer(jobs, error if error is not None else done.result())

    def _answer(self, jobs: list[_Job],
                result: tuple[Served, np.ndarray] | BaseException) -> None:
        """Each job's slice of a pass's result (or the pass's error)."""
        if isinstance(result, BaseException):
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(result)
            return
        served, probs = result
        self._observe(sum(len(job.batch.sparse) for job in jobs), len(jobs))
        start = 0
        for job in jobs:
            n = len(job.batch.sparse)
            if not job.future.done():
                job.future.set_result((served[0], probs[start:start + n]))
            start += n
