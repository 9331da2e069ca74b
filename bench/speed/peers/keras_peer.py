"""The Keras 3 peer: the same architecture from ``keras.applications`` (or, for the CIFAR
ResNets, built here), timed with ``train_on_batch`` / ``predict_on_batch``.

Keras runs on its JAX backend unless ``KERAS_BACKEND`` says otherwise before Keras is first
imported (the row's note names the backend). Both calls are jit-compiled by Keras; the first
call's time, less one step, is reported as compile time. bf16 is Keras' ``mixed_bfloat16``
policy (float32 variables, bfloat16 compute), set for the build and restored afterwards.
Inputs live on the device already, as ours do.
"""

from __future__ import annotations

import os
import sys

from ..timing import new_row, time_calls

# Our name -> the keras.applications constructor of the same architecture.
APPLICATIONS = {
    "resnet50": lambda app: app.ResNet50,
    "vgg16": lambda app: app.VGG16,
    "inception_v3": lambda app: app.InceptionV3,
    "xception": lambda app: app.Xception,
    "mobilenet_v2": lambda app: app.MobileNetV2,
    "inception_resnet_v2": lambda app: app.InceptionResNetV2,
}
CIFAR_RESNETS = {"resnet20": 20, "resnet32": 32, "resnet44": 44, "resnet56": 56, "resnet110": 110}
_LEARNING_RATE = 0.01


def _import_keras():
    if "keras" not in sys.modules:
        os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras

    return keras


def cifar_resnet(keras, depth: int, image_size: int, num_classes: int):
    """He et al.'s CIFAR ResNet-(6n+2) with option-A shortcuts (as ``models.cifar_resnet``):
    16/32/64 filters, identity shortcuts subsampled and zero-padded where the shape changes."""
    from keras import layers, ops

    n = (depth - 2) // 6

    def conv_bn(x, filters, stride, relu=True):
        x = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False,
                          kernel_initializer="he_normal")(x)
        x = layers.BatchNormalization()(x)
        return layers.ReLU()(x) if relu else x

    def shortcut_a(x, filters, stride):
        extra = filters - x.shape[-1]

        def f(t):
            if stride > 1:
                t = t[:, ::stride, ::stride, :]
            return ops.pad(t, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))

        return layers.Lambda(f)(x) if (stride > 1 or extra) else x

    inputs = keras.Input((image_size, image_size, 3))
    x = conv_bn(inputs, 16, 1)
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(n):
            stride = 2 if stage > 0 and block == 0 else 1
            y = conv_bn(conv_bn(x, filters, stride), filters, 1, relu=False)
            x = layers.ReLU()(layers.Add()([y, shortcut_a(x, filters, stride)]))
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(num_classes)(x)
    return keras.Model(inputs, outputs, name=f"resnet{depth}")


def build(keras, name: str, image_size: int, num_classes: int):
    """The Keras model for our ``name``, or None when Keras has no equivalent."""
    if name in CIFAR_RESNETS:
        return cifar_resnet(keras, CIFAR_RESNETS[name], image_size, num_classes)
    if name in APPLICATIONS:
        constructor = APPLICATIONS[name](keras.applications)
        return constructor(include_top=True, weights=None, classes=num_classes,
                           input_shape=(image_size, image_size, 3), classifier_activation=None)
    return None


def measure(model: str, *, batch_size: int, image_size: int, precision: str = "fp32",
            warmup: int = 2, repeats: int = 10, train: bool = True, infer: bool = True,
            num_classes: int | None = None, **_ignored) -> dict:
    """A ``bench.speed`` row for ``model`` in Keras (``note`` says why when it cannot run)."""
    import numpy as np

    import models

    row = new_row(model, "keras", precision, image_size, batch_size)
    try:
        keras = _import_keras()
    except ImportError as e:  # not installed, or its backend is not
        row["note"] = f"keras not installed ({e})"
        return row
    if model not in CIFAR_RESNETS and model not in APPLICATIONS:
        row["note"] = f"no Keras equivalent of {model}"
        return row
    num_classes = num_classes or models.get_model_info(model).num_classes
    backend = keras.backend.backend()
    old_policy = keras.config.dtype_policy()
    if precision == "bf16":
        keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        net = build(keras, model, image_size, num_classes)
    finally:
        keras.config.set_dtype_policy(old_policy)
    net.compile(optimizer=keras.optimizers.SGD(_LEARNING_RATE, momentum=0.9),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch_size, image_size, image_size, 3), np.float32)
    y = rng.integers(0, num_classes, batch_size).astype(np.int32)
    x, y = keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(y)
    row.update(params=int(net.count_params()), devices=1, device=_device(backend),
               note=f"keras {keras.__version__}, {backend} backend; "
                    "train_on_batch / predict_on_batch")
    phases = []
    if train:
        phases.append(("train", lambda: net.train_on_batch(x, y)))  # returns a float: synced
    if infer:
        phases.append(("infer", lambda: net.predict_on_batch(x)))  # returns numpy: synced
    losses = []
    for phase, call in phases:
        first, median = time_calls(call, warmup, repeats)
        row[f"{phase}_img_per_s"] = batch_size / median
        row[f"{phase}_step_ms"] = 1000 * median
        row[f"{phase}_compile_s"] = max(0.0, first - median)
        if phase == "train":
            losses.append(float(net.train_on_batch(x, y)))
    if losses and not np.isfinite(losses[-1]):
        row["note"] += "; the train loss is not finite"
    return row


def _device(backend: str) -> str:
    if backend == "jax":
        import jax

        return f"1x {jax.devices()[0].device_kind}"
    return backend
