"""Micro-batching for the HTTP server: concurrent requests share pipeline calls.

A request waits at most ``max_wait`` seconds for compatible requests (same ``BatchKey``) to join
it, up to ``max_batch`` images; while the engine works on one batch the next fills, so under load
batches are full and nobody waits for the timer. Requests beyond ``max_queue`` waiting are
refused at once (``QueueFullError`` → 503 with Retry-After) rather than queued without bound.
The batcher is a coroutine on the server's event loop: it awaits the engine
(``Engine.generate_async``), whose one thread runs the pipeline; it has no threads of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from gpu_service.image_specs import BatchKey, ImageSpec

logger = logging.getLogger(__name__)


class QueueFullError(Exception):
    """More requests are waiting than the server accepts."""


@dataclass
class _Pending:
    spec: ImageSpec
    future: asyncio.Future[bytes]


@dataclass(frozen=True)
class BatchRecord:
    key: BatchKey
    size: int
    seconds: float


class MicroBatcher:
    """Collects ``ImageSpec`` from coroutines and hands them to ``generate`` in batches, one
    batch at a time."""

    def __init__(
        self,
        generate: Callable[[Sequence[ImageSpec]], Awaitable[list[bytes]]],
        *,
        max_batch: int,
        max_wait: float,
        max_queue: int,
        on_batch: Callable[[BatchRecord], None] | None = None,
        history: int = 1000,
    ) -> None:
        self._generate = generate
        self._max_batch = max_batch
        self._max_wait = max_wait
        self._max_queue = max_queue
        self._on_batch = on_batch
        self._pending: list[_Pending] = []
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.batches: deque[BatchRecord] = deque(maxlen=history)
        """The most recent batches run, oldest first (for metrics, tests and the benchmark)."""

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="micro-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for pending in self._pending:
            pending.future.cancel()
        self._pending.clear()

    async def submit(self, spec: ImageSpec) -> bytes:
        """PNG bytes for ``spec``; raises ``QueueFullError`` when the queue is full."""
        if len(self._pending) >= self._max_queue:
            raise QueueFullError(f"{len(self._pending)} requests already waiting")
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(spec, future))
        self._arrived.set()
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._drop_abandoned()
            if not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            key = self._pending[0].spec.batch_key
            deadline = loop.time() + self._max_wait
            while self._count(key) < self._max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except TimeoutError:
                    break
            batch = self._take(key)
            if not batch:
                continue
            started = loop.time()
            try:
                images = await self._generate([pending.spec for pending in batch])
            except asyncio.CancelledError:  # stopped: nobody will answer these requests
                for pending in batch:
                    pending.future.cancel()
                raise
            except Exception as error:
                logger.exception("batch of %d failed", len(batch))
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(error)
                continue
            record = BatchRecord(key, len(batch), loop.time() - started)
            self.batches.append(record)
            if self._on_batch is not None:
                self._on_batch(record)
            for pending, image in zip(batch, images, strict=True):
                if not pending.future.done():  # a client that left has a cancelled future
                    pending.future.set_result(image)

    def _drop_abandoned(self) -> None:
        self._pending = [pending for pending in self._pending if not pending.future.done()]

    def _count(self, key: BatchKey) -> int:
        return sum(1 for pending in self._pending if pending.spec.batch_key == key)

    def _take(self, key: BatchKey) -> list[_Pending]:
        batch: list[_Pending] = []
        rest: list[_Pending] = []
        for pending in self._pending:
            if pending.future.done():
                continue
            if pending.spec.batch_key == key and len(batch) < self._max_batch:
                batch.append(pending)
            else:
                rest.append(pending)
        self._pending = rest
        return batch
