"""Train-mode BatchNorm + activation with a hand-written gradient
(``models.layers.batchnorm_act_train``) against ``nnx.BatchNorm`` as XLA differentiates it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models import layers


def _bn(c, seed, momentum=0.9):
    bn = nnx.BatchNorm(c, epsilon=1e-3, momentum=momentum, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(seed)
    bn.scale[...] = jnp.asarray(rng.uniform(0.5, 1.5, c), jnp.float32)
    bn.bias[...] = jnp.asarray(rng.normal(size=c), jnp.float32)
    bn.mean[...] = jnp.asarray(rng.normal(size=c), jnp.float32)
    bn.var[...] = jnp.asarray(rng.uniform(0.5, 2, c), jnp.float32)
    return bn


@pytest.mark.parametrize("activation,with_residual", [
    (None, False), ("relu", False), ("relu6", False), ("relu", True), (None, True)])
@pytest.mark.parametrize("shape", [(4, 6, 5, 7), (9, 3)])
def test_values_gradients_and_running_stats_match_flax(activation, with_residual, shape):
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=shape) * 3 + 1, jnp.float32)
    g = jnp.asarray(rng.normal(size=shape), jnp.float32)
    r = jnp.asarray(rng.normal(size=shape), jnp.float32) if with_residual else None
    c = shape[-1]
    act = {None: lambda y: y, "relu": jax.nn.relu, "relu6": jax.nn.relu6}[activation]

    def run(fused):
        bn = _bn(c, 2)
        bn.scale[...] = bn.scale[...] * (4 if activation == "relu6" else 1)  # to reach 6
        graphdef, state = nnx.split(bn)

        def loss(state, x, r):
            m = nnx.merge(graphdef, state)
            if fused:
                y = layers.batchnorm_act_train(m, x, activation, r)
            else:
                y = act(m(x) if r is None else m(x) + r)
            return jnp.sum(y * g), (y, nnx.state(m, nnx.BatchStat))

        argnums = (0, 1, 2) if with_residual else (0, 1)
        (_, (y, stats)), grads = jax.value_and_grad(loss, argnums=argnums, has_aux=True)(
            state, x, r)
        return y, stats, grads

    y0, s0, (gs0, gx0, *gr0) = run(False)
    y1, s1, (gs1, gx1, *gr1) = run(True)
    for a, b in zip(gr1, gr0):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y1, y0, rtol=1e-5, atol=1e-5)
    if activation == "relu6":
        assert float(y0.max()) == 6 and float(y0.min()) == 0  # both ends of the clip are hit
    np.testing.assert_allclose(s1["mean"][...], s0["mean"][...], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s1["var"][...], s0["var"][...], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gx1, gx0, rtol=1e-4, atol=1e-4)
    for name in ("scale", "bias"):
        np.testing.assert_allclose(gs1[name][...], gs0[name][...], rtol=1e-4, atol=1e-4)


def test_conv_bn_act_uses_it_in_train_mode_on_cpu(monkeypatch):
    conv = layers.Conv(3, 4, (3, 3), rngs=nnx.Rngs(0))
    bn = _bn(4, 3)
    x = jnp.ones((2, 5, 5, 3))
    calls = []
    monkeypatch.setattr(layers, "batchnorm_act_train",
                        lambda *a: calls.append(a) or jnp.zeros((2, 5, 5, 4)))
    monkeypatch.delenv("BENCH_BATCHNORM", raising=False)
    layers.conv_bn_act(conv, bn, x, "relu")
    assert len(calls) == (1 if jax.default_backend() == "cpu" else 0)
    monkeypatch.setenv("BENCH_BATCHNORM", "flax")
    layers.conv_bn_act(conv, bn, x, "relu")
    assert len(calls) == (1 if jax.default_backend() == "cpu" else 0)
    monkeypatch.setenv("BENCH_BATCHNORM", "fast")
    with pytest.raises(ValueError, match="BENCH_BATCHNORM='fast'.*flax"):
        layers.conv_bn_act(conv, bn, x, "relu")


def test_falls_back_where_it_does_not_apply(monkeypatch):
    monkeypatch.setenv("BENCH_BATCHNORM", "fused")
    x = jnp.ones((2, 5, 5, 4))
    assert layers._bn_train_applies(_bn(4, 0), x)
    assert not layers._bn_train_applies(nnx.BatchNorm(4, use_scale=False, rngs=nnx.Rngs(0)), x)
    assert not layers._bn_train_applies(nnx.BatchNorm(4, axis_name="batch", rngs=nnx.Rngs(0)),
                                        x)
    assert not layers._bn_train_applies(_bn(4, 0), x.astype(jnp.bfloat16))
    bn = _bn(4, 0)
    bn.eval()
    assert not layers._bn_train_applies(bn, x)
