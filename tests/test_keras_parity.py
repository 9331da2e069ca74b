"""Flax models loaded from a Keras model's ``.h5`` compute what keras.applications computes.

Each case builds the Keras model with random weights (biases and BatchNorm statistics set to
non-trivial values), saves it in the Keras-2 ``.h5`` layout with Keras' own writer, loads it
through ``models.create_model(name, weights=path)`` and compares the pooled embedding
(Keras ``include_top=False, pooling="avg"``) and the logits (``include_top=True``, 10 classes,
no softmax) at the smallest input Keras accepts: max relative error <= 1e-4 (float32), with
relative error ``max|flax - keras| / max|keras|``.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import pytest

keras = pytest.importorskip("keras")

import models  # noqa: E402
from keras_parity import TOLERANCE, check_parity  # noqa: E402

if keras.backend.backend() != "jax":  # KERAS_BACKEND was set to another backend before us
    pytest.skip(f"Keras backend is {keras.backend.backend()!r}, these tests need 'jax'",
                allow_module_level=True)

# name, Keras constructor, (H, W), extra arguments of both sides
CASES = [
    ("resnet50", "ResNet50", (32, 32), {}, {}),
    ("mobilenet_v2", "MobileNetV2", (32, 32), {}, {}),
    # The Flax VGG16 top is sized for input_size; Keras sizes it from input_shape.
    ("vgg16", "VGG16", (32, 32), {}, {"input_size": (32, 32)}),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,ctor,hw,keras_kw,flax_kw", CASES, ids=[c[0] for c in CASES])
def test_keras_parity(name, ctor, hw, keras_kw, flax_kw, tmp_path):
    if not models.list_models(name):
        pytest.skip(f"model {name!r} is not registered (its family file is not written yet)")
    errors = check_parity(name, getattr(keras.applications, ctor), hw, 10, tmp_path,
                          keras_kwargs=keras_kw, flax_overrides=flax_kw)
    assert set(errors) == {"embedding", "embed()", "logits"}
    assert max(errors.values()) <= TOLERANCE


@pytest.mark.slow
def test_mobilenet_v2_alpha_and_odd_input(tmp_path):
    """Another width (every layer's size changes) and an odd input size (``correct_pad`` pads
    both sides before a stride-2 depthwise conv, not just the bottom/right)."""
    errors = check_parity("mobilenet_v2", keras.applications.MobileNetV2, (33, 35), 10,
                          tmp_path, check_logits=False, keras_kwargs={"alpha": 0.35},
                          flax_overrides={"alpha": 0.35})
    assert errors["embedding"] <= TOLERANCE
