"""runtime.onednn: oneDNN's convolution as XLA FFI custom calls, against
``lax.conv_general_dilated`` (values, input and kernel gradients), inside ``Conv``, with
its FLOPs counted, and the fallback where it cannot be built."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bench.speed import harness
from models import layers
from models.layers import Conv
from runtime import onednn

# .ci/run installs g++ and libdnnl-dev and sets this: there a failed build fails the tests.
REQUIRE = os.environ.get("BENCH_REQUIRE_ONEDNN", "") not in ("", "0")
needs_onednn = pytest.mark.skipif(
    not REQUIRE and (jax.default_backend() != "cpu" or not onednn.available()),
    reason=f"oneDNN convolution unavailable: {onednn.why_unavailable()}")

DN = ("NHWC", "HWIO", "NHWC")


def _lax(x, k, strides, pads, dilation):
    return jax.lax.conv_general_dilated(x, k, strides, pads, rhs_dilation=dilation,
                                        dimension_numbers=DN,
                                        precision=jax.lax.Precision.HIGHEST)


# (n, h, w, c, o, (kh, kw), strides, pads, dilation)
CASES = [
    (2, 9, 10, 3, 8, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1)),
    (2, 8, 8, 16, 16, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1)),
    (2, 8, 8, 16, 32, (3, 3), (2, 2), ((0, 1), (0, 1)), (1, 1)),
    (1, 13, 11, 5, 7, (3, 3), (2, 1), ((1, 2), (0, 0)), (1, 1)),
    (3, 12, 12, 4, 6, (3, 3), (1, 1), ((2, 2), (2, 2)), (2, 2)),
    (1, 11, 12, 6, 4, (5, 5), (2, 2), ((2, 2), (2, 2)), (1, 1)),
    (2, 14, 14, 8, 8, (7, 7), (2, 2), ((3, 3), (3, 3)), (1, 1)),
    (1, 10, 9, 4, 5, (3, 2), (1, 2), ((0, 0), (1, 0)), (1, 1)),
    (2, 7, 7, 64, 64, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1)),
    (1, 9, 9, 3, 5, (1, 3), (1, 1), ((0, 0), (1, 1)), (1, 1)),
]


@needs_onednn
@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
def test_conv2d_and_both_gradients_match_lax(case):
    n, h, w, c, o, (kh, kw), strides, pads, dilation = case
    rng = np.random.default_rng(sum(map(hash, map(str, case))) % 2**32)
    x = jnp.asarray(rng.normal(size=(n, h, w, c)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(kh, kw, c, o)), jnp.float32)
    want, vjp_want = jax.vjp(lambda a, b: _lax(a, b, strides, pads, dilation), x, k)
    ct = jnp.asarray(rng.normal(size=want.shape), jnp.float32)
    got = jax.jit(lambda a, b: onednn.conv2d(a, b, strides, pads, dilation))(x, k)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    grads = jax.jit(lambda a, b, g: jax.vjp(
        lambda a, b: onednn.conv2d(a, b, strides, pads, dilation), a, b)[1](g))(x, k, ct)
    for name, g, g_want in zip(("input", "kernel"), grads, vjp_want(ct)):
        scale = float(jnp.abs(g_want).max())
        np.testing.assert_allclose(g / scale, g_want / scale, rtol=0, atol=2e-5,
                                   err_msg=f"{name} gradient")


@needs_onednn
def test_concurrent_gradients_are_right_every_time():
    """XLA runs independent thunks at once: several layers' input and kernel gradients,
    repeated, must each equal lax's (a shared oneDNN scratchpad once broke this)."""
    rng = np.random.default_rng(0)
    shapes = [(4, 16, 16, 16, 16), (4, 16, 16, 16, 32), (4, 8, 8, 32, 32), (4, 8, 8, 32, 16)]
    xs = [jnp.asarray(rng.normal(size=s[:4]), jnp.float32) for s in shapes]
    ks = [jnp.asarray(rng.normal(size=(3, 3, s[3], s[4])), jnp.float32) for s in shapes]
    pads = ((1, 1), (1, 1))

    def loss(conv, ks, xs):
        return sum(jnp.sum(jnp.sin(conv(x, k, (1, 1), pads, (1, 1)))) for x, k in zip(xs, ks))

    want = jax.jit(jax.grad(lambda ks, xs: loss(_lax, ks, xs), argnums=(0, 1)))(ks, xs)
    got_fn = jax.jit(jax.grad(lambda ks, xs: loss(onednn.conv2d, ks, xs), argnums=(0, 1)))
    for _ in range(3):
        got = got_fn(ks, xs)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            scale = float(jnp.abs(b).max())
            np.testing.assert_allclose(a / scale, b / scale, rtol=0, atol=2e-5)


