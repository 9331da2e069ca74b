"""Streaming input: training batches read from host memory (or the decoded cache's memmap) by a
background thread and placed on the devices ahead of the step, for training sets that do not
fit the devices' memory.

The batch order is the on-device path's: epoch ``e`` visits the rows in
``np.random.default_rng([seed, e]).permutation(n)`` order, ``batch`` rows a step, the
remainder dropped (``epoch_order``). A global batch is sharded over the ``"data"`` mesh axis;
each process reads only the rows of its own devices' shards and the global array is built
with ``jax.make_array_from_process_local_data``, so 1 and N processes see the same global
batches. Augmentation is not done here: it stays inside the jitted step, on the device.

The iterator's whole state is ``(epoch, step)`` of the next batch: the permutation is a pure
function of ``(seed, epoch)``, so a checkpoint that records the step resumes the stream
exactly (``BatchStream(..., start=(epoch, step))``).

Host memory: at most ``prefetch`` batches are in flight, and a memmap's rows are read with
``os.pread`` (``RowReader``), never through the mapping, so the RSS stays at the prefetch
depth whatever the data set's size (the page cache keeps the data for the next epoch where
the memory allows).

Why a small thread rather than Grain (``grain.DataLoader``/``MapDataset``, which has a wheel
for this Python): the images are already decoded (``bench.data`` decodes once into ``.npy``),
so a batch is one gather of ``batch`` rows (0.1 ms for 128 CIFAR images, ~10 ms for 128
ImageNet-size 224x224 images), which one thread does far faster than any step consumes;
Grain's value, parallel per-record transforms in worker processes, is not needed, its worker
processes would fork a process running JAX (``bench.data`` avoids that for the same reason),
its ``IndexSampler`` shuffles in another order than the on-device path (so ``device`` and
``stream`` would not train on the same batches), and its checkpointable iterator state would
here be exactly ``(epoch, step)``. The day per-record decoding moves into the input pipeline
(JPEG bytes in ArrayRecord rather than decoded arrays: see ``docs/scaling.md``) Grain is the
one to take: ``grain.MapDataset.source(records).map(decode)`` with ``worker_count`` processes,
batched in this module's order.
"""

from __future__ import annotations

import mmap
import os
import queue
import threading
import time
from typing import Any, Sequence

import numpy as np

# Tests set this to a list to see which rows this process read: (epoch, step, rows) tuples.
ROW_LOG: list | None = None

DEVICE_FRACTION = 0.5     # auto: stream above this fraction of the smallest device's memory


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The rows of epoch ``epoch`` in visiting order (the on-device path's order too)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


# -- placement ----------------------------------------------------------------------------

def host_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def device_budget(devices: Sequence[Any], budget_mb: float | None = None,
                  fraction: float = DEVICE_FRACTION) -> tuple[int, str]:
    """``(bytes, how)``: what the training set may take on each device. ``budget_mb`` when
    given; else ``fraction`` of the smallest device's ``memory_stats()['bytes_limit']``; where
    devices report no memory (CPU), ``fraction`` of host RAM shared by the local devices."""
    if budget_mb is not None:
        return int(budget_mb * (1 << 20)), f"--placement-budget-mb {budget_mb:g}"
    limits = []
    for d in devices:
        try:
            stats = d.memory_stats() or {}
        except Exception:  # not implemented on this platform
            stats = {}
        if stats.get("bytes_limit"):
            limits.append(int(stats["bytes_limit"]))
    if limits:
        return int(fraction * min(limits)), (f"{fraction:g} of the smallest device's "
                                             f"{min(limits) / 2**30:.1f} GiB")
    host = host_memory_bytes()
    n = max(1, len(devices))
    return int(fraction * host / n), (f"{fraction:g} of host RAM {host / 2**30:.1f} GiB over "
                                      f"{n} local device(s)")


def choose_placement(mode: str, nbytes: int, devices: Sequence[Any],
                     budget_mb: float | None = None) -> tuple[str, str]:
    """``('device' | 'stream', reason)`` for a training set of ``nbytes`` (replicated on every
    device in ``device`` placement)."""
    if mode in ("device", "stream"):
        return mode, f"--data-placement {mode}"
    if mode != "auto":
        raise ValueError(f"--data-placement {mode!r}: expected auto, device or stream")
    budget, how = device_budget(devices, budget_mb)
    mb = nbytes / 2**20
    if nbytes > budget:
        return "stream", f"the training set ({mb:.0f} MB) exceeds {how} ({budget / 2**20:.0f} MB)"
    return "device", f"the training set ({mb:.0f} MB) fits {how} ({budget / 2**20:.0f} MB)"


# -- reading rows -------------------------------------------------------------------------

def _find_mmap(a) -> mmap.mmap | None:
    """The ``mmap`` behind a ``np.memmap`` (or a view of one), else None."""
    while a is not None:
        mm = getattr(a, "_mmap", None)
        if isinstance(mm, mmap.mmap):
            return mm
        a = getattr(a, "base", None)
    return None


def _file_rows(a) -> tuple[str, int] | None:
    """``(file, byte offset of row 0)`` when ``a`` is a memmap (or a view of one) whose rows
    are contiguous in its file, else None."""
    mm = _find_mmap(a)
    name = getattr(a, "filename", None)
    if mm is None or not name or a.ndim < 1 or not a[:1].flags.c_contiguous:
        return None
    row = int(np.prod(a.shape[1:], dtype=np.int64)) * a.dtype.itemsize
    if len(a) > 1 and a.strides[0] != row:
        return None
    base = np.frombuffer(mm, np.uint8).ctypes.data
    offset = int(getattr(a, "offset", 0) or 0)
    start = offset - offset % mmap.ALLOCATIONGRANULARITY  # where np.memmap's mapping starts
    return str(name), start + (a.ctypes.data - base)


class RowReader:
    """``reader(rows)`` -> a fresh array of those rows, read in sorted order (sequential reads)
    and put back in the asked order.

    Rows of a memmap are read with ``os.pread`` from its file rather than through the
    mapping: the data comes from the page cache all the same, but nothing is mapped into
    the process, so its RSS does not grow with the rows read (through the mapping, the
    kernel's fault-around maps ~64 KB per touched row, and a random batch of small images
    maps the whole file within a few steps). Other arrays are indexed in memory."""

    def __init__(self, a: np.ndarray):
        self.a = a
        self.row_bytes = int(np.prod(a.shape[1:], dtype=np.int64)) * a.dtype.itemsize
        src = _file_rows(a) if isinstance(a, np.ndarray) else None
        self.fd, self.offset = None, 0
        if src is not None:
            self.fd = os.open(src[0], os.O_RDONLY)
            self.offset = src[1]

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, np.int64)
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows),) + tuple(self.a.shape[1:]), self.a.dtype)
        if self.fd is None:
            out[order] = self.a[rows[order]]
            return out
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self.a)):
            raise IndexError(f"rows outside 0..{len(self.a) - 1}")
        flat = out.reshape(len(rows), -1).view(np.uint8)
        srt = rows[order]
        k = 0
        while k < len(srt):  # runs of consecutive rows in one read
            j = k + 1
            while j < len(srt) and srt[j] == srt[j - 1] + 1 and order[j] == order[j - 1] + 1:
                j += 1
            dest = memoryview(flat[order[k]:order[k] + (j - k)].reshape(-1))
            pos, done = self.offset + int(srt[k]) * self.row_bytes, 0
            while done < len(dest):  # pread may return less (very large reads)
                got = os.preadv(self.fd, [dest[done:]], pos + done)
                if got <= 0:
                    raise OSError(f"{self.a.filename}: file ends inside rows "
                                  f"{srt[k]}..{srt[j - 1]}")
                done += got
            k = j
        return out

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def local_rows(sharding, batch: int) -> tuple[int, int]:
    """``(lo, hi)``: the rows of a global batch of ``batch`` that this process's devices hold
    (contiguous for the one-axis data mesh)."""
    spans = [idx[0] for idx in sharding.addressable_devices_indices_map((batch,)).values()]
    lo = min(s.start or 0 for s in spans)
    hi = max(batch if s.stop is None else s.stop for s in spans)
    covered = sum((batch if s.stop is None else s.stop) - (s.start or 0) for s in spans)
    if covered != hi - lo:  # replicated or non-contiguous: not the data mesh
        raise ValueError(f"the batch sharding gives this process rows {spans}, not one span")
    return lo, hi


