"""Inception-v3 (Szegedy et al. 2015, arXiv:1512.00567), layer for layer as
``keras.applications.InceptionV3`` (``keras/src/applications/inception_v3.py``).

Every convolution is Keras' ``conv2d_bn``: a bias-free convolution, BatchNorm without scale
(``scale=False``, epsilon 1e-3, momentum 0.99), ReLU. A stem of five of them with two 3x3/2
max-pools, then eleven "mixed" blocks: ``mixed0``-``mixed2`` (35x35, 5x5 and double-3x3
towers), ``mixed3`` (grid reduction), ``mixed4``-``mixed7`` (17x17, factorised 1x7/7x1),
``mixed8`` (reduction), ``mixed9``-``mixed10`` (8x8, split 1x3/3x1 towers). Average pools inside
blocks are 3x3/1 "same" and, as in Keras, do not count the padding. No auxiliary head: global
average pooling (2048 features) and ``Dense(classes)`` named ``predictions``.

Keras leaves the convolutions unnamed, so they are called ``conv2d``, ``conv2d_1``, ... and
``batch_normalization``, ``batch_normalization_1``, ... in creation order. ``keras_layers()``
uses the numbering of a fresh Keras 3 session; the official ImageNet files were saved by Keras
2.0, which counted from ``_1``: ``load_weights`` matches such names by creation order.

Published size (Keras ``count_params()``, batch-norm statistics included): 23,851,784 with the
1000-class head, 21,802,784 without.
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
from flax import nnx

from ._registry import PretrainedFile, register_model
from .keras_weights import (  # noqa: F401 (re-exported: older imports and the tests)
    keras_auto_name,
    load_keras_h5_by_creation_order,
)
from .layers import (
    KERAS_BN_EPS,
    KERAS_BN_MOMENTUM,
    Classifier,
    ConvBN,
    avg_pool,
    glorot_uniform,
    global_avg_pool,
    make_head,
    max_pool,
)

_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/inception_v3/"


def conv_bn(in_f: int, out_f: int, kernel: int | Sequence[int], strides: int = 1,
            padding: str = "SAME", *, rngs: nnx.Rngs) -> ConvBN:
    """Keras' ``conv2d_bn`` (InceptionV3 and InceptionResNetV2): bias-free conv, BatchNorm
    without scale, ReLU; Keras' default glorot-uniform kernels."""
    return ConvBN(
        in_f, out_f, kernel, strides, padding, bn_eps=KERAS_BN_EPS,
        bn_momentum=KERAS_BN_MOMENTUM, bn_scale=False, kernel_init=glorot_uniform, rngs=rngs,
    )


def _pool_same(x):
    # AveragePooling2D((3, 3), strides=1, padding="same"): Keras averages over the valid pixels.
    return avg_pool(x, 3, 1, "SAME", count_include_pad=False)


def _cat(*xs):
    return jnp.concatenate(xs, axis=-1)


class _Block(nnx.Module):
    """A block whose ``units()`` are its ``conv_bn`` units in Keras' creation order."""

    def units(self) -> list[ConvBN]:  # pragma: no cover - abstract
        raise NotImplementedError


class Stem(_Block):
    """3x3/2 -> 3x3 -> 3x3 "same" -> max-pool 3x3/2 -> 1x1 -> 3x3 -> max-pool 3x3/2."""

    def __init__(self, in_f: int = 3, *, rngs: nnx.Rngs):
        self.conv1 = conv_bn(in_f, 32, 3, 2, "VALID", rngs=rngs)
        self.conv2 = conv_bn(32, 32, 3, 1, "VALID", rngs=rngs)
        self.conv3 = conv_bn(32, 64, 3, rngs=rngs)
        self.conv4 = conv_bn(64, 80, 1, 1, "VALID", rngs=rngs)
        self.conv5 = conv_bn(80, 192, 3, 1, "VALID", rngs=rngs)
        self.out_features = 192

    def __call__(self, x):
        x = max_pool(self.conv3(self.conv2(self.conv1(x))), 3, 2)
        return max_pool(self.conv5(self.conv4(x)), 3, 2)

    def units(self):
        return [self.conv1, self.conv2, self.conv3, self.conv4, self.conv5]


