"""``models.layers.Conv``'s matrix-product form (1x1 kernels, RGB-like inputs) against
``lax.conv_general_dilated``: outputs and gradients, over strides, paddings and dilations; the
layer against ``nnx.Conv``; the switch read at trace time."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models import layers
from models.layers import Conv, conv_matmul


def _reference(x, kernel, strides, padding, dilation):
    pad = padding if isinstance(padding, str) else [tuple(p) for p in padding]
    return jax.lax.conv_general_dilated(x, kernel, strides, pad, rhs_dilation=dilation,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


# (n, h, w, cin, cout, kernel (kh, kw), strides, padding, dilation)
CASES = [
    (2, 9, 10, 16, 8, (1, 1), (1, 1), "SAME", (1, 1)),
    (2, 9, 10, 16, 8, (1, 1), (2, 2), "SAME", (1, 1)),
    (2, 8, 7, 5, 3, (1, 1), (2, 1), "VALID", (1, 1)),
    (2, 11, 10, 3, 8, (3, 3), (2, 2), "SAME", (1, 1)),
    (2, 11, 10, 3, 8, (3, 3), (2, 2), "VALID", (1, 1)),
    (1, 12, 12, 3, 4, (7, 7), (2, 2), "SAME", (1, 1)),
    (1, 9, 9, 1, 4, (3, 2), (1, 2), ((1, 1), (0, 1)), (1, 1)),
    (1, 10, 10, 4, 2, (3, 3), (1, 1), "SAME", (2, 2)),
]


@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
def test_matmul_form_matches_lax_conv_with_gradients(case):
    n, h, w, cin, cout, (kh, kw), strides, padding, dilation = case
    rng = np.random.default_rng(hash(case) % 2**32)
    x = jnp.asarray(rng.normal(size=(n, h, w, cin)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(kh, kw, cin, cout)), jnp.float32)
    want = _reference(x, kernel, strides, padding, dilation)
    got = jax.jit(lambda x, k: conv_matmul(x, k, strides, padding, dilation))(x, kernel)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
    ct = jnp.asarray(rng.normal(size=want.shape), jnp.float32)
    gw = jax.grad(lambda x, k: jnp.sum(_reference(x, k, strides, padding, dilation) * ct),
                  (0, 1))(x, kernel)
    gg = jax.jit(jax.grad(lambda x, k: jnp.sum(conv_matmul(x, k, strides, padding, dilation)
                                               * ct), (0, 1)))(x, kernel)
    for a, b in zip(gg, gw):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernel,cin,strides,padding", [
    (1, 12, 1, "SAME"), (1, 12, 2, "SAME"), (3, 3, 2, "VALID"), (3, 12, 1, "SAME")])
def test_layer_matches_nnx_conv(kernel, cin, strides, padding, monkeypatch):
    monkeypatch.setenv("BENCH_CONV", "matmul")
    conv = Conv(cin, 6, (kernel, kernel), strides=strides, padding=padding, use_bias=True,
                rngs=nnx.Rngs(0))
    conv.bias[...] = jnp.arange(6, dtype=jnp.float32)
    assert isinstance(conv, nnx.Conv) and conv.kernel.shape == (kernel, kernel, cin, 6)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 9, 8, cin)), jnp.float32)
    np.testing.assert_allclose(conv(x), nnx.Conv.__call__(conv, x), rtol=2e-5, atol=2e-5)


def test_switch_is_read_at_trace_time_and_applies_where_it_should(monkeypatch):
    x = jnp.zeros((1, 6, 6, 8))
    one = Conv(8, 4, (1, 1), rngs=nnx.Rngs(0))
    three = Conv(8, 4, (3, 3), rngs=nnx.Rngs(0))  # 8 input channels: stays a convolution
    text = {}
    for impl in ("xla", "matmul"):
        monkeypatch.setenv("BENCH_CONV", impl)
        text[impl] = jax.jit(lambda x: one(x)).lower(x).as_text()
        assert "convolution" in jax.jit(lambda x: three(x)).lower(x).as_text()
    assert "convolution" in text["xla"] and "convolution" not in text["matmul"]
    monkeypatch.delenv("BENCH_CONV")
    if jax.default_backend() != "cpu":
        assert layers.resolve_conv_impl() == "xla"
    else:  # oneDNN for kxk convolutions where it can be built (tests/test_onednn.py)
        assert layers.resolve_conv_impl() in ("matmul", "onednn")
    with pytest.raises(ValueError):
        layers.resolve_conv_impl("winograd")
    with pytest.raises(ValueError):
        Conv(3, 4, (1, 1), impl="winograd", rngs=nnx.Rngs(0))
