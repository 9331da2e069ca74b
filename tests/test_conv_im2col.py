"""``models.layers.conv_lax_custom_dw`` (``lax.conv`` with a hand-written kernel gradient:
im2col patches times the output gradient, or one product per tap) against
``lax.conv_general_dilated``: outputs and both gradients over strides, paddings, kernel sizes
and dilations; the ``Conv`` layer under ``BENCH_CONV=im2col`` / ``taps``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models.layers import Conv, conv_lax_custom_dw


def _reference(x, kernel, strides, padding, dilation):
    pad = padding if isinstance(padding, str) else [tuple(p) for p in padding]
    return jax.lax.conv_general_dilated(x, kernel, strides, pad, rhs_dilation=dilation,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


# (n, h, w, cin, cout, (kh, kw), strides, padding, dilation)
CASES = [
    (2, 8, 8, 6, 5, (3, 3), (1, 1), "SAME", (1, 1)),
    (2, 9, 8, 6, 5, (3, 3), (2, 2), "SAME", (1, 1)),
    (2, 9, 9, 5, 4, (3, 3), (2, 1), "VALID", (1, 1)),
    (1, 11, 10, 4, 6, (5, 5), (1, 1), "SAME", (1, 1)),
    (1, 11, 11, 4, 3, (5, 5), (2, 2), "VALID", (1, 1)),
    (1, 13, 12, 5, 3, (7, 7), (2, 2), "SAME", (1, 1)),
    (1, 10, 10, 5, 4, (3, 3), (1, 1), "SAME", (2, 2)),
    (1, 9, 10, 6, 4, (3, 2), (1, 2), ((1, 1), (0, 1)), (1, 1)),
]


PARAMS = [(c, "im2col") for c in CASES] + [(CASES[i], "taps") for i in (1, 5, 7)]


@pytest.mark.parametrize("case,how", PARAMS, ids=[f"{h}-{i}" for i, (_, h) in
                                                  enumerate(PARAMS)])
def test_custom_kernel_grad_matches_lax_conv(case, how):
    n, h, w, cin, cout, (kh, kw), strides, padding, dilation = case
    rng = np.random.default_rng(abs(hash(case)) % 2**32)
    x = jnp.asarray(rng.normal(size=(n, h, w, cin)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(kh, kw, cin, cout)), jnp.float32)
    want = _reference(x, kernel, strides, padding, dilation)

    def ours(x, k):
        return conv_lax_custom_dw(x, k, strides, padding, dilation, how=how)

    got = jax.jit(ours)(x, kernel)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
    ct = jnp.asarray(rng.normal(size=want.shape), jnp.float32)
    gw = jax.grad(lambda x, k: jnp.sum(_reference(x, k, strides, padding, dilation) * ct),
                  (0, 1))(x, kernel)
    gg = jax.jit(jax.grad(lambda x, k: jnp.sum(ours(x, k) * ct), (0, 1)))(x, kernel)
    for a, b in zip(gg, gw):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_layer_switch_uses_the_custom_kernel_grad(monkeypatch):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 7, 7, 8)), jnp.float32)
    conv = Conv(8, 4, (3, 3), strides=2, use_bias=True, rngs=nnx.Rngs(0))
    conv.bias[...] = jnp.arange(4, dtype=jnp.float32)
    graphdef, state = nnx.split(conv)

    def loss(state):
        return jnp.sum(nnx.merge(graphdef, state)(x) ** 2)

    grads, texts = {}, {}
    for impl in ("xla", "im2col", "taps"):
        monkeypatch.setenv("BENCH_CONV", impl)
        np.testing.assert_allclose(conv(x), nnx.Conv.__call__(conv, x), rtol=2e-5, atol=2e-5)
        lowered = jax.jit(jax.grad(loss)).lower(state)
        texts[impl] = lowered.as_text()
        grads[impl] = lowered.compile()(state)
    for impl in ("im2col", "taps"):
        for a, b in zip(jax.tree.leaves(grads[impl]), jax.tree.leaves(grads["xla"])):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
        assert "dot_general" in texts[impl]  # the kernel gradient is a product
    assert "dot_general" not in texts["xla"]
    with pytest.raises(ValueError, match="kernel-gradient form"):
        conv_lax_custom_dw(x, conv.kernel[...], how="fft")