# -- the stream -----------------------------------------------------------------------------

_END = object()


class BatchStream:
    """Global training batches ``(epoch, step, images, labels)`` from ``start = (epoch, step)``
    up to the end of epoch ``end_epoch - 1``, ``prefetch`` of them placed on the devices ahead
    of the consumer by a background thread. ``state`` is the ``(epoch, step)`` of the next
    batch ``next()`` returns. Use as a context manager (or call ``close``)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, batch: int,
                 steps_per_epoch: int, seed: int, sharding, end_epoch: int,
                 start: tuple[int, int] = (0, 0), prefetch: int = 2):
        if steps_per_epoch * batch > len(labels):
            raise ValueError(f"{steps_per_epoch} steps of {batch} exceed {len(labels)} rows")
        self.images, self.labels = images, np.asarray(labels)
        self.batch, self.steps_per_epoch, self.seed = batch, steps_per_epoch, seed
        self.sharding, self.end_epoch = sharding, end_epoch
        self.lo, self.hi = local_rows(sharding, batch)
        self.state = tuple(start)
        self.rows_read = 0
        self.wait_s = 0.0  # consumer time spent waiting for a batch (the loader falling behind)
        self._read = RowReader(images)
        self._q: queue.Queue = queue.Queue(max(1, prefetch))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-stream", daemon=True)
        self._thread.start()

    # producer
    def _batches(self):
        e0, s0 = self.state
        n = len(self.labels)
        for epoch in range(e0, self.end_epoch):
            perm = epoch_order(self.seed, epoch, n)
            for step in range(s0 if epoch == e0 else 0, self.steps_per_epoch):
                yield epoch, step, perm[step * self.batch + self.lo:step * self.batch + self.hi]

    def _run(self):
        import jax

        try:
            for epoch, step, rows in self._batches():
                if self._stop.is_set():
                    return
                x = self._read(rows)
                y = self.labels[rows].astype(np.int32)
                self.rows_read += len(rows)
                if ROW_LOG is not None:
                    ROW_LOG.append((epoch, step, rows.copy()))
                xg = jax.make_array_from_process_local_data(
                    self.sharding, x, (self.batch,) + x.shape[1:])
                yg = jax.make_array_from_process_local_data(self.sharding, y, (self.batch,))
                if not self._put((epoch, step, xg, yg)):
                    return
            self._put(_END)
        except BaseException as e:  # handed to the consumer, raised there
            self._put(e)
        finally:
            self._read.close()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    # consumer
    def __iter__(self):
        return self

    def __next__(self):
        t0 = time.perf_counter()
        item = self._q.get()
        self.wait_s += time.perf_counter() - t0
        if item is _END:
            self._q.put(_END)
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        epoch, step = item[0], item[1]
        self.state = (epoch, step + 1) if step + 1 < self.steps_per_epoch else (epoch + 1, 0)
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