@needs_onednn
def test_conv2d_refuses_what_it_does_not_compute():
    x = jnp.zeros((1, 6, 6, 4))
    with pytest.raises(ValueError, match="1x1"):
        onednn.conv2d(x, jnp.zeros((1, 1, 4, 4)), (2, 2), ((0, 0), (0, 0)), (1, 1))
    with pytest.raises(ValueError, match="negative"):
        onednn.conv2d(x, jnp.zeros((3, 3, 4, 4)), (1, 1), ((-1, 0), (1, 1)), (1, 1))
    with pytest.raises(TypeError, match="float32"):
        onednn.conv2d(x.astype(jnp.bfloat16), jnp.zeros((3, 3, 4, 4), jnp.bfloat16), (1, 1),
                      ((1, 1), (1, 1)), (1, 1))
    with pytest.raises(ValueError, match="kernel"):
        onednn.conv2d(x, jnp.zeros((3, 3, 5, 4)), (1, 1), ((1, 1), (1, 1)), (1, 1))


@needs_onednn
@pytest.mark.parametrize("kernel,strides,padding", [
    (3, 1, "SAME"), (3, 2, "SAME"), (3, 2, "VALID"), (5, 1, ((2, 1), (0, 2)))])
def test_layer_matches_nnx_conv_and_calls_onednn(kernel, strides, padding, monkeypatch):
    monkeypatch.setenv("BENCH_CONV", "onednn")
    conv = Conv(12, 6, (kernel, kernel), strides=strides, padding=padding, use_bias=True,
                rngs=nnx.Rngs(0))
    conv.bias[...] = jnp.arange(6, dtype=jnp.float32)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 11, 10, 12)), jnp.float32)
    np.testing.assert_allclose(conv(x), nnx.Conv.__call__(conv, x), rtol=1e-4, atol=1e-4)
    assert "bench_onednn_conv_fwd" in jax.jit(lambda x: conv(x)).lower(x).as_text()
    one = Conv(12, 6, (1, 1), rngs=nnx.Rngs(0))  # a matrix product, never oneDNN
    assert "bench_onednn" not in jax.jit(lambda x: one(x)).lower(x).as_text()
    half = Conv(12, 6, (3, 3), dtype=jnp.bfloat16, rngs=nnx.Rngs(0))  # bf16: XLA's own
    text = jax.jit(lambda x: half(x)).lower(x).as_text()
    assert "bench_onednn" not in text and "convolution" in text


