"""Shared helper for Keras parity tests: a Flax model loaded from a Keras model's ``.h5`` must
compute what the Keras model computes.

Used by ``test_keras_parity.py`` and the other families' parity tests::

    from keras_parity import check_parity
    check_parity("resnet50", keras.applications.ResNet50, (32, 32), 10, tmp_path)

Relative error is ``max|flax - keras| / max|keras|`` over the whole output array (float32).
"""

from __future__ import annotations

import os
import warnings

os.environ.setdefault("KERAS_BACKEND", "jax")

from pathlib import Path
from typing import Any, Callable

import numpy as np

TOLERANCE = 1e-4  # max relative error, float32, see rel_err
_PERTURBED = ("bias", "beta", "moving_mean", "gamma", "moving_variance")


def rel_err(a, b) -> float:
    """``max|a - b| / max|b|``: the error relative to the reference ``b``'s largest value."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def perturb_statistics(keras_model, rng: np.random.Generator) -> int:
    """Give biases and BatchNorm statistics non-trivial values (Keras initialises them to
    0 and 1, which would hide a swapped mean/variance or a missing bias). Returns the number of
    arrays changed."""
    changed = 0
    for layer in keras_model.layers:
        for var in layer.weights:
            short = var.path.rsplit("/", 1)[-1]
            if short not in _PERTURBED:
                continue
            shape = tuple(var.shape)
            if short in ("gamma", "moving_variance"):
                value = rng.uniform(0.5, 1.5, shape)
            else:
                value = rng.normal(0.0, 0.2, shape)
            var.assign(value.astype(np.float32))
            changed += 1
    return changed


def save_keras2_h5(keras_model, path: str | os.PathLike) -> None:
    """Write a Keras 3 model's weights in the Keras-2 ``.h5`` layout, with Keras' own legacy
    writer (``layer_names`` at the root, ``weight_names`` per layer, Keras' weight order)."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(os.fspath(path), "w") as f, warnings.catch_warnings():
        # Keras' np.array(variable) warns about numpy 2's copy= keyword, once per weight.
        warnings.simplefilter("ignore", DeprecationWarning)
        legacy_h5_format.save_weights_to_hdf5_group(f, keras_model)


def _keras_out(keras_model, x: np.ndarray) -> np.ndarray:
    return np.asarray(keras_model(x, training=False))


def check_parity(
    flax_name: str,
    keras_ctor: Callable[..., Any],
    input_hw: tuple[int, int],
    num_classes: int,
    tmp_path: str | os.PathLike,
    *,
    seed: int = 0,
    batch: int = 2,
    check_embedding: bool = True,
    check_logits: bool = True,
    tolerance: float = TOLERANCE,
    keras_kwargs: dict | None = None,
    flax_overrides: dict | None = None,
) -> dict[str, float]:
    """Build ``keras_ctor`` with random weights, save it as Keras-2 ``.h5``, load it into
    ``models.create_model(flax_name, ...)`` and compare outputs on the same input.

    * embedding: Keras ``include_top=False, pooling="avg"`` vs the Flax model with
      ``num_classes=0`` (``model(x)`` and ``model.embed(x)``);
    * logits: Keras ``include_top=True, classes=num_classes, classifier_activation=None`` vs
      the Flax model with ``num_classes``.

    Args:
      input_hw: input height and width (the smallest Keras accepts keeps the test fast).
      keras_kwargs / flax_overrides: extra constructor arguments (e.g. ``alpha``).

    Returns:
      ``{"embedding": rel_err, "logits": rel_err}`` for the checks run; asserts each is at most
      ``tolerance`` (see ``rel_err``).
    """
    import keras

    import models

    tmp_path = Path(tmp_path)
    keras_kwargs = dict(keras_kwargs or {})
    flax_overrides = dict(flax_overrides or {})
    rng = np.random.default_rng(seed)
    h, w = input_hw
    x = rng.normal(0.0, 1.0, (batch, h, w, 3)).astype(np.float32)
    errors: dict[str, float] = {}

    cases = []
    if check_embedding:
        cases.append(("embedding", 0, dict(include_top=False, pooling="avg")))
    if check_logits:
        cases.append(("logits", num_classes,
                      dict(include_top=True, classes=num_classes, classifier_activation=None)))
    for kind, nc, top_kwargs in cases:
        keras.utils.set_random_seed(seed)
        km = keras_ctor(weights=None, input_shape=(h, w, 3), **top_kwargs, **keras_kwargs)
        assert perturb_statistics(km, rng) > 0
        path = tmp_path / f"{flax_name}_{kind}.h5"
        save_keras2_h5(km, path)
        expected = _keras_out(km, x)
        del km

        fm = models.create_model(flax_name, num_classes=nc, weights=str(path), **flax_overrides)
        fm.eval()
        got = np.asarray(fm(x))
        assert got.shape == expected.shape, (kind, got.shape, expected.shape)
        errors[kind] = rel_err(got, expected)
        if kind == "embedding":
            assert fm.num_features == expected.shape[-1]
            errors["embed()"] = rel_err(np.asarray(fm.embed(x)), expected)
        del fm

    for kind, err in errors.items():
        assert err <= tolerance, (
            f"{flax_name} vs {getattr(keras_ctor, '__name__', keras_ctor)}: {kind} relative "
            f"error {err:.3g} > {tolerance:g} (input {h}x{w})"
        )
    return errors
