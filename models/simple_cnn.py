"""Small plain CNNs from the reports: conv/pool stacks with a GAP or flatten head.

One configurable ``SimpleCNN``; the presets are the models reports 000, 002 and 003 trained
from scratch. Defaults follow Keras, which the reports used: ``glorot_uniform`` kernels, zero
biases, ReLU, 2x2 max pooling with 'valid' padding (floor), ``Dropout`` after the activation.
"""

from __future__ import annotations

from typing import Sequence

import jax
from flax import nnx

from ._registry import register_model
from .layers import (
    Conv,
    KERAS_BN_EPS,
    KERAS_BN_MOMENTUM,
    Classifier,
    global_avg_pool,
    glorot_uniform,
    he_normal,
    make_head,
    max_pool,
)

_INITS = {"glorot": glorot_uniform, "he": he_normal}
_HEADS = ("gap", "flatten")


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = tuple(size)[:2]
    return int(h), int(w)


class ConvBlock(nnx.Module):
    """Conv -> (BatchNorm) -> ReLU -> (Dropout) -> (2x2 max pool).

    Dropout before pooling, as report 002's Keras summaries list the layers.
    """

    def __init__(self, in_features: int, out_features: int, kernel_size: int, padding: str,
                 *, pool: bool, batch_norm: bool, dropout: float, kernel_init,
                 rngs: nnx.Rngs):
        self.conv = Conv(
            in_features, out_features, (kernel_size, kernel_size), padding=padding,
            use_bias=not batch_norm,  # a bias before BatchNorm is cancelled by its mean
            kernel_init=kernel_init, rngs=rngs,
        )
        self.bn = (
            nnx.BatchNorm(out_features, epsilon=KERAS_BN_EPS, momentum=KERAS_BN_MOMENTUM,
                          rngs=rngs)
            if batch_norm else None
        )
        self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None
        self.pool = pool

    def __call__(self, x):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        x = nnx.relu(x)
        if self.dropout is not None:
            x = self.dropout(x)
        return max_pool(x, 2) if self.pool else x