class InceptionA(_Block):
    """``mixed0``-``mixed2`` (35x35): 1x1 | 1x1->5x5 | 1x1->3x3->3x3 | avg-pool->1x1."""

    def __init__(self, in_f: int, pool_features: int, *, rngs: nnx.Rngs):
        self.b1x1 = conv_bn(in_f, 64, 1, rngs=rngs)
        self.b5x5_1 = conv_bn(in_f, 48, 1, rngs=rngs)
        self.b5x5_2 = conv_bn(48, 64, 5, rngs=rngs)
        self.b3x3dbl_1 = conv_bn(in_f, 64, 1, rngs=rngs)
        self.b3x3dbl_2 = conv_bn(64, 96, 3, rngs=rngs)
        self.b3x3dbl_3 = conv_bn(96, 96, 3, rngs=rngs)
        self.pool = conv_bn(in_f, pool_features, 1, rngs=rngs)
        self.out_features = 64 + 64 + 96 + pool_features

    def __call__(self, x):
        return _cat(
            self.b1x1(x),
            self.b5x5_2(self.b5x5_1(x)),
            self.b3x3dbl_3(self.b3x3dbl_2(self.b3x3dbl_1(x))),
            self.pool(_pool_same(x)),
        )

    def units(self):
        return [self.b1x1, self.b5x5_1, self.b5x5_2, self.b3x3dbl_1, self.b3x3dbl_2,
                self.b3x3dbl_3, self.pool]


class InceptionB(_Block):
    """``mixed3`` (35 -> 17): 3x3/2 | 1x1->3x3->3x3/2 | max-pool 3x3/2."""

    def __init__(self, in_f: int, *, rngs: nnx.Rngs):
        self.b3x3 = conv_bn(in_f, 384, 3, 2, "VALID", rngs=rngs)
        self.b3x3dbl_1 = conv_bn(in_f, 64, 1, rngs=rngs)
        self.b3x3dbl_2 = conv_bn(64, 96, 3, rngs=rngs)
        self.b3x3dbl_3 = conv_bn(96, 96, 3, 2, "VALID", rngs=rngs)
        self.out_features = 384 + 96 + in_f

    def __call__(self, x):
        return _cat(
            self.b3x3(x),
            self.b3x3dbl_3(self.b3x3dbl_2(self.b3x3dbl_1(x))),
            max_pool(x, 3, 2),
        )

    def units(self):
        return [self.b3x3, self.b3x3dbl_1, self.b3x3dbl_2, self.b3x3dbl_3]


class InceptionC(_Block):
    """``mixed4``-``mixed7`` (17x17): 1x1 | 1x1->1x7->7x1 | 1x1->7x1->1x7->7x1->1x7 |
    avg-pool->1x1; ``c7`` channels inside the 7-towers (128, 160, 160, 192)."""

    def __init__(self, in_f: int, c7: int, *, rngs: nnx.Rngs):
        self.b1x1 = conv_bn(in_f, 192, 1, rngs=rngs)
        self.b7x7_1 = conv_bn(in_f, c7, 1, rngs=rngs)
        self.b7x7_2 = conv_bn(c7, c7, (1, 7), rngs=rngs)
        self.b7x7_3 = conv_bn(c7, 192, (7, 1), rngs=rngs)
        self.b7x7dbl_1 = conv_bn(in_f, c7, 1, rngs=rngs)
        self.b7x7dbl_2 = conv_bn(c7, c7, (7, 1), rngs=rngs)
        self.b7x7dbl_3 = conv_bn(c7, c7, (1, 7), rngs=rngs)
        self.b7x7dbl_4 = conv_bn(c7, c7, (7, 1), rngs=rngs)
        self.b7x7dbl_5 = conv_bn(c7, 192, (1, 7), rngs=rngs)
        self.pool = conv_bn(in_f, 192, 1, rngs=rngs)
        self.out_features = 4 * 192

    def __call__(self, x):
        b7 = self.b7x7_3(self.b7x7_2(self.b7x7_1(x)))
        dbl = self.b7x7dbl_1(x)
        for conv in (self.b7x7dbl_2, self.b7x7dbl_3, self.b7x7dbl_4, self.b7x7dbl_5):
            dbl = conv(dbl)
        return _cat(self.b1x1(x), b7, dbl, self.pool(_pool_same(x)))

    def units(self):
        return [self.b1x1, self.b7x7_1, self.b7x7_2, self.b7x7_3, self.b7x7dbl_1,
                self.b7x7dbl_2, self.b7x7dbl_3, self.b7x7dbl_4, self.b7x7dbl_5, self.pool]


