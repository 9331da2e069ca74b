"""runtime.compile_cache: on by default under the cache root, off with BENCH_COMPILE_CACHE=0."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from runtime import compile_cache

_OPTIONS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
            "jax_persistent_cache_min_entry_size_bytes")


@pytest.fixture
def restore_jax_config():
    saved = {k: getattr(jax.config, k) for k in _OPTIONS}
    yield
    for k, v in saved.items():
        jax.config.update(k, v)
    compile_cache._forget_first_decision()


@pytest.mark.parametrize("value", ["0", "off", "False"])
def test_switched_off_by_the_environment(monkeypatch, tmp_path, value, restore_jax_config):
    monkeypatch.setenv("BENCH_COMPILE_CACHE", value)
    before = jax.config.jax_compilation_cache_dir
    assert compile_cache.enable_compile_cache(tmp_path / "c") is None
    assert jax.config.jax_compilation_cache_dir == before
    assert not (tmp_path / "c").exists()


def test_default_folder_is_under_the_cache_root_and_small_programs_are_cached(
        monkeypatch, tmp_path, restore_jax_config):
    monkeypatch.delenv("BENCH_COMPILE_CACHE", raising=False)
    # An earlier cache in the same process (a CLI command run in-process, say), already used:
    # the new folder must still take over.
    compile_cache.enable_compile_cache(tmp_path / "earlier")
    jax.jit(lambda x: x + 1).lower(jnp.ones(2)).compile()
    assert any((tmp_path / "earlier").iterdir())
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path))
    folder = compile_cache.enable_compile_cache()
    assert folder == tmp_path / "jax" and folder.is_dir()
    assert jax.config.jax_compilation_cache_dir == str(folder)
    # A tiny program (far under JAX's default 1 s threshold) lands in the cache.
    jax.jit(lambda x: jnp.sin(x) * 3.25 + 0.5).lower(jnp.ones((7, 3))).compile()
    assert any(folder.iterdir())