class SimpleCNN(Classifier):
    """A stack of conv blocks, then GAP or flatten, optional hidden dense layers, a linear head.

    Blocks are named ``conv1..convN``, hidden dense layers ``fc1..fcM`` (for ``block_names``).
    The embedding is the GAP output, or for a flatten head the last hidden layer's output
    (the flattened map when there is none).

    Args:
      widths: filters of each conv layer.
      num_classes: head size, 0 for none.
      kernel_size: square kernel of every conv.
      padding: 'same' or 'valid' (Keras spelling accepted).
      pool_every: a 2x2 max pool after every ``pool_every``-th conv (0: never).
      batch_norm: BatchNorm (Keras momentum/epsilon) after each conv, convs then lose their bias.
      conv_dropout: dropout rate after each conv block's activation.
      head: 'gap' (global average pooling) or 'flatten'.
      hidden: widths of ReLU dense layers between the pooling and the head.
      hidden_dropout: dropout rate between hidden dense layers (after the last one, before the
        head, ``head_dropout`` applies).
      head_dropout: dropout rate on the embedding, before the head.
      init: 'glorot' (Keras' glorot_uniform, the reports' default) or 'he' (He normal).
      input_size: (H, W) the flatten head is sized for; unused by a GAP head.
    """

    def __init__(
        self,
        widths: Sequence[int],
        num_classes: int,
        *,
        kernel_size: int = 3,
        padding: str = "same",
        pool_every: int = 1,
        batch_norm: bool = False,
        conv_dropout: float = 0.0,
        head: str = "gap",
        hidden: Sequence[int] = (),
        hidden_dropout: float = 0.0,
        head_dropout: float = 0.0,
        init: str = "glorot",
        input_size: int | Sequence[int] = 64,
        in_channels: int = 3,
        rngs: nnx.Rngs,
    ):
        widths = [int(w) for w in widths]
        if not widths or min(widths) < 1:
            raise ValueError(f"widths must be a non-empty list of positive ints, got {widths}")
        if head not in _HEADS:
            raise ValueError(f"head must be one of {_HEADS}, got {head!r}")
        if init not in _INITS:
            raise ValueError(f"init must be one of {tuple(_INITS)}, got {init!r}")
        if padding.upper() not in ("SAME", "VALID"):
            raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")
        kernel_init = _INITS[init]
        h, w = _pair(input_size)
        in_f = in_channels
        for i, width in enumerate(widths):
            pool = pool_every > 0 and (i + 1) % pool_every == 0
            block = ConvBlock(in_f, width, kernel_size, padding.upper(), pool=pool,
                              batch_norm=batch_norm, dropout=conv_dropout,
                              kernel_init=kernel_init, rngs=rngs)
            setattr(self, f"conv{i + 1}", block)
            if padding.upper() == "VALID":
                h, w = h - kernel_size + 1, w - kernel_size + 1
            if pool:
                h, w = h // 2, w // 2
            in_f = width
        self.depth = len(widths)
        self.head_type = head
        if head == "flatten":
            if h < 1 or w < 1:
                raise ValueError(
                    f"input_size {_pair(input_size)} is too small for {len(widths)} conv "
                    f"layers with pool_every={pool_every}: the feature map vanishes"
                )
            self.flat_shape = (h, w, in_f)
            in_f = h * w * in_f
        self.input_size = _pair(input_size)
        self.num_hidden = len(hidden)
        for j, units in enumerate(hidden):
            setattr(self, f"fc{j + 1}", nnx.Linear(in_f, units, kernel_init=kernel_init,
                                                     rngs=rngs))
            in_f = units
        self.hidden_dropout = (
            nnx.Dropout(hidden_dropout, rngs=rngs) if hidden_dropout > 0 and hidden else None
        )
        self.num_features = in_f
        self.num_classes = num_classes
        self.head_dropout = nnx.Dropout(head_dropout, rngs=rngs) if head_dropout > 0 else None
        self.head = make_head(in_f, num_classes, rngs=rngs, kernel_init=kernel_init)

    def features(self, x: jax.Array) -> jax.Array:
        """The last conv block's feature map (NHWC)."""
        for i in range(self.depth):
            x = getattr(self, f"conv{i + 1}")(x)
        return x

    def embed(self, x: jax.Array) -> jax.Array:
        x = self.features(x)
        if self.head_type == "gap":
            x = global_avg_pool(x)
        else:
            if x.shape[1:] != self.flat_shape:
                raise ValueError(
                    f"input {x.shape[1:]} after the conv blocks does not fit the flatten head "
                    f"sized for input_size={self.input_size} (feature map {self.flat_shape}); "
                    f"build the model with input_size=(H, W) of your images"
                )
            x = x.reshape(x.shape[0], -1)
        for j in range(self.num_hidden):
            x = nnx.relu(getattr(self, f"fc{j + 1}")(x))
            if self.hidden_dropout is not None and j < self.num_hidden - 1:
                x = self.hidden_dropout(x)
        return x

    def block_names(self) -> list[str]:
        names = [f"conv{i + 1}" for i in range(self.depth)]
        names += [f"fc{j + 1}" for j in range(self.num_hidden)]
        return names + (["head"] if self.head is not None else [])


def _min_size(n_pools: int) -> tuple[int, int]:
    return (2**n_pools, 2**n_pools)


# --- report 003: the CIFAR-100 benchmark CNN --------------------------------------------------

@register_model(
    family="simple_cnn",
    input_size=(224, 224, 3),
    num_classes=100,
    preprocessing="unit",
    min_input_size=_min_size(3),
    source="report 003 (CIFAR-100), 'Benchmark', Figure 5: Keras summary, 17,044 params",
    description="3 conv (16/32/64, 2x2 'same') + 2x2 max pool each, GAP, Dense",
)
def benchmark_cnn(num_classes=100, *, rngs, widths: Sequence[int] = (16, 32, 64), **kw):
    """Report 003's benchmark: Conv 16/32/64 (2x2 kernels, 'same'), max pool, GAP, Dense.

    208 + 2,080 + 8,256 + 6,500 = 17,044 parameters at 100 classes (report 003, Figure 5).
    """
    cfg = dict(kernel_size=2, padding="same", head="gap")
    cfg.update(kw)
    return SimpleCNN(widths, num_classes, rngs=rngs, **cfg)


