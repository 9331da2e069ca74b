"""An allocator that keeps freed memory, so that XLA:CPU's buffers stop faulting in (Linux).

XLA:CPU allocates every step's outputs and its block of temporaries afresh and frees them at
the end of the step. glibc serves a block above its mmap threshold (at most 32 MiB) with a
new mapping and unmaps it on free, and a thread's own arena cannot hold blocks that large,
so the next step touches fresh pages again: one page fault per 4 KiB, every step. On the
project's 2-core CPU MobileNetV2's train step (batch 16, 224 px) took 332,195 faults and
1.5-1.7 s a step as glibc comes, 110,925 and 1.2-1.4 s with the glibc settings below, 12
and 1.0 s under tcmalloc (``results/examples/cpu-train-gap.md``, section 0). PyTorch
recommends tcmalloc or jemalloc on CPU for the same reason.

The ``bench`` command starts itself again under tcmalloc (``LD_PRELOAD``) when the system
has it (Debian: ``apt-get install libtcmalloc-minimal4``; :func:`reexec_under_tcmalloc`): it
reuses freed blocks after a few steps, every time. Without it, :func:`keep_freed_memory`
sets three glibc ``mallopt`` settings, which need no other library but only mostly work
(alignment leftovers let a few blocks fault in again now and then):

- ``M_MMAP_MAX = 0``: no block is served by its own mapping;
- ``M_TRIM_THRESHOLD = 2**31 - 1``: freed memory at the top of the heap is kept, not
  returned to the system (the process keeps its peak size, as PyTorch's caching allocators
  do);
- ``M_ARENA_MAX = 1``: one arena for all threads, the main heap, which can hold any size.

Both happen only in the ``bench`` program itself, never in a host that calls
``bench.cli.main()`` (a notebook, a test runner): the ``mallopt`` settings also slow XLA's
compiler (InceptionV3's train step compiled in 44-48 s against 40 s), which such a host did
not ask for.

Library users start Python with ``LD_PRELOAD=$(python -m runtime.malloc)`` or call
:func:`keep_freed_memory` before their first JAX computation. ``BENCH_MALLOC=system`` leaves
the allocator alone; ``BENCH_MALLOC=glibc`` skips tcmalloc and keeps the ``mallopt``
settings.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import sys

_ENV = "BENCH_MALLOC"
_REEXEC = "BENCH_MALLOC_REEXEC"  # set in the restarted process: never restart twice
TCMALLOC_GLOBS = tuple(f"{d}/libtcmalloc_minimal.so.4" for d in (
    "/usr/lib/*-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib"))
# mallopt(3) parameter numbers, from glibc's malloc.h.
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
SETTINGS = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1), (M_ARENA_MAX, 1))
PRELOADED = ("tcmalloc", "jemalloc", "mimalloc")

_state: str | None = None


def _preloaded() -> str | None:
    """The allocator ``LD_PRELOAD`` names (one of ``PRELOADED``), or ``None``."""
    preload = os.environ.get("LD_PRELOAD", "")
    return next((name for name in PRELOADED if name in preload), None)


def allocator() -> str:
    """What serves this process's memory, in words, for run records and speed tables."""
    if _preloaded():
        return f"{_preloaded()} (LD_PRELOAD)"
    if _state == "kept":
        return "glibc, freed memory kept (mallopt)"
    return "system default"


def find_tcmalloc() -> str | None:
    """The path of the system's tcmalloc (gperftools' minimal build), or ``None``."""
    for pattern in TCMALLOC_GLOBS:
        for path in sorted(glob.glob(pattern)):
            if os.path.isfile(path):
                return path
    return None


def reexec_under_tcmalloc() -> None:
    """Start this program again with tcmalloc preloaded, when the system has it and nothing
    says otherwise (``BENCH_MALLOC`` unset or ``tcmalloc``, no allocator preloaded yet, not
    restarted already). Returns only when it does not restart. Call it first thing in a
    program's entry point, before any thread or output exists: the process is replaced."""
    if (os.environ.get(_ENV, "tcmalloc").lower() != "tcmalloc" or os.environ.get(_REEXEC)
            or not sys.platform.startswith("linux") or _preloaded()):
        return
    path = find_tcmalloc()
    argv = list(getattr(sys, "orig_argv", []) or [])
    if path is None or not argv or not sys.executable or not is_bench_program():
        return
    preload = " ".join(p for p in (path, os.environ.get("LD_PRELOAD", "")) if p)
    env = dict(os.environ, LD_PRELOAD=preload, **{_REEXEC: "1"})
    # tcmalloc reports every allocation over 1 GiB on stderr: keep stderr for our own lines.
    env.setdefault("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD", str(1 << 46))
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *argv[1:]], env)
    except OSError:  # cannot restart: go on with glibc
        return


def is_bench_program() -> bool:
    """Whether this process is the ``bench`` program itself (its console script, ``python
    -m bench`` or ``python -m bench.cli``), not a notebook, test runner or other host that
    called ``bench.cli.main()``: only then may it be restarted."""
    prog = os.path.realpath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    package = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))),
                           "bench")
    return os.path.basename(prog) == "bench" or (
        prog.startswith(package + os.sep) and os.path.basename(prog) in ("cli.py",
                                                                          "__main__.py"))


def keep_freed_memory() -> bool:
    """Set glibc's ``mallopt`` so that freed blocks stay in the process (see the module
    text). Returns whether the settings are in force; ``False`` (and nothing changed) off
    Linux/glibc, under ``BENCH_MALLOC=system`` or with a preloaded allocator. Idempotent."""
    global _state
    if _state is not None:
        return _state == "kept"
    _state = "left"
    if (os.environ.get(_ENV, "").lower() == "system" or not sys.platform.startswith("linux")
            or _preloaded()):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    if all(mallopt(param, value) == 1 for param, value in SETTINGS):
        _state = "kept"
    return _state == "kept"


if __name__ == "__main__":  # ``LD_PRELOAD=$(python -m runtime.malloc) python train.py``
    print(find_tcmalloc() or "")
