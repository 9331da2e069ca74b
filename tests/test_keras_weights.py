"""Keras-2 ``.h5`` weight files: published parameter counts, the file layout, and the errors a
wrong file gives (they must name the file and the first mismatching layer)."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import h5py
import jax
import numpy as np
import pytest
from flax import nnx

import models
from models.keras_weights import (
    DepthwiseConv,
    SeparableConv,
    guess_architecture,
    load_keras_h5,
    read_keras_h5,
    save_keras_h5,
    write_keras_h5,
)

SMALL = {"alpha": 0.35}  # a 1.7M-parameter MobileNetV2 keeps the file tests fast


def _abstract(name: str, **kw):
    """The model with shapes only (no arrays allocated): enough for counts and load errors."""
    return nnx.eval_shape(lambda: models.create_model(name, **kw))


def _arrays(model) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(nnx.state(model))]


def _randomize_statistics(model, seed: int) -> None:
    """Non-trivial BatchNorm statistics, so that a swapped mean/variance cannot pass."""
    rng = np.random.default_rng(seed)
    for module in model.keras_layers().values():
        if isinstance(module, nnx.BatchNorm):
            module.mean[...] = rng.normal(0, 0.5, module.mean.shape).astype(np.float32)
            module.var[...] = rng.uniform(0.5, 1.5, module.var.shape).astype(np.float32)


def _rewrite(src, dst, drop=(), add=None):
    """Copy a Keras-2 file through read/write, dropping or adding layers."""
    layers = {k: v for k, v in read_keras_h5(src).items() if k not in drop}
    layers.update(add or {})
    write_keras_h5(dst, layers)


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    """A MobileNetV2 (alpha 0.35, 10 classes) saved as Keras-2 .h5, and that model."""
    model = models.create_model("mobilenet_v2", num_classes=10, seed=0, **SMALL)
    _randomize_statistics(model, 0)
    path = tmp_path_factory.mktemp("keras_h5") / "mobilenet_v2_035.h5"
    save_keras_h5(model, path)
    return path, model


# Keras' model.summary() for keras.applications.ResNet50 / MobileNetV2 (alpha 1.0, 224).
PUBLISHED = {
    "resnet50": {1000: (25_636_712, 25_583_592), 0: (23_587_712, 23_534_592)},
    "mobilenet_v2": {1000: (3_538_984, 3_504_872), 0: (2_257_984, 2_223_872)},
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
@pytest.mark.parametrize("num_classes", [1000, 0])
def test_param_counts_match_keras(name, num_classes):
    total, trainable = PUBLISHED[name][num_classes]
    counts = models.param_count(_abstract(name, num_classes=num_classes))
    assert counts["total"] == total
    assert counts["trainable"] == trainable


def test_keras_layer_names_follow_keras():
    names = list(_abstract("resnet50").keras_layers())
    assert names[:4] == ["conv1_conv", "conv1_bn", "conv2_block1_0_conv", "conv2_block1_0_bn"]
    assert names[-3:] == ["conv5_block3_3_conv", "conv5_block3_3_bn", "predictions"]
    assert "conv2_block2_0_conv" not in names  # identity shortcut after a stage's first block
    names = list(_abstract("mobilenet_v2", num_classes=0).keras_layers())
    assert names[:3] == ["Conv1", "bn_Conv1", "expanded_conv_depthwise"]
    assert "expanded_conv_expand" not in names and "block_1_expand" in names
    assert names[-2:] == ["Conv_1", "Conv_1_bn"]


def test_round_trip_keeps_every_array_and_the_keras_layout(small_file, tmp_path):
    path, src = small_file
    with h5py.File(path, "r") as f:  # what Keras 2 writes: names as bytes, weights "layer/w:0"
        assert f.attrs["layer_names"][0] == b"Conv1"
        assert list(f["bn_Conv1"].attrs["weight_names"]) == [
            b"bn_Conv1/gamma:0", b"bn_Conv1/beta:0", b"bn_Conv1/moving_mean:0",
            b"bn_Conv1/moving_variance:0",
        ]
    layers = read_keras_h5(path)
    assert list(layers) == list(src.keras_layers())
    assert layers["expanded_conv_depthwise"][0].shape == (3, 3, 16, 1)  # Keras (h, w, in, mult)
    assert layers["predictions"][0].shape == (1280, 10)

    dst = models.create_model("mobilenet_v2", num_classes=10, seed=1, weights=str(path), **SMALL)
    src_arrays, dst_arrays = _arrays(src), _arrays(dst)
    assert len(src_arrays) == len(dst_arrays) == 52 + 4 * 52 + 2  # 52 convs, 52 BNs, head
    for a, b in zip(src_arrays, dst_arrays):
        np.testing.assert_array_equal(a, b)


def test_reads_chunked_names_and_whole_model_files(small_file, tmp_path):
    """Keras splits long ``layer_names`` into ``layer_names0``, ``layer_names1``, ...; a whole
    model saved as .h5 keeps the weights under ``model_weights``."""
    path, _ = small_file
    expected = read_keras_h5(path)
    out = tmp_path / "whole_model.h5"
    with h5py.File(path, "r") as src, h5py.File(out, "w") as dst:
        group = dst.create_group("model_weights")
        for name in src:
            src.copy(src[name], group, name)
        names = list(src.attrs["layer_names"])
        group.attrs["layer_names0"] = names[:50]
        group.attrs["layer_names1"] = names[50:]
    got = read_keras_h5(out)
    assert list(got) == list(expected)
    for name in expected:
        for a, b in zip(got[name], expected[name]):
            np.testing.assert_array_equal(a, b)


def test_missing_layer_is_named_and_nothing_is_loaded(small_file, tmp_path):
    path, _ = small_file
    bad = tmp_path / "missing.h5"
    _rewrite(path, bad, drop=["block_3_depthwise_BN"])
    model = models.create_model("mobilenet_v2", num_classes=10, seed=1, **SMALL)
    before = _arrays(model)
    with pytest.raises(ValueError, match="block_3_depthwise_BN") as e:
        model.load_weights(str(bad))
    assert str(bad) in str(e.value) and "missing from the file" in str(e.value)
    for a, b in zip(before, _arrays(model)):  # all or nothing
        np.testing.assert_array_equal(a, b)


def test_unknown_layer_is_named(small_file, tmp_path):
    path, _ = small_file
    bad = tmp_path / "extra.h5"
    _rewrite(path, bad, add={"extra_dense": [np.zeros((4, 2), np.float32)]})
    with pytest.raises(ValueError, match="extra_dense") as e:
        models.create_model("mobilenet_v2", num_classes=10, weights=str(bad), **SMALL)
    assert str(bad) in str(e.value)


def test_shape_mismatch_names_first_layer(small_file):
    path, _ = small_file
    wider = _abstract("mobilenet_v2", num_classes=10)  # alpha 1.0: Conv1 has 32 filters, not 16
    with pytest.raises(ValueError, match=r"layer 'Conv1': the file has weights \[\('kernel', "
                                         r"\(3, 3, 3, 16\)\)\]") as e:
        load_keras_h5(wider, path)
    assert str(path) in str(e.value) and "MobileNetV2" in str(e.value)


def test_file_of_another_architecture(small_file, tmp_path):
    path, _ = small_file
    with pytest.raises(ValueError, match="'conv1_conv'") as e:
        load_keras_h5(_abstract("resnet50", num_classes=0), path)
    assert str(path) in str(e.value)
    assert "seems to be for MobileNetV2" in str(e.value)
    # The other way round: a file with ResNet50's layer names (a few are enough to tell).
    resnet_like = tmp_path / "resnet_like.h5"
    write_keras_h5(resnet_like, {"conv1_conv": [np.zeros((7, 7, 3, 64), np.float32)],
                                 "conv2_block1_1_conv": [np.zeros((1, 1, 64, 64), np.float32)]})
    with pytest.raises(ValueError, match="layer 'Conv1' of the model is missing") as e:
        models.create_model("mobilenet_v2", num_classes=0, weights=str(resnet_like), **SMALL)
    assert "ResNet50" in str(e.value)


def test_not_a_keras_file(tmp_path):
    text = tmp_path / "weights.h5"
    text.write_text("not HDF5")
    with pytest.raises(ValueError, match="not an HDF5 file") as e:
        models.create_model("mobilenet_v2", weights=str(text), **SMALL)
    assert str(text) in str(e.value)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(ValueError, match="not in the Keras-2 weights layout") as e:
        read_keras_h5(other)
    assert str(other) in str(e.value)
    with pytest.raises(FileNotFoundError, match="no_such.h5"):
        read_keras_h5(tmp_path / "no_such.h5")


def test_head_is_skipped_for_notop_files_and_other_class_counts(small_file, tmp_path):
    path, src = small_file
    emb = models.create_model("mobilenet_v2", num_classes=0, weights=str(path), **SMALL)
    np.testing.assert_array_equal(np.asarray(emb.top_conv.bn.var[...]),
                                  np.asarray(src.top_conv.bn.var[...]))
    fresh = models.create_model("mobilenet_v2", num_classes=5, seed=3, **SMALL)
    assert load_keras_h5(fresh, path) == ["predictions"]  # 10-class head in the file
    again = models.create_model("mobilenet_v2", num_classes=5, seed=3, **SMALL)
    np.testing.assert_array_equal(np.asarray(fresh.head.kernel[...]),
                                  np.asarray(again.head.kernel[...]))
    notop = tmp_path / "notop.h5"
    _rewrite(path, notop, drop=["predictions"])
    model = models.create_model("mobilenet_v2", num_classes=10, seed=4, **SMALL)
    assert load_keras_h5(model, notop) == ["predictions"]
    np.testing.assert_array_equal(np.asarray(model.stem.conv.kernel[...]),
                                  np.asarray(src.stem.conv.kernel[...]))


def test_guess_architecture():
    assert guess_architecture(["input_1", "block5_conv3", "block5_pool"]).startswith("VGG16")
    assert guess_architecture(["conv1_conv", "conv4_block23_1_conv"]).startswith("a ResNet101")
    assert guess_architecture(["dense", "flatten"]) is None


class _Holder:
    """The least a model needs for load_keras_h5."""

    keras_top_layers = ()

    def __init__(self, **layers):
        self.layers = layers

    def keras_layers(self):
        return self.layers


@pytest.mark.parametrize("strides,padding", [(1, "same"), (2, "valid"), (2, "same")])
def test_depthwise_and_separable_conv_match_keras(strides, padding, tmp_path):
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "jax":
        pytest.skip(f"Keras backend is {keras.backend.backend()!r}, not 'jax'")
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 9, 10, 4)).astype(np.float32)
    kd = keras.layers.DepthwiseConv2D(3, strides=strides, padding=padding, depth_multiplier=2,
                                      use_bias=True, name="dw")
    ks = keras.layers.SeparableConv2D(5, 3, strides=strides, padding=padding,
                                      depth_multiplier=2, use_bias=True, name="sep")
    kd(x), ks(x)  # builds the weights
    layers, names = {}, {}
    for layer in (kd, ks):
        weights = [np.asarray(w.value) for w in layer.weights]
        weights[-1] = rng.normal(size=weights[-1].shape).astype(np.float32)  # non-zero bias
        layer.set_weights(weights)
        layers[layer.name] = weights
        names[layer.name] = [w.name for w in layer.weights]
    expected = [np.asarray(kd(x)), np.asarray(ks(x))]
    path = tmp_path / "convs.h5"
    write_keras_h5(path, layers, names)

    rngs = nnx.Rngs(0)
    dw = DepthwiseConv(4, 2, 3, strides, padding.upper(), use_bias=True, rngs=rngs)
    sep = SeparableConv(4, 5, 3, strides, padding.upper(), depth_multiplier=2, rngs=rngs)
    load_keras_h5(_Holder(dw=dw, sep=sep), path)
    for got, want in zip((dw(x), sep(x)), expected):
        assert got.shape == want.shape
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_batchnorm_without_scale_and_weights_in_another_order(tmp_path):
    """``BatchNormalization(scale=False)`` stores [beta, mean, variance] (InceptionV3 uses it);
    weights named by role load by role whatever their order in the file."""
    rngs = nnx.Rngs(0)
    bn = nnx.BatchNorm(3, use_scale=False, rngs=rngs)
    dense = nnx.Linear(3, 2, rngs=rngs)
    beta, mean, var = (np.arange(3, dtype=np.float32) + k for k in (1, 10, 20))
    kernel, bias = np.ones((3, 2), np.float32), np.full(2, 7, np.float32)
    path = tmp_path / "bn.h5"
    write_keras_h5(path, {"bn": [beta, mean, var], "fc": [bias, kernel]},
                   {"bn": ["beta", "moving_mean", "moving_variance"], "fc": ["bias", "kernel"]})
    load_keras_h5(_Holder(bn=bn, fc=dense), path)
    for got, want in [(bn.bias, beta), (bn.mean, mean), (bn.var, var),
                      (dense.kernel, kernel), (dense.bias, bias)]:
        np.testing.assert_array_equal(np.asarray(got[...]), want)
    write_keras_h5(path, {"bn": [beta, mean, var, var]})  # four arrays: a scaled BN's file
    with pytest.raises(ValueError, match=r"layer 'bn': the file has weights \[\('weight_0'"):
        load_keras_h5(_Holder(bn=bn), path)
