"""ImageNet ResNet-50 (He et al. 2015), layer for layer as ``keras.applications.ResNet50``.

Follows ``keras/src/applications/resnet.py`` (``ResNet`` with ``residual_block_v1``): a 7x7/2
convolution after 3 pixels of zero padding, 1 pixel of zero padding and a 3x3/2 max-pool, four
stages of bottleneck blocks (3, 4, 6, 3) at 64/128/256/512 bottleneck filters (4x as many out),
the stride on the first 1x1 convolution of a stage's first block ("v1.5" puts it on the 3x3;
Keras does not), projection shortcuts only in the first block of each stage. Every convolution
has a bias, every BatchNorm ``epsilon=1.001e-5`` (Keras' momentum 0.99). Global average
pooling, then ``Dense(classes)`` named ``predictions``.

Published size (Keras ``count_params()``, batch-norm statistics included): 25,636,712 with the
1000-class head, 23,587,712 without.
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
from flax import nnx

from ._registry import PretrainedFile, register_model
from .keras_weights import load_keras_h5
from .layers import (
    Conv,
    KERAS_BN_MOMENTUM,
    Classifier,
    conv_bn_act,
    global_avg_pool,
    glorot_uniform,
    make_head,
    max_pool,
)

BN_EPS = 1.001e-5  # keras.applications.resnet, every BatchNormalization
_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"


def _conv(in_f: int, out_f: int, kernel: int, stride: int = 1, padding="VALID", *, rngs):
    # Keras Conv2D defaults: bias on, glorot-uniform kernel, zero bias.
    return Conv(in_f, out_f, (kernel, kernel), strides=stride, padding=padding,
                use_bias=True, kernel_init=glorot_uniform, rngs=rngs)


def _bn(features: int, *, rngs):
    return nnx.BatchNorm(features, epsilon=BN_EPS, momentum=KERAS_BN_MOMENTUM, rngs=rngs)


class Stem(nnx.Module):
    """``conv1_pad``, ``conv1_conv`` 7x7/2, ``conv1_bn``, ReLU, ``pool1_pad``, 3x3/2 max-pool."""

    def __init__(self, in_features: int = 3, features: int = 64, *, rngs: nnx.Rngs):
        self.conv = _conv(in_features, features, 7, 2, padding=((3, 3), (3, 3)), rngs=rngs)
        self.bn = _bn(features, rngs=rngs)

    def __call__(self, x):
        x = conv_bn_act(self.conv, self.bn, x, "relu")
        # Zero padding, not -inf: the same as Keras, and the values are >= 0 after the ReLU.
        x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        return max_pool(x, 3, 2)

    def keras_layers(self) -> dict:
        return {"conv1_conv": self.conv, "conv1_bn": self.bn}


class Bottleneck(nnx.Module):
    """Keras ``residual_block_v1``: 1x1/stride -> 3x3 -> 1x1 (4x filters), plus a shortcut."""

    def __init__(self, in_features: int, filters: int, stride: int, projection: bool,
                 *, rngs: nnx.Rngs):
        out = 4 * filters
        self.shortcut_conv = _conv(in_features, out, 1, stride, rngs=rngs) if projection else None
        self.shortcut_bn = _bn(out, rngs=rngs) if projection else None
        self.conv1 = _conv(in_features, filters, 1, stride, rngs=rngs)
        self.bn1 = _bn(filters, rngs=rngs)
        self.conv2 = _conv(filters, filters, 3, 1, padding="SAME", rngs=rngs)
        self.bn2 = _bn(filters, rngs=rngs)
        self.conv3 = _conv(filters, out, 1, rngs=rngs)
        self.bn3 = _bn(out, rngs=rngs)

    def __call__(self, x):
        # conv_bn_act: one oneDNN call each in eval mode on CPU, else the three layers.
        s = x if self.shortcut_conv is None else conv_bn_act(self.shortcut_conv,
                                                              self.shortcut_bn, x)
        y = conv_bn_act(self.conv1, self.bn1, x, "relu")
        y = conv_bn_act(self.conv2, self.bn2, y, "relu")
        return conv_bn_act(self.conv3, self.bn3, y, "relu", residual=s)

    def keras_layers(self, prefix: str) -> dict:
        layers = {}
        if self.shortcut_conv is not None:
            layers[f"{prefix}_0_conv"] = self.shortcut_conv
            layers[f"{prefix}_0_bn"] = self.shortcut_bn
        for i, (conv, bn) in enumerate(
            [(self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)], start=1
        ):
            layers[f"{prefix}_{i}_conv"] = conv
            layers[f"{prefix}_{i}_bn"] = bn
        return layers


class ResNet(Classifier):
    """Keras ResNet v1 with bottleneck blocks; stages named ``conv2`` .. ``conv5`` as in Keras."""

    BLOCKS = ("stem", "conv2", "conv3", "conv4", "conv5")

    def __init__(
        self,
        blocks: Sequence[int] = (3, 4, 6, 3),
        num_classes: int = 1000,
        *,
        filters: Sequence[int] = (64, 128, 256, 512),
        in_channels: int = 3,
        dropout: float = 0.0,
        rngs: nnx.Rngs,
    ):
        if len(blocks) != 4 or len(filters) != 4:
            raise ValueError(f"ResNet needs 4 stages, got blocks={blocks} filters={filters}")
        self.stem = Stem(in_channels, 64, rngs=rngs)
        in_f = 64
        stages = []
        for i, (n, f) in enumerate(zip(blocks, filters)):
            stage = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                stage.append(Bottleneck(in_f, f, stride, projection=(j == 0), rngs=rngs))
                in_f = 4 * f
            stages.append(nnx.List(stage))
        self.conv2, self.conv3, self.conv4, self.conv5 = stages
        self.num_features = in_f
        self.num_classes = num_classes
        # Keras has no dropout; an option for fine-tuning, off by default.
        self.head_dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None
        self.head = make_head(in_f, num_classes, rngs=rngs)

    def _stages(self):
        return {"conv2": self.conv2, "conv3": self.conv3, "conv4": self.conv4, "conv5": self.conv5}

    def embed(self, x):
        x = self.stem(x)
        for stage in self._stages().values():
            for block in stage:
                x = block(x)
        return global_avg_pool(x)

    def keras_layers(self) -> dict:
        """Keras layer name -> module, in the order Keras builds them."""
        layers = self.stem.keras_layers()
        for name, stage in self._stages().items():
            for j, block in enumerate(stage, start=1):
                layers.update(block.keras_layers(f"{name}_block{j}"))
        if self.head is not None:
            layers["predictions"] = self.head
        return layers

    def load_weights(self, path: str) -> None:
        """Load a ``keras.applications.ResNet50`` ``.h5`` file (Keras-2 layout, ``load_keras_h5``)."""
        load_keras_h5(self, path)


@register_model(
    family="resnet",
    input_size=(224, 224, 3),
    num_classes=1000,
    preprocessing="caffe",
    source="keras/src/applications/resnet.py (ResNet50); "
           "He et al. 2015, arXiv:1512.03385, Table 1",
    min_input_size=(32, 32),
    pretrained={
        "imagenet": PretrainedFile(
            filename="resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
            url=_WEIGHTS_URL + "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
            md5="4d473c1dd8becc155b73f8504c6f6626",
            size=94765736,
        ),
    },
    description="ResNet-50 as keras.applications.ResNet50 (25.6M parameters)",
)
def resnet50(num_classes=1000, *, rngs, **kw):
    return ResNet((3, 4, 6, 3), num_classes, rngs=rngs, **kw)