class InceptionD(_Block):
    """``mixed8`` (17 -> 8): 1x1->3x3/2 | 1x1->1x7->7x1->3x3/2 | max-pool 3x3/2."""

    def __init__(self, in_f: int, *, rngs: nnx.Rngs):
        self.b3x3_1 = conv_bn(in_f, 192, 1, rngs=rngs)
        self.b3x3_2 = conv_bn(192, 320, 3, 2, "VALID", rngs=rngs)
        self.b7x7x3_1 = conv_bn(in_f, 192, 1, rngs=rngs)
        self.b7x7x3_2 = conv_bn(192, 192, (1, 7), rngs=rngs)
        self.b7x7x3_3 = conv_bn(192, 192, (7, 1), rngs=rngs)
        self.b7x7x3_4 = conv_bn(192, 192, 3, 2, "VALID", rngs=rngs)
        self.out_features = 320 + 192 + in_f

    def __call__(self, x):
        b7 = self.b7x7x3_1(x)
        for conv in (self.b7x7x3_2, self.b7x7x3_3, self.b7x7x3_4):
            b7 = conv(b7)
        return _cat(self.b3x3_2(self.b3x3_1(x)), b7, max_pool(x, 3, 2))

    def units(self):
        return [self.b3x3_1, self.b3x3_2, self.b7x7x3_1, self.b7x7x3_2, self.b7x7x3_3,
                self.b7x7x3_4]


class InceptionE(_Block):
    """``mixed9``, ``mixed10`` (8x8): 1x1 | 1x1->(1x3, 3x1) | 1x1->3x3->(1x3, 3x1) |
    avg-pool->1x1."""

    def __init__(self, in_f: int, *, rngs: nnx.Rngs):
        self.b1x1 = conv_bn(in_f, 320, 1, rngs=rngs)
        self.b3x3_1 = conv_bn(in_f, 384, 1, rngs=rngs)
        self.b3x3_2a = conv_bn(384, 384, (1, 3), rngs=rngs)
        self.b3x3_2b = conv_bn(384, 384, (3, 1), rngs=rngs)
        self.b3x3dbl_1 = conv_bn(in_f, 448, 1, rngs=rngs)
        self.b3x3dbl_2 = conv_bn(448, 384, 3, rngs=rngs)
        self.b3x3dbl_3a = conv_bn(384, 384, (1, 3), rngs=rngs)
        self.b3x3dbl_3b = conv_bn(384, 384, (3, 1), rngs=rngs)
        self.pool = conv_bn(in_f, 192, 1, rngs=rngs)
        self.out_features = 320 + 768 + 768 + 192

    def __call__(self, x):
        b3 = self.b3x3_1(x)
        dbl = self.b3x3dbl_2(self.b3x3dbl_1(x))
        return _cat(
            self.b1x1(x),
            self.b3x3_2a(b3), self.b3x3_2b(b3),
            self.b3x3dbl_3a(dbl), self.b3x3dbl_3b(dbl),
            self.pool(_pool_same(x)),
        )

    def units(self):
        return [self.b1x1, self.b3x3_1, self.b3x3_2a, self.b3x3_2b, self.b3x3dbl_1,
                self.b3x3dbl_2, self.b3x3dbl_3a, self.b3x3dbl_3b, self.pool]