@needs_onednn
@pytest.mark.parametrize("kernel,strides", [(3, 1), (3, 2), (7, 2)])
def test_rgb_stem_through_onednn_matches_lax(kernel, strides, monkeypatch):
    """A 3-channel stem is oneDNN's under ``onednn`` (im2col product under ``matmul``):
    values and kernel gradient match ``lax.conv``, and its input gradient (of the images,
    which nothing uses) is never computed."""
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 15, 14, 3)), jnp.float32)
    g = jnp.asarray(np.random.default_rng(3).normal(size=(2, 8, 7, 5)
                                                    if strides == 2 else (2, 15, 14, 5)),
                    jnp.float32)
    conv = Conv(3, 5, (kernel, kernel), strides=strides, padding="SAME", use_bias=False,
                rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(conv)
    k = conv.kernel[...]
    pads = layers._explicit_pads("SAME", x.shape[1:3], (kernel, kernel), (strides, strides),
                                 (1, 1))
    want = jax.value_and_grad(lambda k: jnp.sum(_lax(x, k, (strides, strides), pads,
                                                     (1, 1)) * g))(k)

    def loss(state):
        return jnp.sum(nnx.merge(graphdef, state)(x) * g)

    for impl in ("onednn", "matmul"):
        monkeypatch.setenv("BENCH_CONV", impl)
        value, grads = jax.value_and_grad(loss)(state)
        np.testing.assert_allclose(value, want[0], rtol=1e-4)
        np.testing.assert_allclose(grads["kernel"][...], want[1], rtol=1e-4, atol=1e-4)
        text = jax.jit(jax.value_and_grad(loss)).lower(state).compile().as_text()
        assert ("bench_onednn_conv_fwd" in text) == (impl == "onednn")
        assert ("bench_onednn_conv_dk" in text) == (impl == "onednn")
        assert "bench_onednn_conv_dx" not in text


@needs_onednn
def test_auto_picks_onednn_on_one_cpu_device(monkeypatch):
    monkeypatch.delenv("BENCH_CONV", raising=False)
    monkeypatch.delenv("BENCH_DEPTHWISE", raising=False)
    want = "onednn" if jax.device_count() == 1 else "matmul"
    assert layers.resolve_conv_impl() == want
    assert layers.resolve_depthwise_impl() == ("onednn" if want == "onednn" else "taps")
    dw = layers.DepthwiseConv(4, 1, 3, rngs=nnx.Rngs(0))
    text = jax.jit(lambda x: dw(x)).lower(jnp.zeros((1, 6, 6, 4))).as_text()
    assert ("bench_onednn_conv_fwd" in text) == (want == "onednn")
    assert layers.conv_description().startswith("oneDNN" if want == "onednn" else "XLA")


@needs_onednn
def test_flop_count_sees_the_custom_calls():
    """XLA's cost analysis counts a custom call as -1 FLOP; the speed table adds the oneDNN
    convolutions' own count, so MFU matches lax's program."""
    x = jnp.ones((4, 16, 16, 8))
    k = jnp.ones((3, 3, 8, 16))
    pads = ((1, 1), (1, 1))

    def step(conv):
        return jax.jit(jax.grad(lambda x, k: jnp.sum(conv(x, k, (1, 1), pads, (1, 1)) ** 2),
                                argnums=(0, 1))).lower(x, k).compile()

    ref = harness._flops(step(_lax), 1)
    ours = step(onednn.conv2d)
    conv_flops, calls = onednn.custom_call_flops(ours.as_text())
    # Multiply-adds that touch the input, as XLA counts them: 46 of the 48 (row, tap)
    # pairs of a 16-pixel side with a 3-tap SAME window read a pixel, not the padding.
    assert calls == 3 and conv_flops == 3 * 2 * 4 * 16 * 8 * 46 * 46
    assert harness._flops(ours, 1) == pytest.approx(ref, rel=0.02)


@needs_onednn
def test_resnet20_gradients_match_xla(monkeypatch):
    """Batch 8: at batch 2, train-mode BatchNorm amplifies float rounding so much that XLA's
    own kernel gradient written another way (``im2col``) differs from ``xla`` by 1.2%."""
    import models

    model = models.create_model("resnet20", None, seed=0)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 32, 32, 3)), jnp.float32)

    def grads(impl):
        monkeypatch.setenv("BENCH_CONV", impl)
        graphdef, state = nnx.split(model)

        def loss(state):
            return jnp.sum(jax.nn.log_softmax(nnx.merge(graphdef, state)(x))[:, 0])

        text = jax.jit(jax.grad(loss)).lower(state).as_text()
        return jax.jit(jax.grad(loss))(state), text

    want, text_xla = grads("xla")
    got, text = grads("onednn")
    assert "bench_onednn_conv_dk" in text and "bench_onednn" not in text_xla
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        scale = float(jnp.abs(b).max()) or 1.0
        np.testing.assert_allclose(a / scale, b / scale, rtol=0, atol=1e-4)


def test_unavailable_falls_back_and_says_why(monkeypatch):
    def no_compiler(force=False):
        raise RuntimeError("no C++ compiler 'c++' on PATH (set $CXX or install g++)")

    monkeypatch.setattr(onednn, "_state", {})
    monkeypatch.setattr(onednn, "build", no_compiler)
    monkeypatch.delenv("BENCH_REQUIRE_ONEDNN", raising=False)
    monkeypatch.delenv("BENCH_CONV", raising=False)
    assert not onednn.available()
    assert "no C++ compiler" in onednn.why_unavailable()
    if jax.default_backend() == "cpu":
        assert layers.resolve_conv_impl() == "matmul"
        assert "no C++ compiler" in layers.conv_description()
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        layers.resolve_conv_impl("onednn")
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        layers.resolve_depthwise_impl("onednn")
    if jax.default_backend() == "cpu":
        assert layers.resolve_depthwise_impl() == "taps"
    with pytest.raises(RuntimeError, match="unavailable"):
        onednn.conv2d(jnp.zeros((1, 4, 4, 2)), jnp.zeros((3, 3, 2, 2)), (1, 1),
                      ((1, 1), (1, 1)), (1, 1))
    monkeypatch.setattr(onednn, "_state", {})
    monkeypatch.setenv("BENCH_REQUIRE_ONEDNN", "1")
    with pytest.raises(RuntimeError, match="BENCH_REQUIRE_ONEDNN"):
        onednn.available()