# --- report 000: the food CNNs of section 6 ---------------------------------------------------
# The report gives the layer counts (3 conv + 2 dense, dropout after each conv; then 5 conv)
# but not the widths. We take the Keras-tutorial values: 3x3 'same' convs at 32/64/128, a 2x2
# max pool after each, dropout 0.25 after each conv, flatten, Dense 128 + ReLU, dropout 0.5,
# Dense classes. At 64x64 that is 1.14M parameters (report 000's saved CNN file is 28.6 MB, so
# theirs was probably wider; the widths are an override away).

def _report000_cnn(widths, num_classes, rngs, kw):
    cfg = dict(kernel_size=3, padding="same", conv_dropout=0.25, head="flatten",
               hidden=(128,), head_dropout=0.5)
    cfg.update(kw)
    return SimpleCNN(cfg.pop("widths", widths), num_classes, rngs=rngs, **cfg)


@register_model(
    family="simple_cnn",
    input_size=(64, 64, 3),
    num_classes=3,
    preprocessing="unit",
    min_input_size=_min_size(3),
    source="report 000 (3 local dishes), section 6 'Convolutional Neural Network' "
           "(3 conv + 2 dense, dropout after each conv; widths ours)",
    description="3 conv 32/64/128 3x3 + pool + dropout 0.25, flatten, Dense 128, dropout 0.5",
)
def basic_cnn(num_classes=3, *, rngs, input_size: int | Sequence[int] = 64, **kw):
    """Report 000's basic CNN (82.04%): 3 conv + 2 dense, dropout after each conv.

    The flatten head is sized for ``input_size`` (default 64); pass ``input_size=(H, W)`` for
    other image sizes.
    """
    return _report000_cnn((32, 64, 128), num_classes, rngs, dict(kw, input_size=input_size))


@register_model(
    family="simple_cnn",
    input_size=(64, 64, 3),
    num_classes=3,
    preprocessing="unit",
    min_input_size=_min_size(5),
    source="report 000 (3 local dishes), section 6: the basic CNN with 2 more conv layers "
           "(widths ours)",
    description="5 conv 32/64/128/256/256 3x3 + pool + dropout 0.25, flatten, Dense 128",
)
def deeper_cnn(num_classes=3, *, rngs, input_size: int | Sequence[int] = 64, **kw):
    """Report 000's deeper CNN (80.11%): ``basic_cnn`` plus two conv layers (256, 256)."""
    return _report000_cnn((32, 64, 128, 256, 256), num_classes, rngs,
                          dict(kw, input_size=input_size))


# --- report 002: the UECFOOD-256 grid ---------------------------------------------------------

def small_cnn_widths(depth: int, width: int, cap: int = 128) -> list[int]:
    """Report 002's filter progression: ``width`` doubling per layer, capped at ``cap``.

    depth 3 / width 16 gives 16, 32, 64 (the report's benchmark), depth 4 gives
    16, 32, 64, 128, width 128 gives 128 at every layer.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    return [min(width * 2**i, cap) for i in range(depth)]


@register_model(
    family="simple_cnn",
    input_size=(64, 64, 3),
    num_classes=256,
    preprocessing="unit",
    min_input_size=_min_size(5),
    source="report 002 (UECFOOD-256): 1-5 conv (2x2 'same') + dropout + max pool, GAP, "
           "Dense; Keras summaries e.g. 4 conv 16..128 = 76,464 params",
    description="report 002 grid CNN; overrides depth (1-5), width (16-128), dropout",
)
def small_cnn(num_classes=256, *, rngs, depth: int = 3, width: int = 16,
              dropout: float = 0.3, widths: Sequence[int] | None = None, **kw):
    """Report 002's grid model: ``depth`` conv layers of 2x2 kernels ('same'), each followed by
    dropout (0.3, the report's adopted rate; it also tried 0.5 and none) and a 2x2 max pool,
    then GAP and a Dense head (no hidden layer).

    Filters start at ``width`` and double per layer up to 128 (``small_cnn_widths``), or are
    given as ``widths``. The report's best from-scratch model (18.19% top-1 / 38.63% top-5) is
    ``depth=5, width=128``.
    """
    if widths is None:
        widths = small_cnn_widths(depth, width)
    cfg = dict(kernel_size=2, padding="same", conv_dropout=dropout, head="gap")
    cfg.update(kw)
    return SimpleCNN(widths, num_classes, rngs=rngs, **cfg)
