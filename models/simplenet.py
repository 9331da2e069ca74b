"""SimpleNet (Hasanpour et al. 2016, "Lets keep it simple", arXiv:1608.06037), the 13-layer
CIFAR-10 network.

Layer for layer as the authors' Caffe definition of their 95.32% CIFAR-10 model
(github.com/Coderx7/SimpleNet, ``SimpNet_V1/Benchmarks Results with Models/CIFAR10/
95.32_Normal_Arch_alldrp_Zeropad/train_val.prototxt``): ten 3x3 convolutions
64-128-128-128-128-128-256-256-256-512, each with a bias, then BatchNorm + Caffe ``Scale``
(a full affine BatchNorm here) and ReLU; then ``cccp4`` 1x1 2048,
``cccp5`` 1x1 256 and ``cccp6`` 3x3 256 without BatchNorm; 2x2/2 max-pools after ``conv2_1``,
``conv4`` (before its BatchNorm, as in the prototxt), ``conv4_2``, ``cccp5`` and ``cccp6``;
dropout 0.2 after every layer but the last; then ``ip1``, a linear layer on the 256 features.

At 32x32 the last map is 1x1; for larger inputs it is reduced by a global max-pool (an
addition: the same result at 32x32). Initialisation as the prototxt: Caffe "xavier" (uniform,
variance 1/fan_in) and Gaussian std 0.01 for ``conv2``, ``conv2_1``, ``conv2_2``. BatchNorm
momentum 0.95 (``moving_average_fraction``), epsilon 1e-5 (Caffe's default).

Size for CIFAR-10 (10 classes): 5,489,290 convolution and linear weights and biases (the
paper's "5.48M"), 5,497,226 parameters in all with the BatchNorm scales, offsets (3,968) and
statistics (3,968); 5,493,258 trainable.
"""

from __future__ import annotations

from flax import nnx

from ._registry import register_model
from .layers import Conv, Classifier, global_max_pool, make_head, max_pool

caffe_xavier = nnx.initializers.variance_scaling(1.0, "fan_in", "uniform")
caffe_gaussian = nnx.initializers.normal(0.01)

# (name, filters, kernel, init, ops after the convolution), from train_val.prototxt.
# "pool" is a 2x2/2 max-pool, "bn" BatchNorm + Scale, "drop" dropout.
SIMPLENET_CIFAR = (
    ("conv1", 64, 3, "xavier", ("bn", "relu", "drop")),
    ("conv1_0", 128, 3, "xavier", ("bn", "relu", "drop")),
    ("conv2", 128, 3, "gaussian", ("bn", "relu", "drop")),
    ("conv2_1", 128, 3, "gaussian", ("bn", "relu", "pool", "drop")),
    ("conv2_2", 128, 3, "gaussian", ("bn", "relu", "drop")),
    ("conv3", 128, 3, "xavier", ("bn", "relu", "drop")),
    ("conv4", 256, 3, "xavier", ("pool", "bn", "relu", "drop")),
    ("conv4_1", 256, 3, "xavier", ("bn", "relu", "drop")),
    ("conv4_2", 256, 3, "xavier", ("bn", "relu", "drop", "pool")),
    ("conv4_0", 512, 3, "xavier", ("bn", "relu", "drop")),
    ("cccp4", 2048, 1, "xavier", ("relu", "drop")),
    ("cccp5", 256, 1, "xavier", ("relu", "pool", "drop")),
    ("cccp6", 256, 3, "xavier", ("relu", "pool")),
)
_INITS = {"xavier": caffe_xavier, "gaussian": caffe_gaussian}
_OPS = {"bn", "relu", "pool", "drop"}


class SimpleNetLayer(nnx.Module):
    """A convolution ("same" padding, bias) followed by ``ops`` in the given order."""

    def __init__(self, in_f: int, out_f: int, kernel: int, ops, *, kernel_init=caffe_xavier,
                 dropout: float = 0.2, rngs: nnx.Rngs):
        unknown = set(ops) - _OPS
        if unknown:
            raise ValueError(f"unknown SimpleNet ops {sorted(unknown)}; expected some of "
                             f"{sorted(_OPS)}")
        self.conv = Conv(in_f, out_f, (kernel, kernel), padding="SAME", use_bias=True,
                         kernel_init=kernel_init, rngs=rngs)
        self.bn = (nnx.BatchNorm(out_f, momentum=0.95, epsilon=1e-5, rngs=rngs)
                   if "bn" in ops else None)
        self.drop = nnx.Dropout(dropout, rngs=rngs) if "drop" in ops and dropout > 0 else None
        self.ops = tuple(ops)

    def __call__(self, x):
        x = self.conv(x)
        for op in self.ops:
            if op == "bn":
                x = self.bn(x)
            elif op == "relu":
                x = nnx.relu(x)
            elif op == "pool":
                x = max_pool(x, 2, 2)
            elif self.drop is not None:
                x = self.drop(x)
        return x


class SimpleNet(Classifier):
    """SimpleNet; top-level blocks are its layers, named as in the Caffe prototxt."""

    def __init__(self, num_classes: int = 10, *, layers=SIMPLENET_CIFAR, in_channels: int = 3,
                 dropout: float = 0.2, rngs: nnx.Rngs):
        f = in_channels
        self._names = tuple(name for name, *_ in layers)
        for name, filters, kernel, init, ops in layers:
            setattr(self, name, SimpleNetLayer(f, filters, kernel, ops, kernel_init=_INITS[init],
                                               dropout=dropout, rngs=rngs))
            f = filters
        self.num_features = f
        self.num_classes = num_classes
        self.head = make_head(f, num_classes, rngs=rngs, kernel_init=caffe_xavier)

    def block_names(self) -> list[str]:
        # Spelled out: nnx.merge rebuilds modules with their attributes sorted by name.
        return list(self._names) + (["head"] if self.head is not None else [])

    def embed(self, x):
        if min(x.shape[1:3]) < 32:
            raise ValueError(f"SimpleNet needs inputs of at least 32x32 (five 2x2 max-pools), "
                             f"got {x.shape[1]}x{x.shape[2]}")
        for name in self._names:
            x = getattr(self, name)(x)
        return global_max_pool(x)  # the identity at 32x32, where the map is 1x1


@register_model(
    family="simplenet",
    input_size=(32, 32, 3),
    num_classes=10,
    preprocessing="unit",
    source=("Hasanpour et al. 2016, arXiv:1608.06037; Coderx7/SimpleNet "
            "CIFAR10/95.32_Normal_Arch_alldrp_Zeropad/train_val.prototxt"),
    min_input_size=(32, 32),
    description="SimpleNet, 13 layers, 5.48M weights (CIFAR-10)",
)
def simplenet(num_classes=10, *, rngs, **kw):
    return SimpleNet(num_classes, rngs=rngs, **kw)