def test_switched_off_by_environment(monkeypatch):
    monkeypatch.setattr(onednn, "_state", {})
    monkeypatch.setenv("BENCH_ONEDNN", "0")
    monkeypatch.delenv("BENCH_REQUIRE_ONEDNN", raising=False)
    assert not onednn.available() and "BENCH_ONEDNN=0" in onednn.why_unavailable()


def test_failed_build_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    import shutil

    if shutil.which("false") is None:
        pytest.skip("no 'false' program")
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", "false")  # a "compiler" that fails without a word
    try:
        onednn._find_onednn()
    except RuntimeError:
        with pytest.raises(RuntimeError, match="oneDNN not found"):
            onednn.build()
        return
    with pytest.raises(RuntimeError, match="building onednn_conv.cc failed") as e:
        onednn.build()
    assert "\n" not in str(e.value)
    assert list((tmp_path / "ext").iterdir()) == []


@needs_onednn
def test_build_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path))
    first = onednn.build()
    assert first.parent == tmp_path / "ext" and first.suffix == ".so"
    stamp = first.stat().st_mtime_ns
    assert onednn.build() == first and first.stat().st_mtime_ns == stamp
    assert [p.name for p in first.parent.iterdir()] == [first.name]


def test_onednn_root_is_searched_first_and_named_when_empty(tmp_path, monkeypatch):
    root = tmp_path / "dnnl"
    (root / "include" / "oneapi" / "dnnl").mkdir(parents=True)
    (root / "include" / "oneapi" / "dnnl" / "dnnl.hpp").write_text("")
    monkeypatch.setenv("BENCH_ONEDNN_ROOT", str(root))
    with pytest.raises(RuntimeError, match=r"BENCH_ONEDNN_ROOT=.*lib/libdnnl.so") as e:
        onednn._find_onednn()  # headers without the library
    assert "\n" not in str(e.value)
    (root / "lib" / "x86_64-linux-gnu").mkdir(parents=True)
    (root / "lib" / "x86_64-linux-gnu" / "libdnnl.so").write_bytes(b"")
    inc, lib = onednn._find_onednn()
    assert (inc, lib) == (root / "include", root / "lib" / "x86_64-linux-gnu")
    # A build against another oneDNN is another file in the cache.
    assert onednn._library_path("c++", inc, lib) != onednn._library_path("c++", None, None)


@needs_onednn
def test_pip_onednn_is_the_one_built_against(monkeypatch):
    """pip's onednn-cpu-gomp (a dependency on Linux x86-64) comes before the system's:
    oneDNN 3's convolutions are the faster ones (docs/cpu-formulations.md)."""
    import sys
    from pathlib import Path

    if os.environ.get("BENCH_ONEDNN_ROOT"):
        pytest.skip("BENCH_ONEDNN_ROOT names the oneDNN to use")
    if not (Path(sys.prefix) / "include" / "oneapi" / "dnnl" / "dnnl.hpp").is_file():
        pytest.skip("onednn-devel-cpu-gomp is not installed in this environment")
    assert onednn._find_onednn()[0] == Path(sys.prefix) / "include"
    assert int(onednn.version().split(".")[0]) >= 3


# (n, h, w, c, multiplier, k, strides, padding, dilation)
DEPTHWISE = [
    (2, 9, 10, 4, 1, 3, 1, "SAME", 1),
    (2, 9, 10, 4, 2, 3, 2, "SAME", 1),
    (1, 10, 11, 3, 1, 5, 2, "SAME", 1),
    (2, 11, 9, 5, 3, 3, 2, "VALID", 1),
    (1, 10, 10, 3, 1, 3, 1, "SAME", 2),
    (2, 12, 12, 32, 1, 3, 2, ((0, 1), (1, 0)), 1),
]


