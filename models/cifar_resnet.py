"""CIFAR ResNets (He et al. 2015, "Deep Residual Learning", section 4.2).

6n+2 layers: a 3x3 conv with 16 filters, three stages of n basic blocks at 16/32/64 filters
(stride 2 at the first block of stages 2 and 3), global average pooling, a linear head.
Shortcuts are option A: identity, with stride-2 subsampling and zero-padded channels where
the shape changes, so they add no parameters. Published sizes: ResNet-20/32/44/56/110 have
0.27M/0.46M/0.66M/0.85M/1.7M parameters (paper, Table 6).
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
from flax import nnx

from ._registry import register_model
from .layers import Classifier, ConvBN, conv_bn_act, global_avg_pool, he_normal, make_head


def _shortcut_a(x, out_features: int, stride: int):
    """Option A: subsample spatially, zero-pad channels (equally on both sides)."""
    if stride > 1:
        x = x[:, ::stride, ::stride, :]
    extra = out_features - x.shape[-1]
    if extra > 0:
        x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
    return x


class BasicBlock(nnx.Module):
    def __init__(self, in_features: int, out_features: int, stride: int, shortcut: str,
                 *, rngs: nnx.Rngs):
        self.conv1 = ConvBN(in_features, out_features, 3, stride, rngs=rngs)
        self.conv2 = ConvBN(out_features, out_features, 3, 1, activation=None, rngs=rngs)
        self.stride = stride
        self.out_features = out_features
        self.projection = None
        if shortcut == "B" and (stride != 1 or in_features != out_features):
            self.projection = ConvBN(in_features, out_features, 1, stride, activation=None,
                                     rngs=rngs)

    def __call__(self, x):
        y = self.conv1(x)
        if self.projection is not None:
            s = self.projection(x)
        else:
            s = _shortcut_a(x, self.out_features, self.stride)
        # relu(bn(conv(y)) + s): one pass forward and backward in train mode on CPU.
        return conv_bn_act(self.conv2.conv, self.conv2.bn, y, "relu", residual=s)


class CifarResNet(Classifier):
    """ResNet-(6n+2) for small images."""

    BLOCKS = ("stem", "stage1", "stage2", "stage3")

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        *,
        widths: Sequence[int] = (16, 32, 64),
        in_channels: int = 3,
        shortcut: str = "A",
        dropout: float = 0.0,
        rngs: nnx.Rngs,
    ):
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, ...), got {depth}")
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        n = (depth - 2) // 6
        self.stem = ConvBN(in_channels, widths[0], 3, 1, rngs=rngs)
        stages = []
        in_f = widths[0]
        for i, w in enumerate(widths):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_f, w, stride, shortcut, rngs=rngs))
                in_f = w
            stages.append(nnx.List(blocks))
        self.stage1, self.stage2, self.stage3 = stages
        self.num_features = in_f
        self.num_classes = num_classes
        self.head_dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None
        self.head = make_head(in_f, num_classes, rngs=rngs, kernel_init=he_normal)

    def embed(self, x):
        x = self.stem(x)
        for stage in (self.stage1, self.stage2, self.stage3):
            for block in stage:
                x = block(x)
        return global_avg_pool(x)


def _info(depth: int) -> dict:
    return dict(
        family="cifar_resnet",
        input_size=(32, 32, 3),
        num_classes=10,
        preprocessing="unit",
        source="He et al. 2015, arXiv:1512.03385, sec. 4.2 (option A shortcuts)",
        description=f"CIFAR ResNet-{depth}",
    )


@register_model(**_info(20))
def resnet20(num_classes=10, *, rngs, **kw):
    return CifarResNet(20, num_classes, rngs=rngs, **kw)


@register_model(**_info(32))
def resnet32(num_classes=10, *, rngs, **kw):
    return CifarResNet(32, num_classes, rngs=rngs, **kw)


@register_model(**_info(44))
def resnet44(num_classes=10, *, rngs, **kw):
    return CifarResNet(44, num_classes, rngs=rngs, **kw)


@register_model(**_info(56))
def resnet56(num_classes=10, *, rngs, **kw):
    return CifarResNet(56, num_classes, rngs=rngs, **kw)


@register_model(**_info(110))
def resnet110(num_classes=10, *, rngs, **kw):
    return CifarResNet(110, num_classes, rngs=rngs, **kw)
