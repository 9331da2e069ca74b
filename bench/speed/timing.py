"""How every speed figure is taken: the row a measurement fills, the timing loop, the peaks.

Shared by our harness and the peers (``bench.speed.peers``), so both measure the same way:
the first call apart (it compiles where the callee compiles lazily), ``warmup`` untimed calls,
then the median of ``repeats`` timed calls, each returning only once its work is done.

Inside ``taking_turns(turns)`` every call of ``time_calls`` waits for this process's turn
first (``turns.turn()``, a context manager), and a timed call comes after ``SETTLE_S`` of
untimed ones in the same turn (the caches and thread pools as a training loop finds them): ``bench speed``
times ours and each peer's steps in separate processes that take turns call by call, so that
a shared machine's load falls on both alike and no two steps ever run at once
(``bench.speed.peers.PeerTurns``).
"""

from __future__ import annotations

import contextlib
import contextvars
import statistics
import time
from typing import Any, Callable

SETTLE_S = 0.05
_turns: contextvars.ContextVar = contextvars.ContextVar("bench_speed_turns", default=None)


@contextlib.contextmanager
def taking_turns(turns):
    """Within the block, ``time_calls`` runs each call inside ``turns.turn()``."""
    token = _turns.set(turns)
    try:
        yield turns
    finally:
        _turns.reset(token)

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
    """The dense peak of one device, or None when the device is not in ``PEAK_TFLOPS``; for
    ``'cpu'`` the fp32 peak of the CPUs this process may use (``cpu_peak``), all of them."""
    if device_kind.lower() == "cpu":
        peak = cpu_peak() if precision == "fp32" else None
        return peak["tflops"] if peak else None
    for key, peaks in PEAK_TFLOPS:
        if key.lower() in device_kind.lower():
            return peaks.get(precision)
    return None


def _cpuinfo_fields(text: str) -> dict[str, str]:
    """The first processor's ``key: value`` lines of ``/proc/cpuinfo``."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def fp32_flops_per_cycle(fields: dict[str, str]) -> tuple[int, str]:
    """Peak fp32 FLOPs per cycle of one core (FMA = 2 FLOPs) and the assumption behind it,
    from the ISA flags, vendor and family of ``/proc/cpuinfo``."""
    flags = set(fields.get("flags", "").split())
    amd = "AMD" in fields.get("vendor_id", "")
    family = int(fields.get("cpu family", "0") or 0)
    model = int(fields.get("model", "0") or 0)
    if "avx512f" in flags:
        if amd and family < 26:
            return 32, "AVX-512 on AMD Zen 4: two 256-bit FMA pipes (512-bit ops double-pumped)"
        return 64, "AVX-512: two 512-bit FMA units per core"
    if "avx2" in flags and "fma" in flags:
        if amd and family == 23 and model < 0x30:
            return 16, "AMD Zen 1: two 128-bit FMA pipes"
        return 32, "AVX2 + FMA: two 256-bit FMA units per core"
    if "avx" in flags:
        return 16, "AVX without FMA: one 256-bit add and one multiply per cycle"
    return 8, "SSE: one 128-bit add and one multiply per cycle"


def cpu_peak(cpuinfo: str | None = None, cpus: int | None = None) -> dict | None:
    """This CPU's dense fp32 peak: ``{'tflops', 'cores', 'flops_per_cycle', 'ghz',
    'assumption'}``, as cores x FLOPs per cycle x clock. Cores: the CPUs this process may run
    on (``cpus``, else its affinity) less SMT siblings; the clock is ``/proc/cpuinfo``'s
    ``cpu MHz`` (the nominal rate under a hypervisor, no boost). None where
    ``/proc/cpuinfo`` is missing or has no clock (not Linux x86)."""
    import os

    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read(1 << 20)
        except OSError:
            return None
    fields = _cpuinfo_fields(cpuinfo)
    try:
        mhz = float(fields["cpu MHz"])
    except (KeyError, ValueError):
        return None
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else (os.cpu_count() or 1)
    try:
        smt = max(1, int(fields.get("siblings", 1)) // max(1, int(fields.get("cpu cores", 1))))
    except ValueError:
        smt = 1
    cores = max(1, cpus // smt)
    per_cycle, assumption = fp32_flops_per_cycle(fields)
    return {"tflops": cores * per_cycle * mhz * 1e6 / 1e12, "cores": cores,
            "flops_per_cycle": per_cycle, "ghz": mhz / 1000, "assumption": assumption}


def cpu_peak_text(peak: dict | None = None) -> str:
    """``'2 cores x 32 FLOP/cycle x 2.60 GHz = 0.166 TFLOP/s fp32 (assumption)'``."""
    peak = peak or cpu_peak()
    if not peak:
        return "CPU peak unknown"
    return (f"{peak['cores']} cores x {peak['flops_per_cycle']} FLOP/cycle x "
            f"{peak['ghz']:.2f} GHz = {peak['tflops']:.3g} TFLOP/s fp32 "
            f"({peak['assumption']}; nominal clock, no boost)")


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
    turns = _turns.get()
    turn = turns.turn if turns is not None else contextlib.nullcontext
    with turn():
        t0 = time.perf_counter()
        call()
        first = time.perf_counter() - t0
    for _ in range(warmup):
        with turn():
            call()
    times = []
    for _ in range(max(1, repeats)):
        with turn():
            if turns is not None:
                # Taking turns, the other process has just run (and its OpenMP threads may
                # still spin for some milliseconds): untimed calls for at least SETTLE_S
                # first, so that the timed one finds the machine as a step in a loop does.
                settled = time.perf_counter() + SETTLE_S
                call()
                while time.perf_counter() < settled:
                    call()
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
    return first, statistics.median(times)
