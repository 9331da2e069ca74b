"""Every ``DepthwiseConv`` formulation against ``lax.conv_general_dilated`` with
``feature_group_count``: outputs and gradients (input and kernel), over shapes, strides,
paddings, dilations and channel multipliers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models import layers
from models.layers import DepthwiseConv, depthwise_conv_grouped, depthwise_conv_taps

FORMULATIONS = {"grouped": depthwise_conv_grouped, "taps": depthwise_conv_taps}


def _reference(x, kernel, strides, padding, dilation):
    """The grouped convolution straight from lax (not through our padding helper)."""
    pad = padding if isinstance(padding, str) else [tuple(p) for p in padding]
    return jax.lax.conv_general_dilated(
        x, kernel, strides, pad, rhs_dilation=dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1],
    )


# (n, h, w, c, multiplier, kernel (kh, kw), strides, padding, dilation)
CASES = [
    (2, 9, 10, 4, 1, (3, 3), (1, 1), "SAME", (1, 1)),
    (2, 9, 10, 4, 2, (3, 3), (2, 2), "SAME", (1, 1)),
    (1, 10, 11, 3, 1, (5, 5), (2, 2), "SAME", (1, 1)),
    (2, 11, 9, 5, 3, (3, 3), (2, 2), "VALID", (1, 1)),
    (2, 8, 8, 6, 1, (5, 5), (1, 1), "VALID", (1, 1)),
    (1, 12, 7, 2, 2, (3, 2), (1, 2), "SAME", (1, 1)),
    (2, 9, 9, 4, 1, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1)),
    (2, 9, 9, 4, 2, (3, 3), (2, 2), ((0, 1), (2, 0)), (1, 1)),
    (1, 10, 10, 3, 1, (3, 3), (1, 1), "SAME", (2, 2)),
    (1, 10, 10, 3, 1, (3, 3), (2, 1), ((1, 2), (0, 0)), (1, 2)),
    (3, 7, 7, 8, 1, (7, 7), (1, 1), "SAME", (1, 1)),
]


@pytest.mark.parametrize("impl", sorted(FORMULATIONS))
@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
def test_formulation_matches_grouped_conv_with_gradients(impl, case):
    n, h, w, c, mult, (kh, kw), strides, padding, dilation = case
    rng = np.random.default_rng(hash(case) % 2**32)
    x = jnp.asarray(rng.normal(size=(n, h, w, c)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(kh, kw, 1, c * mult)), jnp.float32)
    fn = FORMULATIONS[impl]
    want = _reference(x, kernel, strides, padding, dilation)
    got = jax.jit(lambda x, k: fn(x, k, strides, padding, dilation))(x, kernel)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)

    # Gradients w.r.t. the input and the kernel of a loss with a random cotangent.
    ct = jnp.asarray(rng.normal(size=want.shape), jnp.float32)

    def loss(f):
        return lambda x, k: jnp.sum(f(x, k) * ct)

    gw = jax.grad(loss(lambda x, k: _reference(x, k, strides, padding, dilation)), (0, 1))(
        x, kernel)
    gg = jax.jit(jax.grad(loss(lambda x, k: fn(x, k, strides, padding, dilation)), (0, 1)))(
        x, kernel)
    for a, b in zip(gg, gw):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("impl", ["conv", "taps"])
@pytest.mark.parametrize("padding", ["SAME", "VALID", ((1, 0), (0, 1))])
def test_layer_with_bias_and_multiplier(impl, padding):
    rngs = nnx.Rngs(0)
    dw = DepthwiseConv(3, 2, 3, 2, padding, use_bias=True, impl=impl, rngs=rngs)
    dw.bias[...] = jnp.arange(6, dtype=jnp.float32)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 9, 8, 3)), jnp.float32)
    want = nnx.Conv.__call__(dw, x)  # the plain grouped nnx.Conv
    np.testing.assert_allclose(dw(x), want, rtol=2e-5, atol=2e-5)
    assert dw.kernel.shape == (3, 3, 1, 6)


def test_impl_resolution(monkeypatch):
    monkeypatch.delenv("BENCH_DEPTHWISE", raising=False)
    if jax.default_backend() == "cpu":  # oneDNN where it builds (tests/test_onednn.py)
        assert layers.resolve_depthwise_impl() in ("taps", "onednn")
    else:
        assert layers.resolve_depthwise_impl() == "conv"
    assert layers.resolve_depthwise_impl("conv") == "conv"
    monkeypatch.setenv("BENCH_DEPTHWISE", "conv")
    assert layers.resolve_depthwise_impl() == "conv"
    layers.set_depthwise_impl("taps")
    try:
        assert layers.resolve_depthwise_impl() == "taps"
        assert layers.resolve_depthwise_impl("conv") == "conv"  # the layer's own wins
    finally:
        layers.set_depthwise_impl(None)
    with pytest.raises(ValueError):
        layers.resolve_depthwise_impl("winograd")
    with pytest.raises(ValueError):
        DepthwiseConv(3, impl="winograd", rngs=nnx.Rngs(0))


def test_impl_is_read_at_trace_time(monkeypatch):
    """The same layer lowers to a grouped convolution or to none, as the setting says."""
    dw = DepthwiseConv(4, 1, 3, rngs=nnx.Rngs(0))
    x = jnp.zeros((1, 6, 6, 4))
    text = {}
    for impl in ("conv", "taps"):
        monkeypatch.setenv("BENCH_DEPTHWISE", impl)
        text[impl] = jax.jit(lambda x: dw(x)).lower(x).as_text()
    assert "feature_group_count = 4" in text["conv"]
    assert "convolution" not in text["taps"]
