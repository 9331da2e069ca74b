"""VGG (Simonyan & Zisserman 2014): VGG16 layer for layer as Keras, and report 000's cut VGG.

``vgg16`` follows ``keras/src/applications/vgg16.py``: five blocks of 3x3 'same' ReLU convs
(``block1_conv1`` ... ``block5_conv3``) each closed by a 2x2 max pool (``block1_pool`` ...),
then with the top ``flatten``, ``fc1`` 4096, ``fc2`` 4096, ``predictions``. Sizes as Keras
counts them: 138,357,544 parameters with the top, 14,714,688 without.
"""

from __future__ import annotations

from typing import Sequence

import jax
from flax import nnx

from ._registry import PretrainedFile, register_model
from .layers import (
    Conv,
    KERAS_BN_EPS,
    KERAS_BN_MOMENTUM,
    Classifier,
    global_avg_pool,
    glorot_uniform,
    make_head,
    max_pool,
)

# Filters per block; every block ends in a 2x2 max pool.
VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
# Report 000, section 9: VGG16 with 7 conv and 2 dense layers removed, BatchNorm added.
VGG16_CUT_BLOCKS = ((64, 64), (128,), (256,), (512,), (512,))

_KERAS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = tuple(size)[:2]
    return int(h), int(w)


class VGG(Classifier):
    """Blocks of 3x3 ReLU convs + 2x2 max pool, then a flatten top or global average pooling.

    With ``include_top`` the pooled map is flattened (so the model is sized for
    ``input_size``), optionally batch-normalised, and passed through ReLU dense layers ``fc``;
    the embedding is the last of them. Without it the embedding is the global average of the
    last pool (Keras ``include_top=False, pooling='avg'``) and any input of at least 32x32
    works. Blocks are named ``block1..blockN``, dense layers ``fc1..``, the head ``head``
    (Keras: ``predictions``).

    Args:
      blocks: filters of each conv, grouped by block.
      num_classes: head size, 0 for none.
      include_top: flatten + ``fc`` layers; default ``num_classes > 0``, as Keras' top
        always carries its classifier.
      fc: widths of the dense layers of the top.
      flatten_bn: BatchNorm (Keras momentum/epsilon) on the flattened features.
      input_size: (H, W) the top is sized for.
    """

    def __init__(
        self,
        blocks: Sequence[Sequence[int]],
        num_classes: int,
        *,
        include_top: bool | None = None,
        fc: Sequence[int] = (4096, 4096),
        flatten_bn: bool = False,
        input_size: int | Sequence[int] = 224,
        in_channels: int = 3,
        rngs: nnx.Rngs,
    ):
        if include_top is None:
            include_top = num_classes > 0
        in_f = in_channels
        self.num_blocks = len(blocks)
        for b, widths in enumerate(blocks):
            convs = []
            for width in widths:
                convs.append(Conv(in_f, width, (3, 3), padding="SAME",
                                  kernel_init=glorot_uniform, rngs=rngs))
                in_f = width
            setattr(self, f"block{b + 1}", nnx.List(convs))
        self.include_top = include_top
        self.input_size = _pair(input_size)
        self.num_fc = 0
        bn = None
        if include_top:
            h, w = self.input_size
            for _ in blocks:
                h, w = h // 2, w // 2
            if h < 1 or w < 1:
                min_size = 2 ** len(blocks)
                raise ValueError(
                    f"input_size {self.input_size} is smaller than {min_size}x{min_size}, "
                    f"the least {len(blocks)} max pools accept"
                )
            self.flat_shape = (h, w, in_f)
            in_f = h * w * in_f
            if flatten_bn:
                bn = nnx.BatchNorm(in_f, epsilon=KERAS_BN_EPS, momentum=KERAS_BN_MOMENTUM,
                                   rngs=rngs)
            self.num_fc = len(fc)
            for j, units in enumerate(fc):
                setattr(self, f"fc{j + 1}", nnx.Linear(in_f, units, kernel_init=glorot_uniform,
                                                         rngs=rngs))
                in_f = units
        self.flatten_bn = bn
        self.num_features = in_f
        self.num_classes = num_classes
        self.head = make_head(in_f, num_classes, rngs=rngs)

    def features(self, x: jax.Array) -> jax.Array:
        """The last block's pooled feature map (NHWC)."""
        for b in range(self.num_blocks):
            for conv in getattr(self, f"block{b + 1}"):
                x = nnx.relu(conv(x))
            x = max_pool(x, 2)
        return x

    def embed(self, x: jax.Array) -> jax.Array:
        x = self.features(x)
        if not self.include_top:
            return global_avg_pool(x)
        if x.shape[1:] != self.flat_shape:
            raise ValueError(
                f"input of {x.shape[1]}x{x.shape[2]} after the conv blocks does not fit the "
                f"top built for input_size={self.input_size} (feature map {self.flat_shape}); "
                f"build with input_size=(H, W) of your images, or without the top"
            )
        x = x.reshape(x.shape[0], -1)
        if self.flatten_bn is not None:
            x = self.flatten_bn(x)
        for j in range(self.num_fc):
            x = nnx.relu(getattr(self, f"fc{j + 1}")(x))
        return x

    def block_names(self) -> list[str]:
        names = [f"block{b + 1}" for b in range(self.num_blocks)]
        if self.flatten_bn is not None:
            names.append("flatten_bn")
        names += [f"fc{j + 1}" for j in range(self.num_fc)]
        return names + (["head"] if self.head is not None else [])


