"""InceptionV3, Xception and InceptionResNetV2 compute what keras.applications computes.

Each Keras model is built with random weights (BatchNorm statistics and biases perturbed),
saved as a Keras-2 ``.h5`` and loaded into the Flax model; embeddings and logits must agree
to a relative error of 1e-4 (see ``keras_parity.rel_err``) at the smallest input Keras accepts.
The second Keras model of each test is built in the same Keras session, so its unnamed layers
are numbered on from the first's: loading it exercises the match by creation order.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np
import pytest
from flax import nnx

from models.inception_v3 import keras_conv_bn_names, load_keras_h5_by_creation_order
from models.keras_weights import keras_weights_of, write_keras_h5
from models.layers import ConvBN

CASES = [
    ("inception_v3", "InceptionV3", (75, 75)),
    ("xception", "Xception", (71, 71)),
    ("inception_resnet_v2", "InceptionResNetV2", (75, 75)),
]
IDS = [c[0] for c in CASES]


@pytest.mark.parametrize("flax_name,keras_name,input_hw", CASES, ids=IDS)
def test_parity_with_keras(flax_name, keras_name, input_hw, tmp_path):
    keras = pytest.importorskip("keras")
    from keras_parity import check_parity

    keras.backend.clear_session()
    errors = check_parity(flax_name, getattr(keras.applications, keras_name), input_hw, 10,
                          tmp_path)
    assert set(errors) == {"embedding", "embed()", "logits"}


class _TinyAutoNamed(nnx.Module):
    """Two unnamed Keras conv2d_bn units and a head, for the renumbering test."""

    def __init__(self, seed: int):
        rngs = nnx.Rngs(seed)
        self.a = ConvBN(3, 4, 3, bn_scale=False, rngs=rngs)
        self.b = ConvBN(4, 5, 1, bn_scale=False, rngs=rngs)
        self.head = nnx.Linear(5, 2, rngs=rngs)

    def keras_layers(self):
        return {**keras_conv_bn_names([self.a, self.b]), "predictions": self.head}


def _write(model, path, rename):
    layers, names = {}, {}
    for name, module in model.keras_layers().items():
        pairs = keras_weights_of(module)
        layers[rename(name)] = [a for _, a in pairs]
        names[rename(name)] = [n for n, _ in pairs]
    write_keras_h5(path, layers, names)


def _keras2_name(name: str) -> str:
    """Keras 2.0 (which saved the official ImageNet files) counted from 1: conv2d -> conv2d_1."""
    for base in ("conv2d", "batch_normalization"):
        if name == base or name.startswith(base + "_"):
            i = 0 if name == base else int(name[len(base) + 1:])
            return f"{base}_{i + 1}"
    return name


def test_unnamed_layers_load_by_creation_order(tmp_path):
    src, dst = _TinyAutoNamed(0), _TinyAutoNamed(1)
    path = tmp_path / "keras2_numbering.h5"
    _write(src, path, _keras2_name)  # conv2d_1, batch_normalization_1, conv2d_2, ...
    load_keras_h5_by_creation_order(dst, path)
    for name, module in src.keras_layers().items():
        got = dst.keras_layers()[name]
        for (_, a), (_, b) in zip(keras_weights_of(module), keras_weights_of(got)):
            np.testing.assert_array_equal(a, b, err_msg=name)


def test_unnamed_layer_count_mismatch_is_reported(tmp_path):
    src = _TinyAutoNamed(0)
    path = tmp_path / "missing.h5"
    # Drop the second unit from the file: the model's conv2d_1 is then missing.
    pruned = {n: [a for _, a in keras_weights_of(m)] for n, m in src.keras_layers().items()
              if n not in ("conv2d_1", "batch_normalization_1")}
    write_keras_h5(path, pruned)
    with pytest.raises(ValueError, match="conv2d_1"):
        load_keras_h5_by_creation_order(_TinyAutoNamed(1), path)