class InceptionV3(Classifier):
    """Keras InceptionV3; top-level blocks ``stem``, ``mixed0`` .. ``mixed10`` (Keras' names
    for the blocks' outputs), ``head``."""

    def __init__(self, num_classes: int = 1000, *, in_channels: int = 3, dropout: float = 0.0,
                 rngs: nnx.Rngs):
        self.stem = Stem(in_channels, rngs=rngs)
        f = self.stem.out_features
        for i, pool_features in enumerate((32, 64, 64)):
            setattr(self, f"mixed{i}", InceptionA(f, pool_features, rngs=rngs))
            f = getattr(self, f"mixed{i}").out_features
        self.mixed3 = InceptionB(f, rngs=rngs)
        f = self.mixed3.out_features
        for i, c7 in enumerate((128, 160, 160, 192), start=4):
            setattr(self, f"mixed{i}", InceptionC(f, c7, rngs=rngs))
        self.mixed8 = InceptionD(f, rngs=rngs)
        f = self.mixed8.out_features
        self.mixed9 = InceptionE(f, rngs=rngs)
        self.mixed10 = InceptionE(self.mixed9.out_features, rngs=rngs)
        self.num_features = self.mixed10.out_features
        self.num_classes = num_classes
        # Keras has no dropout; an option for fine-tuning, off by default.
        self.head_dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None
        self.head = make_head(self.num_features, num_classes, rngs=rngs)

    def _blocks(self) -> list[_Block]:
        return [self.stem] + [getattr(self, f"mixed{i}") for i in range(11)]

    def block_names(self) -> list[str]:
        # Spelled out: nnx.merge (under jit, eval_shape) rebuilds modules with their attributes
        # sorted by name, so attribute order is not forward order.
        names = ["stem"] + [f"mixed{i}" for i in range(11)]
        return names + (["head"] if self.head is not None else [])

    def embed(self, x):
        for block in self._blocks():
            x = block(x)
        return global_avg_pool(x)

    def keras_layers(self) -> dict:
        """Keras layer name -> module; the unnamed convolutions numbered in creation order."""
        units = [u for block in self._blocks() for u in block.units()]
        layers = keras_conv_bn_names(units)
        if self.head is not None:
            layers["predictions"] = self.head
        return layers

    def load_weights(self, path: str) -> None:
        """Load a Keras-2 ``.h5`` file of ``keras.applications.InceptionV3``, the official
        ``*_notop.h5`` included (see ``load_keras_h5_by_creation_order``)."""
        load_keras_h5_by_creation_order(self, path)


# --------------------------------------------------------------------------------------------
def keras_conv_bn_names(units: Sequence[ConvBN], start: int = 0) -> dict:
    """``{"conv2d_<i>": conv, "batch_normalization_<i>": bn}`` for unnamed ``conv2d_bn`` units
    listed in creation order, numbered from ``start``."""
    layers = {}
    for i, unit in enumerate(units, start=start):
        layers[keras_auto_name("conv2d", i)] = unit.conv
        layers[keras_auto_name("batch_normalization", i)] = unit.bn
    return layers



@register_model(
    family="inception_v3",
    input_size=(299, 299, 3),
    num_classes=1000,
    preprocessing="tf",
    source="Szegedy et al. 2015, arXiv:1512.00567; keras/src/applications/inception_v3.py",
    min_input_size=(75, 75),
    pretrained={
        "imagenet": PretrainedFile(
            filename="inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
            url=_WEIGHTS_URL + "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
            md5="bcbd6486424b2319ff4ef7d526e38f63",
            size=87_910_968,
        )
    },
    description="InceptionV3 as keras.applications builds it (no auxiliary head)",
)
def inception_v3(num_classes=1000, *, rngs, **kw):
    return InceptionV3(num_classes, rngs=rngs, **kw)
