"""Gathers concurrent scoring requests into one forward pass, on the scorer's device.

Requests hand their encoded candidates to :meth:`Batcher.score` and await the result. One
worker task takes the first waiting request and, while other requests are still being prepared
(features being read), waits up to ``max_wait_s`` for them, up to ``max_candidates``
candidates; then one forward pass of the served model (read once: every request of the pass
gets the same version) runs in a dedicated thread, and each request gets its rows back. With
nothing else in preparation a request is scored at once, so light load pays no wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from models.ranker import Ranker
from models.scorer.service import Served


@dataclass
class _Job:
    sparse: Tensor
    dense: Tensor
    future: asyncio.Future[tuple[int, np.ndarray]]


def forward(served: Served, sparse: Tensor, dense: Tensor) -> np.ndarray:
    """``B X 2`` float64 (p_click, p_purchase) of one pass on the model's device."""
    model = served[1]
    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = model(sparse.to(device, non_blocking=True), dense.to(device, non_blocking=True))
        return Ranker.probabilities(logits).double().cpu().numpy()


class Batcher:
    """One forward pass for the requests gathered within ``max_wait_s`` (module docstring).

    ``current`` gives the served pair; ``observe(candidates, requests)`` sees every pass.
    Call :meth:`start` inside the event loop and :meth:`close` at the end.
    """

    def __init__(self, current: Callable[[], Served], max_wait_s: float, max_candidates: int,
                 observe: Callable[[int, int], None] = lambda candidates, requests: None) -> None:
        self._current = current
        self._max_wait = max_wait_s
        self._max_candidates = max_candidates
        self._observe = observe
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="forward")
        self._task: asyncio.Task[None] | None = None
        self.preparing = 0
        """Requests admitted and not yet handed to :meth:`score` (maintained by the app)."""

    def start(self) -> None:
        """Start the worker task on the running loop."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Stop the worker and the forward thread."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    async def score(self, sparse: Tensor, dense: Tensor) -> tuple[int, np.ndarray]:
        """The version and ``B X 2`` probabilities of these candidates."""
        future: asyncio.Future[tuple[int, np.ndarray]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Job(sparse, dense, future))
        return await future

    async def _gather(self) -> list[_Job]:
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        size = len(batch[0].sparse)
        deadline = loop.time() + self._max_wait
        while size < self._max_candidates:
            if not self._queue.empty():
                job = self._queue.get_nowait()
            elif self.preparing > 0 and (left := deadline - loop.time()) > 0:
                try:
                    job = await asyncio.wait_for(self._queue.get(), left)
                except TimeoutError:
                    break
            else:
                break
            batch.append(job)
            size += len(job.sparse)
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            try:
                version, probs = await loop.run_in_executor(self._executor, self._pass, batch)
            except Exception as err:  # noqa: BLE001 - every waiting request gets the error
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(err)
                continue
            start = 0
            for job in batch:
                n = len(job.sparse)
                if not job.future.done():
                    job.future.set_result((version, probs[start:start + n]))
                start += n

    def _pass(self, batch: list[_Job]) -> tuple[int, np.ndarray]:
        served = self._current()
        if len(batch) == 1:
            sparse, dense = batch[0].sparse, batch[0].dense
        else:
            sparse = torch.cat([job.sparse for job in batch])
            dense = torch.cat([job.dense for job in batch])
        probs = forward(served, sparse, dense)
        self._observe(len(sparse), len(batch))
        return served[0], probs