@needs_onednn
@pytest.mark.parametrize("case", DEPTHWISE, ids=[str(i) for i in range(len(DEPTHWISE))])
def test_depthwise_and_both_gradients_match_grouped_lax(case):
    n, h, w, c, mult, k, strides, padding, dilation = case
    rng = np.random.default_rng(len(DEPTHWISE) + DEPTHWISE.index(case))
    x = jnp.asarray(rng.normal(size=(n, h, w, c)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(k, k, 1, c * mult)), jnp.float32)
    want, vjp_want = jax.vjp(lambda a, b: layers.depthwise_conv_grouped(
        a, b, strides, padding, dilation), x, kernel)
    got, vjp_got = jax.vjp(jax.jit(lambda a, b: layers.depthwise_conv_onednn(
        a, b, strides, padding, dilation)), x, kernel)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    ct = jnp.asarray(rng.normal(size=want.shape), jnp.float32)
    for g, g_want in zip(vjp_got(ct), vjp_want(ct)):
        scale = float(jnp.abs(g_want).max())
        np.testing.assert_allclose(g / scale, g_want / scale, rtol=0, atol=2e-5)
    text = jax.jit(lambda a, b: layers.depthwise_conv_onednn(
        a, b, strides, padding, dilation)).lower(x, kernel).as_text()
    assert "bench_onednn_conv_fwd" in text


def test_short_openmp_spin_only_while_loading(monkeypatch):
    """libgomp reads GOMP_SPINCOUNT when it is loaded; the setting must not leak into child
    processes (bench speed's peers), and a user's own OpenMP setting is kept."""
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    with onednn._short_openmp_spin():
        assert os.environ["GOMP_SPINCOUNT"] == onednn.OPENMP_SPIN
    assert "GOMP_SPINCOUNT" not in os.environ
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
    with onednn._short_openmp_spin():
        assert "GOMP_SPINCOUNT" not in os.environ
    monkeypatch.setenv("GOMP_SPINCOUNT", "5")
    with onednn._short_openmp_spin():
        assert os.environ["GOMP_SPINCOUNT"] == "5"
    assert os.environ["GOMP_SPINCOUNT"] == "5"


