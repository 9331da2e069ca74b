"""Xception (Chollet 2017, arXiv:1610.02357), layer for layer as ``keras.applications.Xception``
(``keras/src/applications/xception.py``).

Entry flow: ``block1`` (3x3/2 conv 32, 3x3 conv 64, both "valid"), then ``block2``-``block4``:
two 3x3 separable convolutions (128, 256, 728 filters), a 3x3/2 "same" max-pool, plus a
1x1/2 convolution + BatchNorm shortcut; ``block2`` has no ReLU before its first separable conv.
Middle flow: ``block5``-``block12``, three ReLU -> separable conv 728 -> BatchNorm with an
identity shortcut. Exit flow: ``block13`` (728, 1024, shortcut as in the entry flow),
``block14`` (separable 1536 and 2048, each followed by BatchNorm and ReLU), global average
pooling and ``Dense(classes)`` (``predictions``).

Every convolution is bias-free and followed by a full BatchNorm (Keras' defaults: epsilon 1e-3,
momentum 0.99, with scale). The four shortcut convolutions are unnamed in Keras: ``conv2d``,
``conv2d_1``, ... and ``batch_normalization``, ... in creation order (see
``models.inception_v3``); every other layer is named ``block<b>_...``.

Published size (Keras ``count_params()``, batch-norm statistics included): 22,910,480 with the
1000-class head, 20,861,480 without.
"""

from __future__ import annotations

from flax import nnx

from ._registry import PretrainedFile, register_model
from .keras_weights import keras_auto_name, load_keras_h5_by_creation_order
from .keras_weights import SeparableConv
from .layers import (
    Conv,
    KERAS_BN_EPS,
    KERAS_BN_MOMENTUM,
    Classifier,
    glorot_uniform,
    global_avg_pool,
    make_head,
    max_pool,
)

_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/xception/"


