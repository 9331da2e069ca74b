"""Flax NNX image classifiers, created by name.

Every model follows one contract:

* ``model(x)``: logits for NHWC float input (already preprocessed, see ``preprocess``);
  with ``num_classes=0`` there is no head and ``model(x)`` returns the embedding.
* ``model.embed(x)``: the pooled pre-logits embedding, shape ``(N, model.num_features)``.
* ``model.train()`` / ``model.eval()``: dropout and BatchNorm mode, the NNX way.
* ``model.block_names()``: names of its top-level blocks in forward order (for freezing).

>>> import models
>>> m = models.create_model("resnet20", num_classes=10)
>>> models.param_count(m)
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import numpy as np

from ._registry import (
    PREPROCESSING_MODES,
    ModelInfo,
    PretrainedFile,
    get_builder,
    get_model_info,
    list_models,
    register_model,
)
from ._build import build_and_load, build_empty, build_random, under_trace
from .pretrained import resolve_pretrained

__all__ = [
    "ModelInfo",
    "PretrainedFile",
    "build_empty",
    "create_model",
    "get_model_info",
    "list_models",
    "param_count",
    "preprocess",
    "register_model",
    "resolve_pretrained",
    "size_kwargs",
    "weights_bytes",
]

# Family modules register their builders on import. Listed here, not discovered, so that the
# import order (and so the registry) is deterministic.
_FAMILIES = (
    "simple_cnn",
    "cifar_resnet",
    "vgg",
    "resnet",
    "inception_v3",
    "xception",
    "mobilenet_v2",
    "inception_resnet_v2",
    "inception_small",
    "simplenet",
    "efficientnet_lite",
)
for _fam in _FAMILIES:
    try:
        importlib.import_module(f"{__name__}.{_fam}")
    except ModuleNotFoundError as e:  # a family not written yet
        if e.name != f"{__name__}.{_fam}":
            raise


def create_model(
    name: str,
    num_classes: int | None = None,
    *,
    rngs: Any = None,
    seed: int = 0,
    weights: str | os.PathLike | None = None,
    weights_dir: str | os.PathLike | None = None,
    download: bool = False,
    image_size: int | tuple[int, int] | None = None,
    eager: bool = False,
    **overrides: Any,
):
    """Build a registered model.

    Args:
      name: a name from ``list_models()``.
      num_classes: head size; ``0`` for no head; ``None`` for the model's default.
      rngs: an ``nnx.Rngs``; by default ``nnx.Rngs(seed)``.
      weights: ``None`` (random init), a weights file path (``.h5`` Keras 2 layout, ``.pth``
        PyTorch state dict), or a tag such as ``"imagenet"`` resolved offline
        (``weights_dir`` / ``$BENCH_WEIGHTS_DIR``, installed packages, the user cache).
      download: allow fetching a tagged file from its official URL (checksum verified).
      image_size: the square (or ``(h, w)``) input size the model will see; adds the builder
        options that depend on it (``size_kwargs``), e.g. ``input_size`` for a flatten head.
      eager: initialise layer by layer as the builder runs (slow: one XLA program per
        parameter shape). By default the model is built under one jitted program, or, with
        ``weights``, abstractly and then filled from the file (``models._build``).
      **overrides: architecture options of the family (width, dropout, ...).
    """
    from flax import nnx

    info = get_model_info(name)
    if num_classes is None:
        num_classes = info.num_classes
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")
    if rngs is None:
        rngs = nnx.Rngs(seed)
    if image_size is not None:
        overrides = {**size_kwargs(name, image_size), **overrides}
    builder = get_builder(name)

    def make(r):
        return builder(num_classes=num_classes, rngs=r, **overrides)

    eager = eager or under_trace(rngs)  # inside a trace nothing is compiled anyway
    if weights is None:
        return make(rngs) if eager else build_random(make, rngs)
    path = weights
    if isinstance(weights, str) and weights in info.pretrained:
        path = resolve_pretrained(info, weights, weights_dir=weights_dir, download=download)
    elif isinstance(weights, str) and not os.path.exists(weights) and not any(
        sep in weights for sep in ("/", os.sep, ".")
    ):
        have = ", ".join(info.pretrained) or "none"
        raise ValueError(
            f"weights={weights!r}: not a file and not a pretrained tag of {name!r} "
            f"(tags: {have})"
        )
    path = os.fspath(path)

    def load(model):
        if not hasattr(model, "load_weights"):
            raise ValueError(f"model {name!r} cannot load weight files")
        model.load_weights(path)

    if eager:
        model = make(rngs)
        load(model)
        return model
    return build_and_load(make, rngs, load)


def size_kwargs(name: str, image_size: int | tuple[int, int]) -> dict[str, Any]:
    """Builder options for model ``name`` at input size ``image_size`` (an int for a square):
    ``{"input_size": (h, w)}`` for models whose head is sized at build time (their builder
    takes ``input_size``, e.g. a flatten head), else ``{}``."""
    import inspect

    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if "input_size" in inspect.signature(get_builder(name)).parameters:
        return {"input_size": (int(h), int(w))}
    return {}


def param_count(model) -> dict[str, int]:
    """Parameter counts: ``trainable`` (nnx.Param) and ``total`` (plus BatchNorm statistics,
    as Keras' ``count_params()`` counts them)."""
    from flax import nnx

    def size(state) -> int:
        return int(sum(np.prod(x.shape) for x in _leaves(state)))

    trainable = size(nnx.state(model, nnx.Param))
    stats = size(nnx.state(model, nnx.BatchStat))
    return {"trainable": trainable, "non_trainable": stats, "total": trainable + stats}


def _leaves(state):
    import jax

    return [x for x in jax.tree_util.tree_leaves(state) if hasattr(x, "shape")]


def weights_bytes(model) -> int:
    """Bytes of the model's parameters and statistics as stored on disk (float32 arrays)."""
    from flax import nnx

    state = nnx.state(model, nnx.Param, nnx.BatchStat)
    return int(sum(x.size * x.dtype.itemsize for x in _leaves(state)))


_IMAGENET_MEAN_RGB = np.array([0.485, 0.456, 0.406], np.float32)
_IMAGENET_STD_RGB = np.array([0.229, 0.224, 0.225], np.float32)
_CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)


def preprocess_mode(images, mode: str):
    """Apply a Keras preprocessing ``mode`` to RGB images in [0, 255] (numpy or jax arrays).

    ``caffe``: RGB->BGR, minus the ImageNet BGR mean; ``tf``: scale to [-1, 1]; ``torch``:
    scale to [0, 1] then ImageNet mean/std; ``unit``: scale to [0, 1].
    """
    x = images.astype("float32")
    if mode == "tf":
        return x / 127.5 - 1.0
    if mode == "unit":
        return x / 255.0
    if mode == "torch":
        return (x / 255.0 - _IMAGENET_MEAN_RGB) / _IMAGENET_STD_RGB
    if mode == "caffe":
        return x[..., ::-1] - _CAFFE_MEAN_BGR
    raise ValueError(f"unknown preprocessing mode {mode!r}; expected one of {PREPROCESSING_MODES}")


def preprocess(name: str, images):
    """Preprocess uint8 RGB images (NHWC) the way model ``name`` expects."""
    return preprocess_mode(images, get_model_info(name).preprocessing)