def _bn_with_stats(features, seed):
    bn = nnx.BatchNorm(features, epsilon=1e-3, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(seed)
    bn.mean[...] = jnp.asarray(rng.normal(size=features), jnp.float32)
    bn.var[...] = jnp.asarray(rng.uniform(0.5, 2.0, size=features), jnp.float32)
    bn.scale[...] = jnp.asarray(rng.uniform(0.5, 1.5, size=features), jnp.float32)
    bn.bias[...] = jnp.asarray(rng.normal(size=features), jnp.float32)
    return bn


@needs_onednn
@pytest.mark.parametrize("make,act", [
    (lambda: Conv(6, 8, (3, 3), strides=1, rngs=nnx.Rngs(0)), "relu"),
    (lambda: Conv(6, 8, (3, 3), strides=2, use_bias=True, rngs=nnx.Rngs(0)), "relu6"),
    (lambda: Conv(6, 8, (1, 1), rngs=nnx.Rngs(0)), None),
    (lambda: Conv(6, 8, (1, 1), strides=2, rngs=nnx.Rngs(0)), "relu"),
    (lambda: Conv(6, 8, (5, 5), strides=2, padding="VALID", rngs=nnx.Rngs(0)), "relu6"),
    (lambda: layers.DepthwiseConv(6, 1, 3, 2, rngs=nnx.Rngs(0)), "relu6"),
    (lambda: layers.DepthwiseConv(6, 2, 3, 1, rngs=nnx.Rngs(0)), None)])
def test_eval_conv_bn_act_is_one_onednn_call(make, act, monkeypatch):
    """In eval mode ``conv_bn_act`` folds BatchNorm into the kernel and a bias and runs the
    activation as oneDNN's post-op: same values and gradients as the unfused layers; in
    train mode it is the unfused layers."""
    monkeypatch.delenv("BENCH_CONV", raising=False)
    monkeypatch.delenv("BENCH_DEPTHWISE", raising=False)
    if jax.device_count() != 1:
        pytest.skip("oneDNN is used with one device only")
    conv = make()
    conv.kernel[...] = conv.kernel[...] * 3.0  # outputs on both sides of 0 and of 6
    x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 11, 10, 6)), jnp.float32)
    cout = conv.kernel.shape[-1]
    bn = _bn_with_stats(cout, 5)
    fn = {None: lambda y: y, "relu": jax.nn.relu, "relu6": jax.nn.relu6}[act]

    def unfused(x):
        return fn(bn(conv(x)))

    def fused(x):
        return layers.conv_bn_act(conv, bn, x, act)

    bn.eval()
    want, got = unfused(x), fused(x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert float(jnp.max(want)) == 6 if act == "relu6" else float(jnp.max(want)) > 0
    assert float(jnp.min(want)) == 0 if act else float(jnp.min(want)) < 0
    assert "bench_onednn_conv_bias_act" in jax.jit(fused).lower(x).as_text()
    g = jnp.asarray(np.random.default_rng(6).normal(size=want.shape), jnp.float32)
    np.testing.assert_allclose(jax.vjp(fused, x)[1](g)[0], jax.vjp(unfused, x)[1](g)[0],
                               rtol=1e-4, atol=1e-4)
    bn.train()
    assert layers._fused_geometry(conv, bn, x) is None
    np.testing.assert_allclose(fused(x), unfused(x), rtol=1e-5, atol=1e-5)


@needs_onednn
def test_conv_bn_act_refuses_an_unknown_activation():
    conv, bn = Conv(3, 4, (3, 3), rngs=nnx.Rngs(0)), nnx.BatchNorm(4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="gelu"):
        layers.conv_bn_act(conv, bn, jnp.zeros((1, 5, 5, 3)), "gelu")
    with pytest.raises(ValueError, match="activation"):
        onednn.conv2d_bias_act(jnp.zeros((1, 5, 5, 3)), jnp.zeros((3, 3, 3, 4)),
                               jnp.zeros(4), (1, 1), ((1, 1), (1, 1)), (1, 1), act="tanh")
    with pytest.raises(ValueError, match="bias"):
        onednn.conv2d_bias_act(jnp.zeros((1, 5, 5, 3)), jnp.zeros((3, 3, 3, 4)),
                               jnp.zeros(3), (1, 1), ((1, 1), (1, 1)), (1, 1))


@needs_onednn
def test_eval_conv_bn_act_adds_the_residual_before_the_activation(monkeypatch):
    monkeypatch.delenv("BENCH_CONV", raising=False)
    if jax.device_count() != 1:
        pytest.skip("oneDNN is used with one device only")
    conv = Conv(6, 8, (3, 3), rngs=nnx.Rngs(0))
    bn = _bn_with_stats(8, 7)
    bn.eval()
    x = jnp.asarray(np.random.default_rng(8).normal(size=(2, 9, 9, 6)), jnp.float32)
    r = jnp.asarray(np.random.default_rng(9).normal(size=(2, 9, 9, 8)), jnp.float32)
    got = layers.conv_bn_act(conv, bn, x, "relu", residual=r)
    want = jax.nn.relu(bn(conv(x)) + r)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # oneDNN's sum post-op adds the residual in its buffer: r itself is left as it was.
    fused = jax.jit(lambda x, r: layers.conv_bn_act(conv, bn, x, "relu", residual=r))
    r_before = np.asarray(r).copy()
    np.testing.assert_allclose(fused(x, r), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(r), r_before)
    assert "bench_onednn_conv_bias_sum_act" in fused.lower(x, r).as_text()
    g = jnp.asarray(np.random.default_rng(10).normal(size=want.shape), jnp.float32)
    got_g = jax.vjp(lambda x, r: layers.conv_bn_act(conv, bn, x, "relu", residual=r), x, r)[1](g)
    want_g = jax.vjp(lambda x, r: jax.nn.relu(bn(conv(x)) + r), x, r)[1](g)
    for a, b in zip(got_g, want_g):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    monkeypatch.setenv("BENCH_BATCHNORM", "flax")  # nnx's BatchNorm as written
    assert layers._fused_geometry(conv, bn, x) is None
    np.testing.assert_allclose(layers.conv_bn_act(conv, bn, x, "relu", residual=r), got,
                               rtol=1e-4, atol=1e-4)