def _bn(features: int, *, rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(features, epsilon=KERAS_BN_EPS, momentum=KERAS_BN_MOMENTUM, rngs=rngs)


class SepConvBN(nnx.Module):
    """``SeparableConv2D(3x3, "same", use_bias=False)`` -> BatchNorm."""

    def __init__(self, in_f: int, out_f: int, *, rngs: nnx.Rngs):
        self.conv = SeparableConv(in_f, out_f, 3, 1, "SAME", use_bias=False,
                                  kernel_init=glorot_uniform, rngs=rngs)
        self.bn = _bn(out_f, rngs=rngs)
        self.out_features = out_f

    def __call__(self, x):
        return self.bn(self.conv(x))


class Stem(nnx.Module):
    """``block1``: 3x3/2 conv 32 -> BN -> ReLU -> 3x3 conv 64 -> BN -> ReLU, both "valid"."""

    def __init__(self, in_f: int = 3, *, rngs: nnx.Rngs):
        self.conv1 = Conv(in_f, 32, (3, 3), strides=2, padding="VALID", use_bias=False,
                          kernel_init=glorot_uniform, rngs=rngs)
        self.bn1 = _bn(32, rngs=rngs)
        self.conv2 = Conv(32, 64, (3, 3), padding="VALID", use_bias=False,
                          kernel_init=glorot_uniform, rngs=rngs)
        self.bn2 = _bn(64, rngs=rngs)
        self.out_features = 64

    def __call__(self, x):
        x = nnx.relu(self.bn1(self.conv1(x)))
        return nnx.relu(self.bn2(self.conv2(x)))

    def keras_layers(self, prefix: str) -> dict:
        return {f"{prefix}_conv1": self.conv1, f"{prefix}_conv1_bn": self.bn1,
                f"{prefix}_conv2": self.conv2, f"{prefix}_conv2_bn": self.bn2}


class DownBlock(nnx.Module):
    """Entry/exit-flow block: [ReLU] sep -> BN -> ReLU -> sep -> BN -> max-pool 3x3/2, plus a
    1x1/2 conv + BN shortcut taken before the first ReLU."""

    def __init__(self, in_f: int, mid_f: int, out_f: int, first_relu: bool = True,
                 *, rngs: nnx.Rngs):
        # Keras creates the shortcut first: it takes the lower auto-name number.
        self.shortcut_conv = Conv(in_f, out_f, (1, 1), strides=2, padding="SAME",
                                  use_bias=False, kernel_init=glorot_uniform, rngs=rngs)
        self.shortcut_bn = _bn(out_f, rngs=rngs)
        self.sep1 = SepConvBN(in_f, mid_f, rngs=rngs)
        self.sep2 = SepConvBN(mid_f, out_f, rngs=rngs)
        self.first_relu = first_relu
        self.out_features = out_f

    def __call__(self, x):
        s = self.shortcut_bn(self.shortcut_conv(x))
        y = nnx.relu(x) if self.first_relu else x
        y = self.sep2(nnx.relu(self.sep1(y)))
        return max_pool(y, 3, 2, "SAME") + s

    def keras_layers(self, prefix: str, shortcut_index: int) -> dict:
        return {
            keras_auto_name("conv2d", shortcut_index): self.shortcut_conv,
            keras_auto_name("batch_normalization", shortcut_index): self.shortcut_bn,
            **_sep_layers(prefix, [self.sep1, self.sep2]),
        }


class MiddleBlock(nnx.Module):
    """Middle-flow block: 3 x (ReLU -> sep 728 -> BN), plus the identity."""

    def __init__(self, features: int = 728, *, rngs: nnx.Rngs):
        self.sep1 = SepConvBN(features, features, rngs=rngs)
        self.sep2 = SepConvBN(features, features, rngs=rngs)
        self.sep3 = SepConvBN(features, features, rngs=rngs)
        self.out_features = features

    def __call__(self, x):
        y = x
        for sep in (self.sep1, self.sep2, self.sep3):
            y = sep(nnx.relu(y))
        return y + x

    def keras_layers(self, prefix: str) -> dict:
        return _sep_layers(prefix, [self.sep1, self.sep2, self.sep3])


class ExitBlock(nnx.Module):
    """``block14``: sep 1536 -> BN -> ReLU -> sep 2048 -> BN -> ReLU."""

    def __init__(self, in_f: int = 1024, *, rngs: nnx.Rngs):
        self.sep1 = SepConvBN(in_f, 1536, rngs=rngs)
        self.sep2 = SepConvBN(1536, 2048, rngs=rngs)
        self.out_features = 2048

    def __call__(self, x):
        return nnx.relu(self.sep2(nnx.relu(self.sep1(x))))

    def keras_layers(self, prefix: str) -> dict:
        return _sep_layers(prefix, [self.sep1, self.sep2])


def _sep_layers(prefix: str, seps) -> dict:
    layers = {}
    for k, sep in enumerate(seps, start=1):
        layers[f"{prefix}_sepconv{k}"] = sep.conv
        layers[f"{prefix}_sepconv{k}_bn"] = sep.bn
    return layers


class Xception(Classifier):
    """Keras Xception; top-level blocks ``block1`` .. ``block14`` (Keras' name prefixes),
    ``head``."""

    def __init__(self, num_classes: int = 1000, *, in_channels: int = 3, dropout: float = 0.0,
                 rngs: nnx.Rngs):
        self.block1 = Stem(in_channels, rngs=rngs)
        self.block2 = DownBlock(64, 128, 128, first_relu=False, rngs=rngs)
        self.block3 = DownBlock(128, 256, 256, rngs=rngs)
        self.block4 = DownBlock(256, 728, 728, rngs=rngs)
        for b in range(5, 13):
            setattr(self, f"block{b}", MiddleBlock(728, rngs=rngs))
        self.block13 = DownBlock(728, 728, 1024, rngs=rngs)
        self.block14 = ExitBlock(1024, rngs=rngs)
        self.num_features = 2048
        self.num_classes = num_classes
        # Keras has no dropout; an option for fine-tuning, off by default.
        self.head_dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None
        self.head = make_head(self.num_features, num_classes, rngs=rngs)

    def block_names(self) -> list[str]:
        # Spelled out: nnx.merge rebuilds modules with their attributes sorted by name.
        return [f"block{b}" for b in range(1, 15)] + (["head"] if self.head is not None else [])

    def embed(self, x):
        for b in range(1, 15):
            x = getattr(self, f"block{b}")(x)
        return global_avg_pool(x)

    def keras_layers(self) -> dict:
        """Keras layer name -> module (the shortcut convolutions numbered in creation order)."""
        layers = self.block1.keras_layers("block1")
        shortcut = 0
        for b in range(2, 15):
            block = getattr(self, f"block{b}")
            if isinstance(block, DownBlock):
                layers.update(block.keras_layers(f"block{b}", shortcut))
                shortcut += 1
            else:
                layers.update(block.keras_layers(f"block{b}"))
        if self.head is not None:
            layers["predictions"] = self.head
        return layers

    def load_weights(self, path: str) -> None:
        """Load a Keras-2 ``.h5`` file of ``keras.applications.Xception``, the official
        ``*_notop.h5`` included (see ``keras_weights.load_keras_h5_by_creation_order``)."""
        load_keras_h5_by_creation_order(self, path)


@register_model(
    family="xception",
    input_size=(299, 299, 3),
    num_classes=1000,
    preprocessing="tf",
    source="Chollet 2017, arXiv:1610.02357; keras/src/applications/xception.py",
    min_input_size=(71, 71),
    pretrained={
        "imagenet": PretrainedFile(
            filename="xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
            url=_WEIGHTS_URL + "xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
            md5="b0042744bf5b25fce3cb969f33bebb97",
            size=83_683_744,
        )
    },
    description="Xception as keras.applications builds it",
)
def xception(num_classes=1000, *, rngs, **kw):
    return Xception(num_classes, rngs=rngs, **kw)
