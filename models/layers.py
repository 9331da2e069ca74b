"""Building blocks shared by the model families."""

from __future__ import annotations

import functools
import os
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from runtime import onednn

# Keras' defaults differ from Flax's: BatchNormalization(momentum=0.99, epsilon=1e-3).
KERAS_BN_EPS = 1e-3
KERAS_BN_MOMENTUM = 0.99

he_normal = nnx.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")
he_normal_untruncated = nnx.initializers.variance_scaling(2.0, "fan_in", "normal")
glorot_uniform = nnx.initializers.glorot_uniform()


def global_avg_pool(x: jax.Array) -> jax.Array:
    """NHWC -> NC mean over the spatial axes."""
    return jnp.mean(x, axis=(1, 2))


def global_max_pool(x: jax.Array) -> jax.Array:
    return jnp.max(x, axis=(1, 2))


def max_pool(x, window: int = 2, stride: int | None = None, padding: str = "VALID"):
    """``nnx.max_pool`` over ``window x window`` NHWC windows. On CPU, as the window's taps
    (``max_pool_taps``): XLA:CPU differentiates ``reduce_window`` into an argmax
    ``reduce_window`` over four index arrays and a ``select_and_scatter``, 150 ms of
    ResNet-50's 3 s train step, where the taps take a few ms."""
    stride = window if stride is None else stride
    impl = os.environ.get("BENCH_MAXPOOL") or "taps"
    if impl not in ("taps", "xla"):
        raise ValueError(f"BENCH_MAXPOOL={impl!r}: expected 'taps' or 'xla'")
    if (jax.default_backend() == "cpu" and x.ndim == 4 and isinstance(padding, str)
            and padding.upper() in ("SAME", "VALID") and impl == "taps"):
        return max_pool_taps(x, window, stride, padding.upper())
    return nnx.max_pool(x, (window, window), strides=(stride, stride), padding=padding)


def max_pool_taps(x, window: int, stride: int, padding: str = "VALID"):
    """``max_pool`` as the maximum of the window's ``window**2`` strided slices (of the
    input padded with -inf for ``"SAME"``), with a hand-written gradient that, like XLA's
    ``select_and_scatter`` and PyTorch, sends each window's gradient to its first maximum
    in row-major order. Agrees with ``nnx.max_pool`` exactly, gradients included
    (tests/test_maxpool.py)."""
    pads = _explicit_pads(padding, x.shape[1:3], (window, window), (stride, stride), (1, 1))
    return _max_pool_taps(x, (window, stride, tuple(tuple(p) for p in pads)))


