"""Inception-ResNet-v2 (Szegedy et al. 2016, arXiv:1602.07261), layer for layer as
``keras.applications.InceptionResNetV2`` (``keras/src/applications/inception_resnet_v2.py``).

Keras' variant of the paper's network: the InceptionV3 stem (not the paper's Figure 3 stem),
``mixed_5b`` (35x35, 320 channels), ten ``block35`` (Inception-ResNet-A, residual scale 0.17),
``mixed_6a`` (reduction to 17x17, 1088), twenty ``block17`` (B, scale 0.1), ``mixed_7a``
(reduction to 8x8, 2080), ten ``block8`` (C, scale 0.2; the last one scale 1.0 with no ReLU),
then ``conv_7b`` (1x1, 1536), global average pooling and ``Dense(classes)`` (``predictions``).

Each residual block concatenates its towers, projects them back to the input width with a
1x1 convolution that has a bias and no BatchNorm (``<block>_conv``), and adds
``x + scale * up`` before the ReLU. Every other convolution is Keras' ``conv2d_bn`` (bias-free,
BatchNorm ``scale=False``, epsilon 1e-3), unnamed in Keras, so ``conv2d_<i>`` /
``batch_normalization_<i>`` in creation order (see ``models.inception_v3``).

Published size (Keras ``count_params()``, batch-norm statistics included): 55,873,736 with the
1000-class head, 54,336,736 without.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax.numpy as jnp
from flax import nnx

from ._registry import PretrainedFile, register_model
from .inception_v3 import Stem, conv_bn, keras_conv_bn_names
from .keras_weights import load_keras_h5_by_creation_order
from .layers import (
    Conv,
    Classifier,
    ConvBN,
    avg_pool,
    glorot_uniform,
    global_avg_pool,
    make_head,
    max_pool,
)

_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/inception_resnet_v2/"

# A tower is a sequence of conv_bn units (filters, kernel[, stride, padding]); Keras' creation
# order is tower by tower, unit by unit. From inception_resnet_block() and InceptionResNetV2().
BLOCK35_TOWERS = (((32, 1),), ((32, 1), (32, 3)), ((32, 1), (48, 3), (64, 3)))
BLOCK17_TOWERS = (((192, 1),), ((128, 1), (160, (1, 7)), (192, (7, 1))))
BLOCK8_TOWERS = (((192, 1),), ((192, 1), (224, (1, 3)), (256, (3, 1))))
MIXED_5B_TOWERS = (((96, 1),), ((48, 1), (64, 5)), ((64, 1), (96, 3), (96, 3)))
MIXED_6A_TOWERS = (((384, 3, 2, "VALID"),), ((256, 1), (256, 3), (384, 3, 2, "VALID")))
MIXED_7A_TOWERS = (
    ((256, 1), (384, 3, 2, "VALID")),
    ((256, 1), (288, 3, 2, "VALID")),
    ((256, 1), (288, 3), (320, 3, 2, "VALID")),
)


class Towers(nnx.Module):
    """Parallel towers of ``conv_bn`` units and an optional pooling branch, concatenated.

    Args:
      towers: per tower, its units as ``(filters, kernel)`` or
        ``(filters, kernel, stride, padding)``.
      pool: ``None`` or ``(kind, window, stride, padding)``, kind ``"avg"`` (padding not
        counted, as Keras) or ``"max"``; its output is concatenated last.
      pool_features: a ``conv_bn`` 1x1 after the pool (created after the towers), or ``None``.
      unit: the factory for units, ``conv_bn``'s signature.
    """

    def __init__(self, in_f: int, towers: Sequence[Sequence[tuple]], *, pool=None,
                 pool_features: int | None = None, unit: Callable = conv_bn, rngs: nnx.Rngs):
        built = []
        out = 0
        for spec in towers:
            tower, f = [], in_f
            for filters, kernel, *rest in spec:
                stride, padding = rest if rest else (1, "SAME")
                tower.append(unit(f, filters, kernel, stride, padding, rngs=rngs))
                f = filters
            built.append(nnx.List(tower))
            out += f
        self.towers = nnx.List(built)
        self.pool = pool
        with_conv = pool is not None and pool_features is not None
        self.pool_conv = unit(in_f, pool_features, 1, 1, "SAME", rngs=rngs) if with_conv else None
        if pool is not None:
            out += pool_features if with_conv else in_f
        self.out_features = out

    def __call__(self, x):
        ys = []
        for tower in self.towers:
            y = x
            for u in tower:
                y = u(y)
            ys.append(y)
        if self.pool is not None:
            kind, window, stride, padding = self.pool
            if kind == "avg":
                p = avg_pool(x, window, stride, padding, count_include_pad=False)
            else:
                p = max_pool(x, window, stride, padding)
            ys.append(self.pool_conv(p) if self.pool_conv is not None else p)
        return jnp.concatenate(ys, axis=-1)

    def units(self) -> list[ConvBN]:
        us = [u for tower in self.towers for u in tower]
        return us + ([self.pool_conv] if self.pool_conv is not None else [])


class InceptionResNetBlock(nnx.Module):
    """``x + scale * conv1x1(concat(towers(x)))``, then the activation (``None``: linear).

    The 1x1 "up" convolution has a bias and no BatchNorm and restores the input width.
    """

    def __init__(self, in_f: int, towers: Sequence[Sequence[tuple]], scale: float,
                 activation: Callable | None = nnx.relu, *, unit: Callable = conv_bn,
                 up_init=glorot_uniform, rngs: nnx.Rngs):
        self.branches = Towers(in_f, towers, unit=unit, rngs=rngs)
        self.up = Conv(self.branches.out_features, in_f, (1, 1), use_bias=True,
                       kernel_init=up_init, rngs=rngs)
        self.scale = scale
        self.activation = activation
        self.out_features = in_f

    def __call__(self, x):
        x = x + self.scale * self.up(self.branches(x))
        return self.activation(x) if self.activation is not None else x

    def units(self) -> list[ConvBN]:
        return self.branches.units()


class InceptionResNetV2(Classifier):
    """Keras InceptionResNetV2; top-level blocks named as Keras names their outputs:
    ``stem``, ``mixed_5b``, ``block35_1`` .. ``block35_10``, ``mixed_6a``, ``block17_1`` ..
    ``block17_20``, ``mixed_7a``, ``block8_1`` .. ``block8_10``, ``conv_7b``, ``head``."""

    def __init__(self, num_classes: int = 1000, *, in_channels: int = 3, dropout: float = 0.0,
                 rngs: nnx.Rngs):
        self.stem = Stem(in_channels, rngs=rngs)
        self.mixed_5b = Towers(self.stem.out_features, MIXED_5B_TOWERS,
                               pool=("avg", 3, 1, "SAME"), pool_features=64, rngs=rngs)
        f = self.mixed_5b.out_features
        self._add_blocks("block35", 10, f, BLOCK35_TOWERS, 0.17, rngs)
        self.mixed_6a = Towers(f, MIXED_6A_TOWERS, pool=("max", 3, 2, "VALID"), rngs=rngs)
        f = self.mixed_6a.out_features
        self._add_blocks("block17", 20, f, BLOCK17_TOWERS, 0.1, rngs)
        self.mixed_7a = Towers(f, MIXED_7A_TOWERS, pool=("max", 3, 2, "VALID"), rngs=rngs)
        f = self.mixed_7a.out_features
        self._add_blocks("block8", 10, f, BLOCK8_TOWERS, 0.2, rngs)
        self.conv_7b = conv_bn(f, 1536, 1, rngs=rngs)
        self.num_features = 1536
        self.num_classes = num_classes
        # Keras has no dropout; an option for fine-tuning, off by default.
        self.head_dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None
        self.head = make_head(self.num_features, num_classes, rngs=rngs)

    def _add_blocks(self, kind: str, n: int, f: int, towers, scale: float, rngs):
        for i in range(1, n + 1):
            last = kind == "block8" and i == n  # Keras: scale 1.0, no activation
            block = InceptionResNetBlock(f, towers, 1.0 if last else scale,
                                         None if last else nnx.relu, rngs=rngs)
            setattr(self, f"{kind}_{i}", block)

    def _blocks(self) -> list[tuple[str, nnx.Module]]:
        names = (["stem", "mixed_5b"] + [f"block35_{i}" for i in range(1, 11)] + ["mixed_6a"]
                 + [f"block17_{i}" for i in range(1, 21)] + ["mixed_7a"]
                 + [f"block8_{i}" for i in range(1, 11)])
        return [(n, getattr(self, n)) for n in names]

    def block_names(self) -> list[str]:
        # Spelled out: nnx.merge rebuilds modules with their attributes sorted by name.
        names = [n for n, _ in self._blocks()] + ["conv_7b"]
        return names + (["head"] if self.head is not None else [])

    def embed(self, x):
        for _, block in self._blocks():
            x = block(x)
        return global_avg_pool(self.conv_7b(x))

    def keras_layers(self) -> dict:
        """Keras layer name -> module; the unnamed convolutions numbered in creation order."""
        layers, i = {}, 0
        for name, block in self._blocks():
            units = block.units()
            layers.update(keras_conv_bn_names(units, start=i))
            i += len(units)
            if isinstance(block, InceptionResNetBlock):
                layers[f"{name}_conv"] = block.up
        layers["conv_7b"] = self.conv_7b.conv
        layers["conv_7b_bn"] = self.conv_7b.bn
        if self.head is not None:
            layers["predictions"] = self.head
        return layers

    def load_weights(self, path: str) -> None:
        """Load a Keras-2 ``.h5`` file of ``keras.applications.InceptionResNetV2``, the official
        ``*_notop.h5`` included (see ``keras_weights.load_keras_h5_by_creation_order``)."""
        load_keras_h5_by_creation_order(self, path)


@register_model(
    family="inception_resnet_v2",
    input_size=(299, 299, 3),
    num_classes=1000,
    preprocessing="tf",
    source="Szegedy et al. 2016, arXiv:1602.07261; keras/src/applications/inception_resnet_v2.py",
    min_input_size=(75, 75),
    pretrained={
        "imagenet": PretrainedFile(
            filename="inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
            url=_WEIGHTS_URL + "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
            md5="d19885ff4a710c122648d3b5c3b684e4",
            size=219_055_592,
        )
    },
    description="InceptionResNetV2 as keras.applications builds it",
)
def inception_resnet_v2(num_classes=1000, *, rngs, **kw):
    return InceptionResNetV2(num_classes, rngs=rngs, **kw)