class VGG16(VGG):
    """Keras' VGG16, loadable from its ``.h5`` files (``load_weights``)."""

    def keras_layers(self) -> dict[str, nnx.Module]:
        """Keras layer name -> module, in the order of ``keras.applications.VGG16``."""
        layers: dict[str, nnx.Module] = {}
        for b in range(self.num_blocks):
            for i, conv in enumerate(getattr(self, f"block{b + 1}")):
                layers[f"block{b + 1}_conv{i + 1}"] = conv
        for j in range(self.num_fc):
            layers[f"fc{j + 1}"] = getattr(self, f"fc{j + 1}")
        if self.head is not None:
            layers["predictions"] = self.head
        return layers

    @property
    def keras_top_layers(self) -> tuple[str, ...]:
        """Layers ``load_keras_h5`` may skip: ``predictions``, and ``fc1``/``fc2`` of a file
        with the top when this model has none. A model with ``fc1``/``fc2`` needs them in the
        file at its shapes."""
        return ("predictions",) if self.num_fc else ("fc1", "fc2", "predictions")

    def load_weights(self, path: str) -> None:
        """Load a Keras-2 ``.h5`` file (with or without the top).

        ``predictions`` is skipped when the file has none or the model's head is not 1000-way,
        and a file with the top loads into a model without it (see ``keras_top_layers`` and
        ``models.keras_weights.load_keras_h5``). A notop file has no ``fc1``/``fc2``, so a
        model with the top refuses it: build that one with ``include_top=False`` (GAP
        features, then the head) to fine-tune from the ImageNet notop file.
        """
        from .keras_weights import load_keras_h5

        names = _h5_layer_names(path)
        if self.num_fc and names is not None and "fc1" not in names:
            raise ValueError(
                f"{path}: a VGG16 file without the top (no 'fc1'), but this model has "
                f"fc1/fc2; build it with include_top=False (GAP features, then the head), "
                f"as Keras' VGG16(include_top=False, pooling='avg') would"
            )
        load_keras_h5(self, path)


def _h5_layer_names(path: str) -> set[str] | None:
    """Top-level group names of a Keras-2 .h5 file (its layers); None if it is not HDF5."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            root = f["model_weights"] if "model_weights" in f else f
            return set(root.keys())
    except OSError:
        return None  # missing or not HDF5: load_keras_h5 says so, naming the file


@register_model(
    family="vgg",
    input_size=(224, 224, 3),
    num_classes=1000,
    preprocessing="caffe",
    min_input_size=(32, 32),
    source="Simonyan & Zisserman 2014, arXiv:1409.1556 (config D); "
           "keras/src/applications/vgg16.py",
    pretrained={
        "imagenet": PretrainedFile(
            filename="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
            url=_KERAS_URL + "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
            md5="6d6bbae143d832006294945121d1f1fc",
            size=58889256,
        ),
    },
    description="VGG16 as keras.applications.VGG16",
)
def vgg16(num_classes=1000, *, rngs, include_top: bool | None = None,
          input_size: int | Sequence[int] = 224, **kw):
    """VGG16. With the top (default when ``num_classes > 0``) the flatten layer is sized for
    ``input_size`` (Keras: 224 with ImageNet weights, any size >= 32 from scratch); without it
    (``num_classes=0`` or ``include_top=False``) any input >= 32x32 works and the embedding is
    the global average of ``block5_pool``.
    """
    return VGG16(VGG16_BLOCKS, num_classes, include_top=include_top, input_size=input_size,
                 rngs=rngs, **kw)


@register_model(
    family="vgg",
    input_size=(64, 64, 3),
    num_classes=3,
    preprocessing="unit",
    min_input_size=(32, 32),
    source="report 000 (3 local dishes), section 9 'VGGNet': Keras summary of the modified "
           "VGG16, 4,218,563 params at 64x64x3 and 3 classes",
    description="VGG16 cut to 6 conv (64,64/128/256/512/512) + flatten, BatchNorm, Dense 128",
)
def vgg16_cut(num_classes=3, *, rngs, input_size: int | Sequence[int] = 64, **kw):
    """Report 000's modified VGG16 (88.38%): 7 conv and 2 dense layers removed, BatchNorm added.

    conv 64, 64, pool, 128, pool, 256, pool, 512, pool, 512, pool, flatten, BatchNorm,
    Dense 128 (ReLU), Dense classes. At 64x64x3 and 3 classes: 1,792 + 36,928 + 73,856 +
    295,168 + 1,180,160 + 2,359,808 + 8,192 (BatchNorm, half of it statistics) + 262,272 +
    387 = 4,218,563 parameters, as the report's Keras summary lists them.
    """
    kw.setdefault("include_top", True)
    return VGG(VGG16_CUT_BLOCKS, num_classes, fc=(128,), flatten_bn=True,
               input_size=input_size, rngs=rngs, **kw)
