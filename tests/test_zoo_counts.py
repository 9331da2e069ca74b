"""Exact sizes, output shapes and block names of InceptionV3, Xception, InceptionResNetV2,
report 000's Inception models and SimpleNet.

Models are built with ``nnx.eval_shape`` (shapes only: no weights allocated, nothing
compiled) except the small ones, which run a real forward pass.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import pytest
from flax import nnx

import models

# keras.applications' count_params() (BatchNorm statistics included): with the 1000-class top
# and without it (Keras 3.15 on this project's machine; the same figures as the Keras docs).
KERAS_SIZES = {
    "inception_v3": (23_851_784, 21_802_784),
    "xception": (22_910_480, 20_861_480),
    "inception_resnet_v2": (55_873_736, 54_336_736),
}
MIN_INPUT = {"inception_v3": 75, "xception": 71, "inception_resnet_v2": 75}


@functools.lru_cache(maxsize=None)
def _abstract_cached(name: str, kw: tuple):
    return nnx.eval_shape(lambda: models.create_model(name, **dict(kw)))


def _abstract(name: str, **kw):
    """The model built abstractly, once per arguments (building InceptionResNetV2 under
    eval_shape takes seconds)."""
    return _abstract_cached(name, tuple(sorted(kw.items())))


def _out_shape(model, hw: int, batch: int = 2):
    # Eval mode: tracing BatchNorm's statistics updates (train mode) costs seconds for the
    # deep models (flax's Variable.set_value asks a tracer for its sharding, which walks the
    # whole trace each time).
    model.eval()
    x = jnp.zeros((batch, hw, hw, 3), jnp.float32)
    return nnx.eval_shape(lambda m, x: (m(x), m.embed(x)), model, x)


@pytest.mark.parametrize("name", sorted(KERAS_SIZES))
def test_keras_model_sizes(name):
    with_top, without = KERAS_SIZES[name]
    top = models.param_count(_abstract(name))
    notop = models.param_count(_abstract(name, num_classes=0))
    assert top["total"] == with_top
    assert notop["total"] == without
    # The head is the only difference: Dense(num_features -> 1000).
    model = _abstract(name, num_classes=0)
    assert with_top - without == model.num_features * 1000 + 1000


@pytest.mark.parametrize("name", sorted(KERAS_SIZES))
def test_keras_model_shapes_at_min_input(name):
    hw = MIN_INPUT[name]
    info = models.get_model_info(name)
    assert info.min_input_size == (hw, hw) and info.input_size == (299, 299, 3)
    assert info.preprocessing == "tf"
    assert info.pretrained["imagenet"].filename.endswith("_notop.h5")
    model = _abstract(name)
    logits, emb = _out_shape(model, hw)
    assert logits.shape == (2, 1000)
    assert emb.shape == (2, model.num_features)
    assert model.num_features == (1536 if name == "inception_resnet_v2" else 2048)


def test_inception_v3_block_names():
    model = _abstract("inception_v3")
    expected = ["stem"] + [f"mixed{i}" for i in range(11)] + ["head"]
    assert model.block_names() == expected
    assert _abstract("inception_v3", num_classes=0).block_names() == expected[:-1]


def test_xception_and_inception_resnet_v2_block_names():
    assert _abstract("xception").block_names() == [f"block{i}" for i in range(1, 15)] + ["head"]
    names = _abstract("inception_resnet_v2").block_names()
    assert names[:3] == ["stem", "mixed_5b", "block35_1"]
    assert names[-3:] == ["block8_10", "conv_7b", "head"]
    assert len(names) == 2 + 10 + 1 + 20 + 1 + 10 + 2


@pytest.mark.parametrize("name", ["inception_v3", "xception", "inception_resnet_v2",
                                  "inception_resnet_small", "simplenet"])
def test_block_names_survive_split_merge(name):
    """nnx.merge (jit, eval_shape) sorts attributes by name; the order must not follow."""
    model = _abstract(name)
    graphdef, state = nnx.split(model)
    merged = nnx.merge(graphdef, state)
    assert merged.block_names() == model.block_names()
    for block in model.block_names():
        assert getattr(model, block, None) is not None, block


def test_keras_layer_names_are_creation_ordered():
    """Unnamed Keras layers are numbered in creation order, from ``conv2d`` as a fresh Keras 3
    session names them: InceptionV3's first conv2d_bn is the stem's first convolution, its
    last the pool branch of mixed10."""
    model = _abstract("inception_v3", num_classes=0)
    layers = model.keras_layers()
    assert len(layers) == 2 * 94
    assert layers["conv2d"] is model.stem.conv1.conv
    assert layers["batch_normalization"] is model.stem.conv1.bn
    assert layers["conv2d_93"] is model.mixed10.pool.conv
    assert "predictions" not in layers
    assert "predictions" in _abstract("inception_v3").keras_layers()
    xception = _abstract("xception")
    xl = xception.keras_layers()
    assert xl["conv2d"] is xception.block2.shortcut_conv
    assert xl["conv2d_3"] is xception.block13.shortcut_conv and "conv2d_4" not in xl
    irv2 = _abstract("inception_resnet_v2")
    il = irv2.keras_layers()
    assert il["conv2d_5"] is irv2.mixed_5b.units()[0].conv  # after the stem's five
    assert "conv2d_202" in il and "conv2d_203" not in il  # 203 unnamed conv2d_bn units
    assert il["block35_1_conv"] is irv2.block35_1.up and il["conv_7b_bn"] is irv2.conv_7b.bn


# ---- report 000 (food, 3 classes) ------------------------------------------------------------

REPORT_000_TOTAL, REPORT_000_TRAINABLE = 11_691_363, 11_687_267


def test_inception_resnet_small_size_against_report_000():
    counts = models.param_count(_abstract("inception_resnet_small"))
    # Our reconstruction (widths in models/inception_small.py): exact figures.
    assert counts == {"trainable": 11_674_931, "non_trainable": 4_096, "total": 11_679_027}
    # The report's non-trainable count (2,048 BatchNorm channels) is matched exactly ...
    assert counts["non_trainable"] == REPORT_000_TOTAL - REPORT_000_TRAINABLE
    # ... its total within 0.11% (documented in the module docstring).
    assert abs(counts["total"] - REPORT_000_TOTAL) == 12_336


def test_inception_small_models_shapes():
    # Numerics (finite outputs, gradients) are checked for every registered model in
    # test_models.py; here the shapes and the report's settings.
    for name, hw in (("inception_resnet_small", 64), ("inception_small", 32)):
        model = _abstract(name)
        assert models.get_model_info(name).input_size == (hw, hw, 3)
        logits, emb = _out_shape(model, hw)
        assert logits.shape == (2, 3) and emb.shape == (2, model.num_features)
    assert model.block_names() == ["stem", "inception", "fc", "head"]
    assert models.param_count(model)["non_trainable"] == 0  # cycle 2: no BatchNorm yet


def test_inception_small_flatten_head_fixes_the_input_size():
    model = _abstract("inception_resnet_small", num_classes=0)
    assert model.block_names() == ["stem", "inception", "ira_1", "ira_2", "fc"]
    with pytest.raises(ValueError, match=r"input_size=\(64, 64\)"):
        _out_shape(model, 32)
    other = _abstract("inception_resnet_small", input_size=(48, 48), ira_blocks=1)
    assert _out_shape(other, 48)[0].shape == (2, 3)
    with pytest.raises(ValueError, match="too small"):
        _abstract("inception_resnet_small", input_size=2)


# ---- SimpleNet --------------------------------------------------------------------------------

def test_simplenet_size():
    counts = models.param_count(_abstract("simplenet"))
    # 13 convolutions with biases + ip1 (CIFAR-10): the paper's "5.48M".
    weights = (27 * 64 + 64) + (576 * 128 + 128) + 4 * (1152 * 128 + 128) \
        + (1152 * 256 + 256) + 2 * (2304 * 256 + 256) + (2304 * 512 + 512) \
        + (512 * 2048 + 2048) + (2048 * 256 + 256) + (2304 * 256 + 256) + (256 * 10 + 10)
    assert weights == 5_489_290
    bn_channels = 64 + 5 * 128 + 3 * 256 + 512  # BatchNorm + Scale on the first ten layers
    assert counts == {"trainable": weights + 2 * bn_channels, "non_trainable": 2 * bn_channels,
                      "total": 5_497_226}


def test_simplenet_shapes_and_blocks():
    model = _abstract("simplenet")
    names = model.block_names()
    assert names[0] == "conv1" and names[-2:] == ["cccp6", "head"] and len(names) == 13 + 1
    logits, emb = _out_shape(model, 32)
    assert logits.shape == (2, 10) and emb.shape == (2, 256)
    # Larger inputs end in a global max-pool: the same embedding width.
    assert _out_shape(model, 64)[1].shape == (2, 256)
    with pytest.raises(ValueError, match="32x32"):
        _out_shape(model, 16)