def _pool_taps(x, geom):
    window, stride, pads = geom
    xp = x
    if any(p for pair in pads for p in pair):
        xp = jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=-jnp.inf)
    oh = (xp.shape[1] - window) // stride + 1
    ow = (xp.shape[2] - window) // stride + 1
    return [jax.lax.slice(xp, (0, i, j, 0),
                          (xp.shape[0], i + (oh - 1) * stride + 1, j + (ow - 1) * stride + 1,
                           xp.shape[3]), (1, stride, stride, 1))
            for i in range(window) for j in range(window)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _max_pool_taps(x, geom):
    return functools.reduce(jnp.maximum, _pool_taps(x, geom))


def _max_pool_taps_fwd(x, geom):
    taps = _pool_taps(x, geom)
    y = functools.reduce(jnp.maximum, taps)
    first = jnp.full(y.shape, len(taps), jnp.int8)  # the first tap that holds the maximum
    for t in reversed(range(len(taps))):
        first = jnp.where(taps[t] == y, jnp.int8(t), first)
    return y, (first, x.shape)


def _max_pool_taps_bwd(geom, res, g):
    window, stride, pads = geom
    first, shape = res
    hp, wp = shape[1] + sum(pads[0]), shape[2] + sum(pads[1])
    oh, ow = g.shape[1:3]
    zero = jnp.zeros((), g.dtype)
    dxp = None
    for t in range(window * window):
        i, j = divmod(t, window)
        part = jax.lax.pad(jnp.where(first == t, g, zero), zero, (
            (0, 0, 0), (i, hp - i - (oh - 1) * stride - 1, stride - 1),
            (j, wp - j - (ow - 1) * stride - 1, stride - 1), (0, 0, 0)))
        dxp = part if dxp is None else dxp + part
    (lo_h, _), (lo_w, _) = pads
    return (dxp[:, lo_h:lo_h + shape[1], lo_w:lo_w + shape[2]],)


_max_pool_taps.defvjp(_max_pool_taps_fwd, _max_pool_taps_bwd)


def avg_pool(x, window: int = 2, stride: int | None = None, padding: str = "VALID",
             count_include_pad: bool = True):
    stride = window if stride is None else stride
    return nnx.avg_pool(
        x, (window, window), strides=(stride, stride), padding=padding,
        count_include_pad=count_include_pad,
    )


class ConvBN(nnx.Module):
    """Conv -> BatchNorm -> activation, the unit most CNN families repeat."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int] = 3,
        strides: int = 1,
        padding: str = "SAME",
        *,
        use_bias: bool = False,
        activation: Callable | None = nnx.relu,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.9,
        bn_scale: bool = True,
        kernel_init=he_normal,
        groups: int = 1,
        rngs: nnx.Rngs,
    ):
        ks = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        self.conv = Conv(
            in_features, out_features, ks, strides=strides, padding=padding,
            use_bias=use_bias, kernel_init=kernel_init, feature_group_count=groups, rngs=rngs,
        )
        self.bn = nnx.BatchNorm(
            out_features, epsilon=bn_eps, momentum=bn_momentum, use_scale=bn_scale, rngs=rngs
        )
        self.activation = activation

    def __call__(self, x):
        act = _ACTIVATION_NAMES.get(self.activation, False)
        if act is not False:  # None, ReLU, ReLU6: one oneDNN call in eval mode on CPU
            return conv_bn_act(self.conv, self.bn, x, act)
        return self.activation(self.bn(self.conv(x)))


def conv_bn_act(conv: nnx.Conv, bn: nnx.BatchNorm, x: jax.Array,
                activation: str | None = None, residual: jax.Array | None = None) -> jax.Array:
    """``activation(bn(conv(x)) [+ residual])``, ``activation`` one of ``None``, ``"relu"``,
    ``"relu6"``; ``residual``, where given, is added before the activation (a residual
    block's shortcut).

    In eval mode (``bn.use_running_average``) on CPU, where ``conv`` (a ``Conv`` or
    ``DepthwiseConv``) runs through oneDNN, it is one oneDNN call: BatchNorm's running
    statistics folded into the kernel (``kernel * gamma / sqrt(var + eps)``) and a bias, the
    activation a post-op (``runtime.onednn.conv2d_bias_act``), 1x1 kernels included. That
    removes the XLA pass over each output between two oneDNN calls, which costs far more on
    XLA:CPU than the same pass in PyTorch (``docs/cpu-formulations.md``). Gradients, should
    anyone take them in eval mode, are those of the unfused layers. In train mode on CPU,
    BatchNorm and the activation are ``batchnorm_act_train``. Agrees with the unfused
    layers to float32 rounding (tests/test_onednn.py, tests/test_batchnorm.py)."""
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation {activation!r}: expected one of {list(_ACTIVATIONS)}")
    fused = _fused_geometry(conv, bn, x)
    if fused is None:
        y = conv(x)
        if _bn_train_applies(bn, y):
            return batchnorm_act_train(bn, y, activation, residual)
        y = bn(y)
    else:  # the residual, if any, is oneDNN's sum post-op, written into its buffer
        return _bias_act(x, *_folded(conv, bn), residual, (*fused, activation))
    y = y if residual is None else y + residual
    return _activate(y, activation)


def _folded(conv, bn):
    """``(kernel, bias)`` of ``conv`` followed by eval-mode ``bn``."""
    inv = jax.lax.rsqrt(bn.var[...] + bn.epsilon)
    scale = inv * bn.scale[...] if bn.scale is not None else inv
    shift = bn.bias[...] if bn.bias is not None else jnp.zeros_like(inv)
    bias = shift - bn.mean[...] * scale
    if conv.bias is not None:
        bias = bias + conv.bias[...] * scale
    return conv.kernel[...] * scale, bias  # the output channel is the kernel's last axis


_ACTIVATIONS = {None: None, "relu": jax.nn.relu, "relu6": jax.nn.relu6}


def _activate(y, activation: str | None):
    return _ACTIVATIONS[activation](y) if activation else y


# BatchNorm after a convolution (``conv_bn_act``): ``"fused"`` (the default on CPU) is, in
# train mode, ``batchnorm_act_train``, in eval mode folded into a oneDNN convolution;
# ``"flax"`` nnx.BatchNorm and the activation as written. Read at trace time.
BATCHNORM_IMPLS = ("auto", "fused", "flax")
_ENV_BATCHNORM = "BENCH_BATCHNORM"


def resolve_batchnorm_impl() -> str:
    """``"fused"`` or ``"flax"``: ``$BENCH_BATCHNORM``, else ``"auto"`` (``"fused"`` on CPU,
    ``"flax"`` elsewhere, so GPU programs stay as they were)."""
    impl = os.environ.get(_ENV_BATCHNORM) or "auto"
    if impl not in BATCHNORM_IMPLS:
        raise ValueError(f"{_ENV_BATCHNORM}={impl!r}: expected one of {BATCHNORM_IMPLS}")
    if impl == "auto":
        return "fused" if jax.default_backend() == "cpu" else "flax"
    return impl


def _bn_train_applies(bn: nnx.BatchNorm, x) -> bool:
    """Whether ``batchnorm_act_train`` computes ``bn(x)`` in train mode here."""
    return (not bn.use_running_average and resolve_batchnorm_impl() == "fused"
            and x.ndim >= 2 and bn.axis in (-1, x.ndim - 1) and bn.axis_name is None
            and bn.axis_index_groups is None and bn.use_fast_variance
            and bn.scale is not None and bn.bias is not None
            and bn.dtype in (None, jnp.float32) and x.dtype == jnp.float32
            and all(v[...].dtype == jnp.float32 for v in (bn.scale, bn.bias, bn.mean, bn.var)))


def batchnorm_act_train(bn: nnx.BatchNorm, x: jax.Array, activation: str | None = None,
                        residual: jax.Array | None = None):
    """``activation(bn(x) [+ residual])`` in train mode, ``bn`` as ``nnx.BatchNorm`` computes
    it (batch mean and
    the fast biased variance ``E[x^2] - E[x]^2``, clipped at 0; the running statistics
    updated with ``bn.momentum``), with a hand-written gradient: XLA:CPU's own, from the
    layers as written, makes 15 passes (fusions) over the activation per layer, this one 9
    (two reductions and one pass forward; the activation's mask, two reductions and one
    pass backward): 2.1-2.4x faster at ResNet-50's and MobileNetV2's shapes
    (``docs/cpu-formulations.md``)."""
    y, mean, var = _bn_act(x, bn.scale[...], bn.bias[...], residual,
                           (float(bn.epsilon), activation, residual is not None))
    m = bn.momentum
    bn.mean[...] = jax.lax.stop_gradient(m * bn.mean[...] + (1 - m) * mean)
    bn.var[...] = jax.lax.stop_gradient(m * bn.var[...] + (1 - m) * var)
    return y


def _bn_act_forward(x, scale, bias, residual, opts):
    eps, activation, _ = opts
    axes = tuple(range(x.ndim - 1))
    n = x.size // x.shape[-1]
    mean = jnp.sum(x, axes) / n
    var = jnp.maximum(0.0, jnp.sum(x * x, axes) / n - mean * mean)
    inv = jax.lax.rsqrt(var + eps)
    a = scale * inv
    y = x * a + (bias - mean * a)
    y = y if residual is None else y + residual
    y = _activate(y, activation)
    return (y, mean, var), (x, y, mean, inv, scale)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _bn_act(x, scale, bias, residual, opts):
    return _bn_act_forward(x, scale, bias, residual, opts)[0]


def _bn_act_bwd(opts, res, cotangents):
    """The batch statistics' own cotangents are dropped: they only feed the running
    averages, which are ``stop_gradient``-ed."""
    _, activation, has_residual = opts
    x, y, mean, inv, scale = res
    g = cotangents[0]
    if activation == "relu":
        g = jnp.where(y > 0, g, 0.0)
    elif activation == "relu6":
        g = jnp.where((y > 0) & (y < 6), g, 0.0)
    axes = tuple(range(x.ndim - 1))
    n = x.size // x.shape[-1]
    sum_g = jnp.sum(g, axes)
    sum_g_xhat = (jnp.sum(g * x, axes) - mean * sum_g) * inv
    a = scale * inv
    k = a * inv * sum_g_xhat / n  # dx = a * (g - sum_g / n - xhat * sum_g_xhat / n)
    dx = a * g - k * x + (k * mean - a * sum_g / n)
    return dx, sum_g_xhat, sum_g, g if has_residual else None


_bn_act.defvjp(_bn_act_forward, _bn_act_bwd)
_ACTIVATION_NAMES = {None: None, nnx.relu: "relu", jax.nn.relu: "relu", nnx.relu6: "relu6",
                     jax.nn.relu6: "relu6"}


def _fused_geometry(conv, bn, x):
    """``(strides, pads, dilation, groups)`` where ``conv_bn_act`` can be one oneDNN call,
    else None."""
    if not (bn.use_running_average and jax.default_backend() == "cpu" and x.ndim == 4
            and resolve_batchnorm_impl() == "fused"
            and bn.axis in (-1, 3) and x.dtype == jnp.float32
            and all(v[...].dtype == jnp.float32 for v in (conv.kernel, bn.mean, bn.var))
            and conv.mask is None and _pair(conv.input_dilation, "") == (1, 1)
            and (not isinstance(conv.padding, str)
                 or conv.padding.upper() in ("SAME", "VALID"))):
        return None
    kernel = conv.kernel[...]
    if isinstance(conv, DepthwiseConv):
        if resolve_depthwise_impl(conv.impl) != "onednn":
            return None
        groups = x.shape[3]
    elif isinstance(conv, Conv):
        if conv.feature_group_count != 1 or resolve_conv_impl(conv.impl) != "onednn":
            return None
        groups = 1
    else:
        return None
    if kernel.ndim != 4 or kernel.shape[2] * groups != x.shape[3]:
        return None
    strides = _pair(conv.strides, "strides")
    dilation = _pair(conv.kernel_dilation, "kernel_dilation")
    pads = _onednn_pads(x, kernel, strides, conv.padding, dilation)
    if pads is None:
        return None
    return strides, tuple(tuple(p) for p in pads), dilation, groups


def _unfused(x, kernel, bias, residual, geom):
    strides, pads, dilation, groups, activation = geom
    if groups == 1 and kernel.shape[:2] == (1, 1):
        y = conv_matmul(x, kernel, strides, [list(p) for p in pads], dilation)
    else:
        y = onednn.conv2d(x, kernel, strides, pads, dilation, groups=groups)
    y = y + bias if residual is None else y + bias + residual
    return _activate(y, activation)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _bias_act(x, kernel, bias, residual, geom):
    strides, pads, dilation, groups, activation = geom
    return onednn.conv2d_bias_act(x, kernel, bias, strides, pads, dilation, groups, activation,
                                  residual=residual)


def _bias_act_fwd(x, kernel, bias, residual, geom):
    return _bias_act(x, kernel, bias, residual, geom), (x, kernel, bias, residual)


def _bias_act_bwd(geom, res, g):
    return jax.vjp(lambda *a: _unfused(*a, geom), *res)[1](g)


_bias_act.defvjp(_bias_act_fwd, _bias_act_bwd)


class Classifier(nnx.Module):
    """Base class for the output contract: ``embed`` + optional linear head.

    Subclasses implement ``embed(x)`` and set ``self.num_features``, ``self.num_classes`` and
    ``self.head`` (``None`` when ``num_classes == 0``); ``head_dropout`` (an ``nnx.Dropout`` or
    ``None``) is applied to the embedding before the head.
    """

    num_classes: int
    num_features: int
    head = None
    head_dropout = None

    def embed(self, x: jax.Array) -> jax.Array:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, x: jax.Array) -> jax.Array:
        z = self.embed(x)
        if self.head is None:
            return z
        if self.head_dropout is not None:
            z = self.head_dropout(z)
        return self.head(z)

    # Top-level blocks in forward order, spelled out: attribute order is not kept, since
    # nnx.merge (under jit, eval_shape) rebuilds modules with their attributes sorted by name.
    BLOCKS: tuple[str, ...] = ()

    def block_names(self) -> list[str]:
        """Top-level sub-module names in forward order; the head last."""
        if not self.BLOCKS:
            raise NotImplementedError(f"{type(self).__name__} must set BLOCKS or define "
                                      "block_names()")
        names = [b for b in self.BLOCKS if getattr(self, b, None) is not None]
        return names + (["head"] if self.head is not None else [])


def make_head(num_features: int, num_classes: int, *, rngs: nnx.Rngs,
              kernel_init=glorot_uniform) -> nnx.Linear | None:
    if num_classes == 0:
        return None
    return nnx.Linear(num_features, num_classes, kernel_init=kernel_init, rngs=rngs)


# --------------------------------------------------------------------------------------------
# Depthwise convolution.

# Formulations of ``DepthwiseConv``: ``"conv"`` is the grouped convolution
# (``feature_group_count=C``; cuDNN on GPU), ``"taps"`` the kernel's h*w taps as shifted
# multiply-adds (XLA:CPU runs the grouped convolution an order of magnitude slower, see
# ``results/examples/speed-vs-peers-cpu.md``), ``"onednn"`` oneDNN's depthwise convolution,
# forward and both gradients, as XLA FFI custom calls (``runtime.onednn``; float32, else the
# taps): MobileNetV2 / EfficientNet-Lite0 train steps 1.03-1.31x the taps', inference
# 0.82-1.13x (``docs/cpu-formulations.md``). ``"auto"``, decided at trace time: on CPU
# ``"onednn"`` where the extension is available and the process has one device, else
# ``"taps"``; ``"conv"`` on other backends.
DEPTHWISE_IMPLS = ("auto", "conv", "taps", "onednn")
_ENV_DEPTHWISE = "BENCH_DEPTHWISE"
_depthwise_default: str | None = None


def set_depthwise_impl(impl: str | None) -> None:
    """Process-wide formulation for ``DepthwiseConv`` layers built with ``impl=None``
    (``None`` restores the default: ``$BENCH_DEPTHWISE``, else ``"auto"``). It is read when a
    layer is traced, so it applies to already-built models on their next trace."""
    if impl is not None and impl not in DEPTHWISE_IMPLS:
        raise ValueError(f"depthwise impl {impl!r}: expected one of {DEPTHWISE_IMPLS}")
    global _depthwise_default
    _depthwise_default = impl


def resolve_depthwise_impl(impl: str | None = None) -> str:
    """``"conv"``, ``"taps"`` or ``"onednn"``: ``impl``, else ``set_depthwise_impl``'s, else
    ``$BENCH_DEPTHWISE``, else ``"auto"``; ``"auto"`` is ``"onednn"`` on CPU where it is
    available with one device, else ``"taps"`` on CPU, ``"conv"`` elsewhere."""
    impl = impl or _depthwise_default or os.environ.get(_ENV_DEPTHWISE) or "auto"
    if impl not in DEPTHWISE_IMPLS:
        raise ValueError(f"depthwise impl {impl!r}: expected one of {DEPTHWISE_IMPLS}")
    if impl == "auto":
        if jax.default_backend() != "cpu":
            return "conv"
        return "onednn" if _onednn_applies() else "taps"
    if impl == "onednn":
        _require_onednn("depthwise impl 'onednn'")
    return impl


def _onednn_applies() -> bool:
    """Whether ``"auto"`` takes oneDNN here: the extension is available and the process has
    one device (a custom call has no sharding rule; XLA would gather a sharded batch)."""
    return jax.device_count() == 1 and onednn.available()


def _require_onednn(what: str) -> None:
    if not onednn.available():
        raise RuntimeError(f"{what}: {onednn.why_unavailable()}")


def _onednn_pads(x, kernel, strides, padding, dilation):
    """The explicit pads for ``runtime.onednn.conv2d``, or None where it does not apply (a
    non-float32 operand, or padding that crops)."""
    pads = _explicit_pads(padding, x.shape[1:3], kernel.shape[:2], strides, dilation)
    if (x.dtype != jnp.float32 or kernel.dtype != jnp.float32
            or any(p < 0 for pair in pads for p in pair)):
        return None
    return pads


def _pair(v, name: str) -> tuple[int, int]:
    if v is None:
        return (1, 1)
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(a) for a in v)
    if len(v) != 2:
        raise ValueError(f"{name}: expected an int or 2 ints, got {v}")
    return v


def _explicit_pads(padding, in_hw, kernel_hw, strides, dilation) -> list[tuple[int, int]]:
    """``padding`` ("SAME", "VALID", an int, or ((lo, hi), (lo, hi))) as explicit pairs, the
    way ``lax.conv_general_dilated`` reads it ("SAME": the odd pixel after, as TensorFlow)."""
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID"):
            raise ValueError(f"depthwise padding {padding!r}: 'SAME', 'VALID' or explicit")
        eff = [(k - 1) * d + 1 for k, d in zip(kernel_hw, dilation)]
        return list(jax.lax.padtype_to_pads(in_hw, eff, strides, padding.upper()))
    if isinstance(padding, int):
        return [(padding, padding)] * 2
    pads = [(p, p) if isinstance(p, int) else tuple(p) for p in padding]
    if len(pads) != 2:
        raise ValueError(f"depthwise padding {padding!r}: expected two (lo, hi) pairs")
    return pads


def depthwise_conv_grouped(x, kernel, strides=1, padding="SAME", dilation=1):
    """NHWC depthwise convolution as ``lax.conv_general_dilated`` with
    ``feature_group_count=C``; ``kernel`` is ``(h, w, 1, C * multiplier)``, output channel
    ``c * multiplier + m`` being multiplier ``m`` of input channel ``c``."""
    strides, dilation = _pair(strides, "strides"), _pair(dilation, "dilation")
    pads = _explicit_pads(padding, x.shape[1:3], kernel.shape[:2], strides, dilation)
    return jax.lax.conv_general_dilated(
        x, kernel, strides, pads, rhs_dilation=dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1],
    )


def depthwise_conv_onednn(x, kernel, strides=1, padding="SAME", dilation=1):
    """The same as ``depthwise_conv_grouped``, computed by oneDNN (``runtime.onednn``); a
    non-float32 input, or padding that crops, falls back to the taps."""
    strides, dilation = _pair(strides, "strides"), _pair(dilation, "dilation")
    pads = _onednn_pads(x, kernel, strides, padding, dilation)
    if pads is None:
        return depthwise_conv_taps(x, kernel, strides, padding, dilation)
    return onednn.conv2d(x, kernel, strides, pads, dilation, groups=x.shape[3])


def depthwise_conv_taps(x, kernel, strides=1, padding="SAME", dilation=1):
    """The same as ``depthwise_conv_grouped``, computed as the kernel's ``h * w`` taps:
    strided slices of the padded input, each times its tap's per-channel weights, summed.
    Channels stay the minor (vectorised) axis; XLA fuses the sum into one loop."""
    strides, dilation = _pair(strides, "strides"), _pair(dilation, "dilation")
    kh, kw, one, cout = kernel.shape
    c = x.shape[3]
    if one != 1 or cout % c:
        raise ValueError(f"depthwise kernel {kernel.shape} for {c} input channels: expected "
                         f"(h, w, 1, {c} * multiplier)")
    if cout != c:  # channel multiplier: output channel c * m + j reads input channel c
        x = jnp.repeat(x, cout // c, axis=-1)
    xp, geom = _padded(x, (kh, kw), strides, padding, dilation, "depthwise conv")
    return _tap_sum(xp, kernel, geom)


def _padded(x, kernel_hw, strides, padding, dilation, what: str):
    """``x`` padded as ``padding`` says and the window geometry ``(oh, ow, sh, sw, dh, dw)``
    of a ``kernel_hw`` convolution over it (``strides``, ``dilation``: pairs)."""
    (kh, kw), (sh, sw), (dh, dw) = kernel_hw, strides, dilation
    h, w = x.shape[1:3]
    pads = _explicit_pads(padding, (h, w), (kh, kw), strides, dilation)
    oh = (h + sum(pads[0]) - (kh - 1) * dh - 1) // sh + 1
    ow = (w + sum(pads[1]) - (kw - 1) * dw - 1) // sw + 1
    if oh <= 0 or ow <= 0:
        raise ValueError(f"{what} of a {h}x{w} input with a {kh}x{kw} kernel: empty output")
    if any(p for pair in pads for p in pair):
        # Negative padding (allowed by lax) crops; lax.pad takes both signs.
        x = jax.lax.pad(x, jnp.zeros((), x.dtype),
                        ((0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)))
    return x, (oh, ow, sh, sw, dh, dw)


def _taps(xp, kh: int, kw: int, geom) -> list:
    """The ``kh * kw`` strided windows of ``xp`` that the kernel's taps multiply, in
    ``(i, j)`` order, each ``(n, oh, ow, c)``."""
    oh, ow, sh, sw, dh, dw = geom
    n, c = xp.shape[0], xp.shape[3]
    return [jax.lax.slice(xp, (0, i * dh, j * dw, 0),
                          (n, i * dh + (oh - 1) * sh + 1, j * dw + (ow - 1) * sw + 1, c),
                          (1, sh, sw, 1))
            for i in range(kh) for j in range(kw)]


def _tap_sum_impl(xp, kernel, geom):
    kh, kw = kernel.shape[:2]
    y = None
    for k, tap in enumerate(_taps(xp, kh, kw, geom)):
        term = tap * kernel[k // kw, k % kw, 0]
        y = term if y is None else y + term
    return y


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _tap_sum(xp, kernel, geom):
    """``sum_ij window_ij(xp) * kernel[i, j, 0]``, with a hand-written kernel gradient.

    Differentiated automatically, the kernel gradient is ``kh * kw`` separate reductions of
    ``window_ij * g`` over (n, h, w), each a pass over both tensors; XLA:CPU runs them 3-8x
    slower than one variadic reduction over w (all taps in one pass) followed by a small sum
    over (n, h) (measured at MobileNetV2's shapes, batch 16, 2-core CPU). The input gradient
    is written by hand too (``_tap_sum_input_grad``)."""
    return _tap_sum_impl(xp, kernel, geom)


def _tap_sum_fwd(xp, kernel, geom):
    return _tap_sum_impl(xp, kernel, geom), (xp, kernel)


def _tap_sum_input_grad(xp, kernel, geom, g):
    """d/d``xp`` of ``_tap_sum``, in the forward's own form: the output gradient spread to
    the input's grid (interior zeros between pixels for a stride) and padded by the kernel's
    extent, once; then its ``kh * kw`` contiguous windows times the flipped kernel, summed in
    one fused loop. Automatic differentiation gives the transpose of every strided window (a
    pad each) summed, which XLA:CPU runs as one loop with a bounds test per tap and element:
    1.1-1.5x slower MobileNetV2 / EfficientNet-Lite0 train steps (batch 16, 2-core CPU,
    ``results/examples/cpu-train-gap.md``)."""
    oh, ow, sh, sw, dh, dw = geom
    kh, kw = kernel.shape[:2]
    n, hp, wp, c = xp.shape
    eh, ew = (kh - 1) * dh, (kw - 1) * dw
    gp = jax.lax.pad(g, jnp.zeros((), g.dtype),
                     ((0, 0, 0), (eh, hp - (oh - 1) * sh - 1, sh - 1),
                      (ew, wp - (ow - 1) * sw - 1, sw - 1), (0, 0, 0)))
    dxp = None
    for i in range(kh):
        for j in range(kw):
            a, b = eh - i * dh, ew - j * dw
            term = jax.lax.slice(gp, (0, a, b, 0), (n, a + hp, b + wp, c)) * kernel[i, j, 0]
            dxp = term if dxp is None else dxp + term
    return dxp.astype(xp.dtype)


def _tap_sum_bwd(geom, res, g):
    xp, kernel = res
    kh, kw, _, cout = kernel.shape
    dxp = _tap_sum_input_grad(xp, kernel, geom, g)
    acc = jnp.promote_types(g.dtype, jnp.float32)
    prods = tuple((t * g).astype(acc) for t in _taps(xp, kh, kw, geom))
    rows = jax.lax.reduce(prods, tuple(jnp.zeros((), acc) for _ in prods),
                          lambda a, b: tuple(u + v for u, v in zip(a, b)), (2,))
    dk = jnp.stack([r.sum(axis=(0, 1)) for r in rows]).reshape(kh, kw, 1, cout)
    return dxp, dk.astype(kernel.dtype)


_tap_sum.defvjp(_tap_sum_fwd, _tap_sum_bwd)


_DEPTHWISE_FNS = {"conv": depthwise_conv_grouped, "taps": depthwise_conv_taps,
                  "onednn": depthwise_conv_onednn}


# --------------------------------------------------------------------------------------------
# Ordinary convolutions as matrix products.

# Formulations of ``Conv``: ``"xla"`` is ``lax.conv_general_dilated``; ``"matmul"`` computes
# a 1x1 convolution (any stride) as one matrix product over the pixels, and a convolution
# with at most ``IM2COL_MAX_IN`` input channels (an RGB stem) as im2col (the kernel's taps
# concatenated on the channel axis) and one product. XLA:CPU runs those convolutions, and
# above all their kernel gradients, several times slower than the product it is (measured at
# MobileNetV2's shapes, batch 16, 2-core CPU: 1x1 forward 2.5x, forward + backward 5.9x;
# the 3x3 RGB stem's kernel gradient 2.2x).
#
# ``"onednn"`` keeps ``"matmul"``'s rule for 1x1 kernels and runs every other convolution
# without groups (float32, kernel larger than 1x1, RGB stems included) through oneDNN,
# forward and both gradients, as XLA FFI custom calls (``runtime/onednn.py``): at the
# ResNets' 3x3 shapes XLA:CPU's own kernel gradient takes up to 3x oneDNN's time, its input
# gradient up to 2.6x, its forward 0.8-2x; at the 224-px RGB stems oneDNN's forward takes
# 0.30-0.38x the im2col product's time (``docs/cpu-formulations.md``).
# The extension is built on first use where the system has a C++ compiler and oneDNN.
#
# ``"auto"``, decided at trace time: on CPU, ``"onednn"`` where the extension is available
# and the process has one device (a custom call has no sharding rule, so a data-parallel
# mesh keeps XLA's convolution), else ``"matmul"``; ``"xla"`` on other backends.
#
# ``"im2col"`` and ``"taps"`` (opt-in, for measurement: neither is faster on the CPUs
# measured, ``docs/cpu-formulations.md``) keep ``"matmul"``'s rules and, for every other
# convolution without groups, ``lax.conv`` forward and input gradient with a hand-written
# kernel gradient: the im2col patches times the output gradient (one matrix product), or
# one product per kernel tap (``conv_lax_custom_dw``).
CONV_IMPLS = ("auto", "xla", "matmul", "im2col", "taps", "onednn")
_ENV_CONV = "BENCH_CONV"
IM2COL_MAX_IN = 4


def resolve_conv_impl(impl: str | None = None) -> str:
    """``"xla"``, ``"matmul"``, ``"im2col"``, ``"taps"`` or ``"onednn"``: ``impl``, else
    ``$BENCH_CONV``, else ``"auto"`` (on CPU ``"onednn"`` where available with one device,
    else ``"matmul"``; ``"xla"`` elsewhere). ``"onednn"`` asked for where the extension
    cannot be built raises RuntimeError saying why."""
    impl = impl or os.environ.get(_ENV_CONV) or "auto"
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv impl {impl!r}: expected one of {CONV_IMPLS}")
    if impl == "auto":
        if jax.default_backend() != "cpu":
            return "xla"
        return "onednn" if _onednn_applies() else "matmul"
    if impl == "onednn":
        _require_onednn("conv impl 'onednn'")
    return impl


def conv_description(impl: str | None = None) -> str:
    """One line for result tables: how this process's ``Conv`` layers compute."""
    try:
        form = resolve_conv_impl(impl)
    except RuntimeError as e:
        return f"unavailable: {e}"
    if form == "xla":
        return "XLA's convolution"
    if form == "onednn":
        dw = "and depthwise " if resolve_depthwise_impl() == "onednn" else ""
        return (f"oneDNN {onednn.version()} for kxk {dw}convolutions (XLA FFI custom calls); "
                "1x1 convolutions as matrix products")
    why = ""
    if impl is None and os.environ.get(_ENV_CONV) in (None, "", "auto"):
        why = ("; oneDNN: more than one device" if jax.device_count() > 1
               else f"; oneDNN: {onednn.why_unavailable()}")
    return (f"XLA's for kxk convolutions ({form} kernel gradient)" if form in ("im2col", "taps")
            else "XLA's for kxk convolutions") + \
        "; 1x1 and RGB-stem convolutions as matrix products" + why


def conv_matmul_applies(kernel_shape, feature_group_count: int = 1) -> bool:
    """Whether ``conv_matmul`` is the faster form for a kernel of this shape on CPU."""
    kh, kw, cin, _ = kernel_shape
    return feature_group_count == 1 and ((kh, kw) == (1, 1) or cin <= IM2COL_MAX_IN)


def conv_matmul(x, kernel, strides=1, padding="SAME", dilation=1):
    """NHWC convolution with an HWIO ``kernel`` (no groups), as one matrix product: a 1x1
    kernel reads the strided pixels directly, a larger one its im2col patches (the taps in
    the kernel's ``(i, j, c)`` order). Agrees with ``lax.conv_general_dilated`` to float
    rounding (tests/test_conv_matmul.py)."""
    strides, dilation = _pair(strides, "strides"), _pair(dilation, "dilation")
    kh, kw, cin, cout = kernel.shape
    n, c = x.shape[0], x.shape[3]
    if c != cin:
        raise ValueError(f"conv kernel {kernel.shape} for {c} input channels")
    xp, geom = _padded(x, (kh, kw), strides, padding, dilation, "conv")
    oh, ow = geom[:2]
    taps = _taps(xp, kh, kw, geom)
    cols = taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)
    y = cols.reshape(n * oh * ow, kh * kw * cin) @ kernel.reshape(kh * kw * cin, cout)
    return y.reshape(n, oh, ow, cout)


def conv_lax_custom_dw(x, kernel, strides=1, padding="SAME", dilation=1, how="im2col"):
    """``lax.conv_general_dilated`` (NHWC, HWIO, no groups) whose kernel gradient is
    written by hand: ``how="im2col"``, the patches (the kernel's taps concatenated on the
    channel axis) transposed times the output gradient, one matrix product; ``"taps"``, one
    product per tap. Forward and input gradient are XLA's. Agrees with ``lax.conv`` to
    float rounding, gradients included (tests/test_conv_im2col.py)."""
    strides, dilation = _pair(strides, "strides"), _pair(dilation, "dilation")
    if how not in ("im2col", "taps"):
        raise ValueError(f"kernel-gradient form {how!r}: expected 'im2col' or 'taps'")
    if x.shape[3] != kernel.shape[2]:
        raise ValueError(f"conv kernel {kernel.shape} for {x.shape[3]} input channels")
    pads = tuple(tuple(p) for p in _explicit_pads(padding, x.shape[1:3], kernel.shape[:2],
                                                  strides, dilation))
    return _conv_custom_dw(x, kernel, (strides, pads, dilation, how))


def _conv_lax(x, kernel, geom):
    strides, pads, dilation, _ = geom
    return jax.lax.conv_general_dilated(x, kernel, strides, pads, rhs_dilation=dilation,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_custom_dw(x, kernel, geom):
    """``lax.conv`` with the kernel gradient of ``conv_lax_custom_dw``."""
    return _conv_lax(x, kernel, geom)


def _conv_custom_dw_fwd(x, kernel, geom):
    return _conv_lax(x, kernel, geom), (x, kernel)


def _conv_custom_dw_bwd(geom, res, g):
    x, kernel = res
    strides, pads, dilation, how = geom
    kh, kw, cin, cout = kernel.shape
    _, vjp_x = jax.vjp(lambda a: _conv_lax(a, kernel, geom), x)
    (dx,) = vjp_x(g)
    xp, tap_geom = _padded(x, (kh, kw), strides, [list(p) for p in pads], dilation, "conv")
    taps = _taps(xp, kh, kw, tap_geom)
    g2 = g.reshape(-1, cout)
    if how == "im2col":
        cols = taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)
        dk = jax.lax.dot_general(cols.reshape(-1, kh * kw * cin), g2,
                                 (((0,), (0,)), ((), ())))
    else:
        dk = jnp.stack([jax.lax.dot_general(t.reshape(-1, cin), g2, (((0,), (0,)), ((), ())))
                        for t in taps])
    return dx, dk.reshape(kh, kw, cin, cout).astype(kernel.dtype)


_conv_custom_dw.defvjp(_conv_custom_dw_fwd, _conv_custom_dw_bwd)


class Conv(nnx.Conv):
    """``nnx.Conv`` (same parameters, kernel layout and results) that runs, on CPU, a 1x1
    convolution as a matrix product (``conv_matmul``) and every other float32 convolution
    without groups through oneDNN where the extension is available (``runtime.onednn``;
    without it, a convolution of an RGB-like input is an im2col product too); ``impl`` /
    ``$BENCH_CONV``: one of ``CONV_IMPLS``.
    Every family builds its convolutions with it; weight loaders see an ``nnx.Conv``."""

    def __init__(self, *args, impl: str | None = None, **kwargs):
        if impl is not None and impl not in CONV_IMPLS:
            raise ValueError(f"conv impl {impl!r}: expected one of {CONV_IMPLS}")
        super().__init__(*args, **kwargs)
        self.impl = impl

    def _form(self, x) -> str:
        """``"xla"`` (``nnx.Conv``'s own), ``"matmul"``, ``"im2col"``, ``"taps"`` or
        ``"onednn"`` for this call: the resolved impl where it applies to this kernel and
        input."""
        kernel_shape = self.kernel.shape
        impl = resolve_conv_impl(self.impl)
        if (impl == "xla" or x.ndim != 4 or self.mask is not None or len(kernel_shape) != 4
                or _pair(self.input_dilation, "") != (1, 1) or self.feature_group_count != 1
                or (isinstance(self.padding, str)
                    and self.padding.upper() not in ("SAME", "VALID"))):
            return "xla"
        if impl == "onednn" and kernel_shape[:2] != (1, 1):
            return "onednn"  # RGB stems too (2.7-3.3x the im2col product at 224 px)
        if conv_matmul_applies(kernel_shape, self.feature_group_count):
            return "matmul"
        return impl if impl in ("im2col", "taps") else "xla"

    def __call__(self, x: jax.Array) -> jax.Array:
        form = self._form(x)
        if form == "xla":
            return super().__call__(x)
        kernel = self.kernel[...]
        bias = self.bias[...] if self.bias is not None else None
        x_in = x
        x, kernel, bias = self.promote_dtype((x, kernel, bias), dtype=self.dtype)
        if form == "onednn":
            strides = _pair(self.strides, "strides")
            dilation = _pair(self.kernel_dilation, "kernel_dilation")
            pads = _onednn_pads(x, kernel, strides, self.padding, dilation)
            if pads is None:
                if not conv_matmul_applies(kernel.shape):
                    return super().__call__(x_in)
                y = conv_matmul(x, kernel, self.strides, self.padding, self.kernel_dilation)
            else:
                y = onednn.conv2d(x, kernel, strides, pads, dilation)
        elif form == "matmul":
            y = conv_matmul(x, kernel, self.strides, self.padding, self.kernel_dilation)
        else:
            y = conv_lax_custom_dw(x, kernel, self.strides, self.padding,
                                   self.kernel_dilation, how=form)
        if bias is not None:
            y = y + bias
        return y


class DepthwiseConv(nnx.Conv):
    """Depthwise convolution (Keras ``DepthwiseConv2D``): one ``kernel_size`` filter per input
    channel and multiplier, the one class every family uses.

    An ``nnx.Conv`` with ``feature_group_count=in_features``, so its kernel has ``nnx.Conv``'s
    layout ``(h, w, 1, in_features * multiplier)``, output channel ``i * multiplier + m``
    being multiplier ``m`` of input channel ``i``, as in Keras (whose kernel is
    ``(h, w, in, multiplier)``) and PyTorch (``(C * multiplier, 1, h, w)``).

    ``impl`` picks the formulation (``DEPTHWISE_IMPLS``); ``None`` defers to
    ``set_depthwise_impl`` / ``$BENCH_DEPTHWISE`` / ``"auto"`` (on CPU oneDNN where it builds,
    else the taps; the grouped convolution elsewhere), read at trace time. All agree to
    float32 rounding (tests/test_depthwise.py, tests/test_onednn.py), gradients included.
    """

    def __init__(
        self,
        in_features: int,
        multiplier: int = 1,
        kernel_size: int | Sequence[int] = 3,
        strides: int | Sequence[int] = 1,
        padding="SAME",
        use_bias: bool = False,
        *,
        kernel_dilation: int | Sequence[int] = 1,
        kernel_init=glorot_uniform,
        impl: str | None = None,
        rngs: nnx.Rngs,
    ):
        ks = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        if impl is not None and impl not in DEPTHWISE_IMPLS:
            raise ValueError(f"depthwise impl {impl!r}: expected one of {DEPTHWISE_IMPLS}")
        super().__init__(
            in_features, in_features * multiplier, ks, strides=strides, padding=padding,
            kernel_dilation=kernel_dilation, use_bias=use_bias,
            feature_group_count=in_features, kernel_init=kernel_init, rngs=rngs,
        )
        self.multiplier = multiplier
        self.impl = impl

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4 or self.mask is not None or _pair(self.input_dilation, "") != (1, 1) or (
            isinstance(self.padding, str) and self.padding.upper() not in ("SAME", "VALID")
        ):
            return super().__call__(x)
        fn = _DEPTHWISE_FNS[resolve_depthwise_impl(self.impl)]
        kernel = self.kernel[...]
        bias = self.bias[...] if self.bias is not None else None
        x, kernel, bias = self.promote_dtype((x, kernel, bias), dtype=self.dtype)
        y = fn(x, kernel, self.strides, self.padding, self.kernel_dilation)
        if bias is not None:
            y = y + bias
        return y
