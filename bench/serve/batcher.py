"""Micro-batching: concurrent requests' images queued and run together through the jitted
predictor, in a fixed set of padded batch shapes compiled at start-up (TF Serving's batching
scheduler in miniature: ``max_batch`` images or ``max_wait_ms``, whichever comes first)."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np


class QueueFull(Exception):
    """The queue holds ``max_queue`` images already: the caller answers 503 + Retry-After."""


def batch_shapes(max_batch: int) -> list[int]:
    """Padded batch sizes run: powers of two below ``max_batch``, then ``max_batch`` itself."""
    if max_batch < 1:
        raise ValueError(f"--max-batch {max_batch}: expected a positive integer")
    shapes, b = [], 1
    while b < max_batch:
        shapes.append(b)
        b *= 2
    return shapes + [max_batch]


def padded(n: int, shapes: list[int]) -> int:
    """The smallest compiled batch shape that holds ``n`` images."""
    return next(s for s in shapes if s >= n)


@dataclass
class Stats:
    """What the worker has done: batches run per padded shape and images per batch."""
    batches: dict = field(default_factory=dict)   # padded shape -> count
    images: int = 0
    largest: int = 0                               # most real images in one batch

    def as_dict(self) -> dict:
        return {"batches": {str(k): v for k, v in sorted(self.batches.items())},
                "images": self.images, "largest_batch": self.largest}


class MicroBatcher:
    """Group single decoded images (``{size: (H, W, 3) uint8}``) into padded batches for
    ``predictor.proba_decoded``. One worker task; the predictor runs in its own thread, so
    the event loop keeps accepting uploads while a batch computes.

    Args:
        predictor: a ``bench.predict.Predictor``.
        max_batch: most images per batch (the largest compiled shape).
        max_wait_ms: how long the first image of a batch waits for others.
        max_queue: most images waiting; beyond it ``submit`` raises :class:`QueueFull`.
        arriving: how many requests are being read or decoded now (they will submit soon);
            a batch waits for company only while some are, so a lone client never waits.
    """

    def __init__(self, predictor, max_batch: int = 16, max_wait_ms: float = 5.0,
                 max_queue: int = 256, arriving=lambda: 0):
        self.predictor = predictor
        self.sizes = sorted(predictor.decode(np.zeros((8, 8, 3), np.uint8)))  # input sizes
        self.shapes = batch_shapes(max_batch)
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.arriving = arriving
        self.stats = Stats()
        self.compile_seconds: dict[int, float] = {}
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="predict")  # the predictor's thread

    def warm_up(self) -> dict[int, float]:
        """Compile every padded shape (blocking; run it in a thread). Returns seconds each."""
        for b in self.shapes:
            zeros = {s: np.zeros((b, *s, 3), np.uint8) for s in self.sizes}
            t0 = time.perf_counter()
            self.predictor.proba_decoded(zeros, batch=b)
            self.compile_seconds[b] = time.perf_counter() - t0
        return self.compile_seconds

    def start(self) -> None:
        """Start the worker on the running event loop."""
        self._queue = asyncio.Queue(self.max_queue)
        self._task = asyncio.get_running_loop().create_task(self._work(), name="batcher")

    async def stop(self) -> None:
        """Cancel the worker (after the server has answered its requests) and the thread."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self.pool.shutdown(wait=True)

    def queued(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def submit(self, images: list[dict]) -> list[np.ndarray]:
        """Probabilities for each decoded image, in order; all queued or none (QueueFull)."""
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        if self._queue.qsize() + len(images) > self.max_queue:
            raise QueueFull(f"{self._queue.qsize()} images queued (--max-queue "
                            f"{self.max_queue})")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in images]
        for img, fut in zip(images, futures):
            self._queue.put_nowait((img, fut))  # cannot fail: room checked above, one loop
        return list(await asyncio.gather(*futures))

    async def _gather(self) -> list[tuple[dict, asyncio.Future]]:
        """The next batch: the first waiting image, then whatever is queued, then whatever
        arrives within max_wait while requests are still on their way."""
        items = [await self._queue.get()]
        deadline = time.monotonic() + self.max_wait
        while len(items) < self.max_batch:
            if not self._queue.empty():
                items.append(self._queue.get_nowait())
                continue
            left = deadline - time.monotonic()
            if left <= 0 or not self.arriving():
                break
            try:
                items.append(await asyncio.wait_for(self._queue.get(), left))
            except asyncio.TimeoutError:
                break
        return items

    def _run(self, images: list[dict]) -> np.ndarray:
        """One padded batch through the predictor (in the predict thread)."""
        b = padded(len(images), self.shapes)
        stacked = {s: np.stack([im[s] for im in images]) for s in images[0]}
        return self.predictor.proba_decoded(stacked, batch=b)

    async def _work(self) -> None:
        """Worker loop: gather, run off the event loop, hand each caller its row."""
        loop = asyncio.get_running_loop()
        while True:
            items = await self._gather()
            live = [(im, f) for im, f in items if not f.done()]  # a cancelled caller's image
            if not live:
                continue
            try:
                proba = await loop.run_in_executor(self.pool, self._run, [im for im, _ in live])
            except Exception as e:  # the predictor failed: every caller of this batch hears it
                for _, f in live:
                    if not f.done():
                        f.set_exception(e)
                continue
            b = padded(len(live), self.shapes)
            self.stats.batches[b] = self.stats.batches.get(b, 0) + 1
            self.stats.images += len(live)
            self.stats.largest = max(self.stats.largest, len(live))
            for (_, f), p in zip(live, proba):
                if not f.done():
                    f.set_result(p)
