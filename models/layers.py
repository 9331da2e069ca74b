"""Building blocks shared by the model families."""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

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
    stride = window if stride is None else stride
    return nnx.max_pool(x, (window, window), strides=(stride, stride), padding=padding)


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
        self.conv = nnx.Conv(
            in_features, out_features, ks, strides=strides, padding=padding,
            use_bias=use_bias, kernel_init=kernel_init, feature_group_count=groups, rngs=rngs,
        )
        self.bn = nnx.BatchNorm(
            out_features, epsilon=bn_eps, momentum=bn_momentum, use_scale=bn_scale, rngs=rngs
        )
        self.activation = activation

    def __call__(self, x):
        x = self.bn(self.conv(x))
        return self.activation(x) if self.activation is not None else x


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
