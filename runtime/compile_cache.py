"""JAX's persistent compilation cache under the project's cache root."""

from __future__ import annotations

import os
from pathlib import Path

from .paths import cache_root

ENV_SWITCH = "BENCH_COMPILE_CACHE"  # "0" / "false" / "off" / "no": leave the cache off

# Thresholds: JAX by default caches only programs that took >= 1 s to compile; ours are
# mostly small (eager ops, per-shape initializers, short steps) and each saves a compile on
# the next run, so every program is cached, however small or quick.
MIN_COMPILE_TIME_S = 0.0
MIN_ENTRY_SIZE_BYTES = 0


def compile_cache_disabled() -> bool:
    return os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "off", "no")


def enable_compile_cache(path: str | os.PathLike | None = None) -> Path | None:
    """Turn on JAX's persistent compilation cache in ``path`` (default
    ``cache_root() / "jax"``), caching every program, and return the folder; ``None`` (and
    nothing changed) when ``$BENCH_COMPILE_CACHE`` is ``0`` (or ``off``/``false``/``no``).
    JAX decides on a process's first compilation whether a cache is in use; called after
    that, this resets JAX's decision so that the next compilation uses the new folder."""
    if compile_cache_disabled():
        return None
    import jax

    folder = Path(path).expanduser() if path is not None else cache_root() / "jax"
    folder.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", os.fspath(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_TIME_S)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", MIN_ENTRY_SIZE_BYTES)
    # Also cache programs that XLA:CPU autotunes or that use host callbacks, when allowed.
    try:
        jax.config.update("jax_persistent_cache_enable_xla_caches", "all")
    except (AttributeError, ValueError):  # an older JAX without the option
        pass
    _forget_first_decision()
    return folder


def _forget_first_decision() -> None:
    """Make JAX look at its cache options again on the next compilation (it reads them once,
    at the first one)."""
    try:
        from jax._src import compilation_cache as cc
    except ImportError:  # another JAX: options set before the first compile still work
        return
    if getattr(cc, "_cache_checked", False) or getattr(cc, "_cache_initialized", False):
        cc.reset_cache()
