"""How every speed figure is taken: the row a measurement fills, the timing loop, the peaks.

Shared by our harness and the peers (``bench.speed.peers``), so both measure the same way:
the first call apart (it compiles where the callee compiles lazily), ``warmup`` untimed calls,
then the median of ``repeats`` timed calls, each returning only once its work is done.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

# One row per (model, framework). Peers (bench.peers) return the same keys.
ROW_KEYS = (
    "model", "framework", "precision", "image_size", "batch", "devices", "device", "params",
    "train_img_per_s", "infer_img_per_s", "train_step_ms", "infer_step_ms",
    "train_gflops_per_img", "infer_gflops_per_img", "train_tflops", "infer_tflops",
    "peak_tflops", "train_mfu", "infer_mfu", "train_compile_s", "infer_compile_s",
    "batch_note", "note",
)

# Dense peak TFLOP/s of one device from the vendors' spec sheets, by a substring of
# ``jax.Device.device_kind`` (first match wins, so specific names come first). MFU is against
# these figures; on the H100/H200 lent here a bf16 matmul measured about 790 TFLOP/s
# (shared/REFERENCE.md), so 80% of spec is the practical ceiling. fp32 is the non-tensor-core
# rate: XLA may run float32 convolutions as TF32 on tensor cores, so fp32 MFU can exceed 1.
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H100 PCIe", {"bf16": 756.0, "fp32": 51.2}),
    ("H100", {"bf16": 989.4, "fp32": 66.9}),  # SXM
    ("H200", {"bf16": 989.4, "fp32": 66.9}),  # the H100 chip with more memory
    ("A100", {"bf16": 312.0, "fp32": 19.5}),
    ("TPU v6", {"bf16": 918.0}),
    ("TPU v5p", {"bf16": 459.0}),
    ("TPU v5", {"bf16": 197.0}),  # v5e ("TPU v5 lite")
    ("TPU v4", {"bf16": 275.0}),
)


def peak_tflops(device_kind: str, precision: str) -> float | None:
    """The dense peak of one device, or None when the device is not in ``PEAK_TFLOPS``."""
    for key, peaks in PEAK_TFLOPS:
        if key.lower() in device_kind.lower():
            return peaks.get(precision)
    return None


def new_row(model: str, framework: str, precision: str, image_size: int, batch: int) -> dict:
    """A result row with every ``ROW_KEYS`` key, unmeasured values None."""
    row = dict.fromkeys(ROW_KEYS)
    row.update(model=model, framework=framework, precision=precision, image_size=image_size,
               batch=batch)
    return row


def time_calls(call: Callable[[], Any], warmup: int, repeats: int) -> tuple[float, float]:
    """``(first, median)``: seconds of the first call (which includes compilation where the
    callee compiles lazily), and the median of ``repeats`` calls after ``warmup`` more.
    ``call`` must return only once its work is finished (``block_until_ready`` or a sync)."""
    t0 = time.perf_counter()
    call()
    first = time.perf_counter() - t0
    for _ in range(warmup):
        call()
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times)
