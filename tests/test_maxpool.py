"""``models.layers.max_pool_taps`` (max pooling as taps, hand-written gradient) against
``nnx.max_pool`` (``lax.reduce_window``), ties included."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models import layers


@pytest.mark.parametrize("window,stride,padding,hw", [
    (3, 2, "VALID", (15, 12)), (3, 2, "SAME", (14, 11)), (2, 2, "VALID", (8, 9)),
    (2, 2, "SAME", (7, 7)), (3, 1, "SAME", (6, 5))])
def test_values_and_gradient_match_reduce_window(window, stride, padding, hw):
    rng = np.random.default_rng(0)
    # ReLU'd integers: many windows hold their maximum more than once (all zeros, say).
    x = jnp.asarray(np.maximum(rng.integers(-3, 3, size=(2, *hw, 5)), 0), jnp.float32)
    want, vjp_want = jax.vjp(lambda a: nnx.max_pool(a, (window, window), (stride, stride),
                                                    padding), x)
    got, vjp_got = jax.vjp(lambda a: layers.max_pool_taps(a, window, stride, padding), x)
    np.testing.assert_array_equal(got, want)
    g = jnp.asarray(rng.normal(size=want.shape), jnp.float32)
    np.testing.assert_allclose(vjp_got(g)[0], vjp_want(g)[0], rtol=1e-6, atol=1e-6)


def test_max_pool_takes_the_taps_on_cpu_unless_told(monkeypatch):
    x = jnp.ones((1, 6, 6, 2))
    monkeypatch.delenv("BENCH_MAXPOOL", raising=False)
    text = jax.jit(lambda a: jax.grad(lambda b: layers.max_pool(b, 3, 2).sum())(a)).lower(
        x).as_text()
    assert ("select_and_scatter" in text) == (jax.default_backend() != "cpu")
    monkeypatch.setenv("BENCH_MAXPOOL", "xla")
    text = jax.jit(lambda a: jax.grad(lambda b: layers.max_pool(b, 3, 2).sum())(a)).lower(
        x).as_text()
    assert "select_and_scatter" in text
    monkeypatch.setenv("BENCH_MAXPOOL", "fast")
    with pytest.raises(ValueError, match="BENCH_MAXPOOL='fast'.*'taps' or 'xla'"):
        layers.max_pool(x, 3, 2)
