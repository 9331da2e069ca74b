"""runtime.malloc: XLA:CPU's large buffers stop faulting in again on every call."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runtime import malloc

ROOT = Path(__file__).resolve().parents[1]
TCMALLOC = malloc.find_tcmalloc()
# .ci/run installs tcmalloc and sets this: there a missing library fails instead of skipping.
REQUIRE = os.environ.get("BENCH_REQUIRE_TCMALLOC", "") not in ("", "0")
needs_tcmalloc = pytest.mark.skipif(TCMALLOC is None and not REQUIRE,
                                    reason="no libtcmalloc_minimal.so.4 on this system")

# A jitted op over 48 MB, more than glibc's largest mmap threshold (32 MiB): its output is a
# fresh block each call. Minor page faults per call, counted by the kernel, after the
# allocator has settled.
_CHILD = """
import json, os, resource, sys
from runtime.malloc import reexec_under_tcmalloc, keep_freed_memory, allocator
reexec_under_tcmalloc()
kept = keep_freed_memory()
import jax, jax.numpy as jnp
f = jax.jit(lambda a: a + 1)
x = jnp.ones(12 * 2**20, jnp.float32)
for _ in range(10):
    f(x).block_until_ready()
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    f(x).block_until_ready()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) / 5
print(json.dumps({"kept": kept, "faults": faults, "allocator": allocator(),
                  "preload": os.environ.get("LD_PRELOAD", "")}))
"""


def _child(tmp_path: Path, **env) -> dict:
    """Run ``_CHILD`` as a program named ``bench`` (only that one restarts itself)."""
    full = {k: v for k, v in os.environ.items()
            if k not in ("BENCH_MALLOC", "LD_PRELOAD", "BENCH_MALLOC_REEXEC")}
    full.update(env, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    program = tmp_path / "bench"
    program.write_text(_CHILD)
    out = subprocess.run([sys.executable, str(program)], env=full, capture_output=True,
                         text=True, timeout=300, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD, glibc")
@needs_tcmalloc
def test_restarted_under_tcmalloc_the_page_faults_stop(tmp_path):
    assert TCMALLOC is not None, "BENCH_REQUIRE_TCMALLOC is set: install libtcmalloc-minimal4"
    pages = 48 * 2**20 / 4096
    default = _child(tmp_path, BENCH_MALLOC="system")
    tc = _child(tmp_path)
    assert default["kept"] is False and default["allocator"] == "system default"
    assert default["preload"] == ""
    assert tc["preload"] == TCMALLOC and tc["allocator"] == "tcmalloc (LD_PRELOAD)"
    assert tc["kept"] is False  # tcmalloc does the job: glibc's settings are left alone
    # Without it every page of the output faults in again on every call.
    assert default["faults"] > 0.8 * pages, default
    assert tc["faults"] < 0.05 * default["faults"], (tc, default)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_glibc_settings_take(tmp_path):
    kept = _child(tmp_path, BENCH_MALLOC="glibc")
    assert kept["preload"] == "" and kept["kept"] is True
    assert kept["allocator"] == "glibc, freed memory kept (mallopt)"


def test_left_alone_when_asked_or_preloaded(monkeypatch):
    for env in ({"BENCH_MALLOC": "system"}, {"LD_PRELOAD": "/usr/lib/libtcmalloc_minimal.so.4"}):
        monkeypatch.setattr(malloc, "_state", None)
        monkeypatch.delenv("BENCH_MALLOC", raising=False)
        monkeypatch.delenv("LD_PRELOAD", raising=False)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        assert malloc.keep_freed_memory() is False
        assert malloc.keep_freed_memory() is False  # idempotent
        malloc.reexec_under_tcmalloc()  # returns: nothing to do
    assert malloc.allocator() == "tcmalloc (LD_PRELOAD)"


def test_speed_tables_name_the_allocator(tmp_path):
    from bench.speed.harness import write_speed

    json_path, md_path = write_speed([], tmp_path, command="bench speed")
    assert json.loads(json_path.read_text())["allocator"] == malloc.allocator()
    assert "memory allocator: " in md_path.read_text()


def test_only_the_bench_program_restarts_itself(monkeypatch):
    """A notebook or test runner that calls ``bench.cli.main()`` is never replaced."""
    for argv0, expected in (("/usr/bin/ipython", False), ("", False),
                            (str(ROOT / "tests" / "cli.py"), False),
                            ("/opt/venv/bin/bench", True),
                            (str(ROOT / "bench" / "cli.py"), True),
                            (str(ROOT / "bench" / "__main__.py"), True)):
        monkeypatch.setattr(sys, "argv", [argv0, "speed"])
        assert malloc.is_bench_program() is expected, argv0
