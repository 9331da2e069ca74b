"""MobileNetV2 (Sandler et al. 2018), layer for layer as ``keras.applications.MobileNetV2``.

Follows ``keras/src/applications/mobilenet_v2.py``: ``Conv1`` 3x3/2 'same' -> BN -> ReLU6, 17
inverted residual blocks (expansion 1x1 -> 3x3 depthwise -> linear 1x1 projection, residual
when the shape is kept), ``Conv_1`` 1x1 to 1280 -> BN -> ReLU6, global average pooling, and
``Dense(classes)`` named ``predictions``. No convolution has a bias; every BatchNorm has
``epsilon=1e-3, momentum=0.999``. A stride-2 depthwise conv is 'valid' after Keras'
``correct_pad`` zero padding (one pixel less on the top/left for an even input size).
The width multiplier ``alpha`` scales every layer (rounded to multiples of 8).

Published size (Keras ``count_params()``, batch-norm statistics included) at ``alpha=1.0``:
3,538,984 with the 1000-class head, 2,257,984 without.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from ._registry import PretrainedFile, register_model
from .keras_weights import load_keras_h5
from .layers import (Conv, Classifier, DepthwiseConv, conv_bn_act, glorot_uniform,
                     global_avg_pool, make_head)

BN_EPS = 1e-3
BN_MOMENTUM = 0.999  # keras.applications.mobilenet_v2, every BatchNormalization
_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"

# (expansion, output filters at alpha=1, stride) of the 17 inverted residual blocks, grouped
# into the paper's stages (Table 2: t, c, n, s).
STAGES = (
    ((1, 16, 1),),
    ((6, 24, 2), (6, 24, 1)),
    ((6, 32, 2), (6, 32, 1), (6, 32, 1)),
    ((6, 64, 2), (6, 64, 1), (6, 64, 1), (6, 64, 1)),
    ((6, 96, 1), (6, 96, 1), (6, 96, 1)),
    ((6, 160, 2), (6, 160, 1), (6, 160, 1)),
    ((6, 320, 1),),
)


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Keras' ``_make_divisible``: round to a multiple of ``divisor``, never down by > 10%."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def correct_pad(x, kernel_size: int = 3) -> tuple[tuple[int, int], tuple[int, int]]:
    """Keras ``imagenet_utils.correct_pad``: the zero padding before a stride-2 'valid' conv."""
    h, w = x.shape[1], x.shape[2]
    k = kernel_size // 2
    return (k - (1 - h % 2), k), (k - (1 - w % 2), k)


def _conv1x1(in_f: int, out_f: int, *, rngs):
    return Conv(in_f, out_f, (1, 1), use_bias=False, kernel_init=glorot_uniform, rngs=rngs)


def _bn(features: int, *, rngs, momentum: float = BN_MOMENTUM):
    return nnx.BatchNorm(features, epsilon=BN_EPS, momentum=momentum, rngs=rngs)


class ConvBNReLU6(nnx.Module):
    """A bias-free conv, BN, ReLU6: ``Conv1``/``bn_Conv1`` and ``Conv_1``/``Conv_1_bn``."""

    def __init__(self, in_f: int, out_f: int, kernel: int, stride: int, *, rngs: nnx.Rngs,
                 bn_momentum: float = BN_MOMENTUM):
        self.conv = Conv(in_f, out_f, (kernel, kernel), strides=stride, padding="SAME",
                         use_bias=False, kernel_init=glorot_uniform, rngs=rngs)
        self.bn = _bn(out_f, rngs=rngs, momentum=bn_momentum)

    def __call__(self, x):
        return conv_bn_act(self.conv, self.bn, x, "relu6")


class InvertedResidual(nnx.Module):
    """Keras ``_inverted_res_block``: [1x1 expand, BN, ReLU6], 3x3 depthwise, BN, ReLU6,
    1x1 project, BN, plus the input when the shape is kept."""

    def __init__(self, in_f: int, out_f: int, expansion: int, stride: int, *, rngs: nnx.Rngs,
                 bn_momentum: float = BN_MOMENTUM):
        hidden = in_f * expansion
        bn = dict(rngs=rngs, momentum=bn_momentum)
        self.expand = _conv1x1(in_f, hidden, rngs=rngs) if expansion != 1 else None
        self.expand_bn = _bn(hidden, **bn) if expansion != 1 else None
        self.depthwise = DepthwiseConv(hidden, 1, 3, stride, "SAME" if stride == 1 else "VALID",
                                       use_bias=False, rngs=rngs)
        self.depthwise_bn = _bn(hidden, **bn)
        self.project = _conv1x1(hidden, out_f, rngs=rngs)
        self.project_bn = _bn(out_f, **bn)
        self.stride = stride
        self.residual = in_f == out_f and stride == 1

    def __call__(self, x):
        y = x
        if self.expand is not None:  # conv_bn_act: one oneDNN call in eval mode on CPU
            y = conv_bn_act(self.expand, self.expand_bn, y, "relu6")
        if self.stride == 2:
            y = jnp.pad(y, ((0, 0), *correct_pad(y, 3), (0, 0)))
        y = conv_bn_act(self.depthwise, self.depthwise_bn, y, "relu6")
        y = conv_bn_act(self.project, self.project_bn, y)
        return x + y if self.residual else y

    def keras_layers(self, block_id: int) -> dict:
        # Keras names block 0 (the one without expansion) "expanded_conv_", the rest "block_<i>_".
        prefix = f"block_{block_id}_" if block_id else "expanded_conv_"
        layers = {}
        if self.expand is not None:
            layers[f"{prefix}expand"] = self.expand
            layers[f"{prefix}expand_BN"] = self.expand_bn
        layers[f"{prefix}depthwise"] = self.depthwise
        layers[f"{prefix}depthwise_BN"] = self.depthwise_bn
        layers[f"{prefix}project"] = self.project
        layers[f"{prefix}project_BN"] = self.project_bn
        return layers


class MobileNetV2(Classifier):
    """Keras MobileNetV2; blocks grouped by stage (``stage1`` .. ``stage7``) for freezing."""

    BLOCKS = ("stem", "stage1", "stage2", "stage3", "stage4", "stage5", "stage6", "stage7",
              "top_conv")

    def __init__(self, num_classes: int = 1000, *, alpha: float = 1.0, in_channels: int = 3,
                 dropout: float = 0.0, bn_momentum: float = BN_MOMENTUM, rngs: nnx.Rngs):
        """``bn_momentum``: Keras' 0.999 by default; its moving statistics need thousands of
        steps to forget their initial values, so short runs from scratch evaluate with
        unconverged statistics (validation at chance while training accuracy rises): use
        0.99 or 0.9 there."""
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        if not 0.0 <= bn_momentum < 1.0:
            raise ValueError(f"bn_momentum must be in [0, 1), got {bn_momentum}")
        in_f = make_divisible(32 * alpha, 8)
        self.stem = ConvBNReLU6(in_channels, in_f, 3, 2, rngs=rngs, bn_momentum=bn_momentum)
        stages = []
        for stage in STAGES:
            blocks = []
            for expansion, filters, stride in stage:
                out_f = make_divisible(int(filters * alpha), 8)
                blocks.append(InvertedResidual(in_f, out_f, expansion, stride, rngs=rngs,
                                               bn_momentum=bn_momentum))
                in_f = out_f
            stages.append(nnx.List(blocks))
        (self.stage1, self.stage2, self.stage3, self.stage4, self.stage5, self.stage6,
         self.stage7) = stages
        last = make_divisible(1280 * alpha, 8) if alpha > 1.0 else 1280
        self.top_conv = ConvBNReLU6(in_f, last, 1, 1, rngs=rngs, bn_momentum=bn_momentum)
        self.alpha = alpha
        self.num_features = last
        self.num_classes = num_classes
        # Keras has no dropout; an option for fine-tuning, off by default.
        self.head_dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None
        self.head = make_head(last, num_classes, rngs=rngs)

    def _stages(self):
        return (self.stage1, self.stage2, self.stage3, self.stage4, self.stage5, self.stage6,
                self.stage7)

    def embed(self, x):
        x = self.stem(x)
        for stage in self._stages():
            for block in stage:
                x = block(x)
        return global_avg_pool(self.top_conv(x))

    def keras_layers(self) -> dict:
        """Keras layer name -> module, in the order Keras builds them."""
        layers = {"Conv1": self.stem.conv, "bn_Conv1": self.stem.bn}
        blocks = [b for stage in self._stages() for b in stage]
        for i, block in enumerate(blocks):
            layers.update(block.keras_layers(i))
        layers["Conv_1"] = self.top_conv.conv
        layers["Conv_1_bn"] = self.top_conv.bn
        if self.head is not None:
            layers["predictions"] = self.head
        return layers

    def load_weights(self, path: str) -> None:
        """Load a Keras-2 ``.h5`` file of ``keras.applications.MobileNetV2`` with the same
        ``alpha`` (see ``load_keras_h5``)."""
        load_keras_h5(self, path)


_NOTOP = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"


@register_model(
    family="mobilenet_v2",
    input_size=(224, 224, 3),
    num_classes=1000,
    preprocessing="tf",
    source="keras/src/applications/mobilenet_v2.py; Sandler et al. 2018, arXiv:1801.04381, "
           "Table 2",
    min_input_size=(32, 32),
    pretrained={
        "imagenet": PretrainedFile(
            filename=_NOTOP,
            url=_WEIGHTS_URL + _NOTOP,
            sha256="f8aff69536bd77a692c594f559c798c19bf7f3f36668fc9fa00b21c6aab4797c",
            size=9406464,
        ),
    },
    description="MobileNetV2 (alpha=1.0) as keras.applications.MobileNetV2 (3.5M parameters)",
)
def mobilenet_v2(num_classes=1000, *, rngs, alpha: float = 1.0, **kw):
    """MobileNetV2; ``alpha`` the width multiplier (the ImageNet file is for 1.0 only)."""
    return MobileNetV2(num_classes, alpha=alpha, rngs=rngs, **kw)
