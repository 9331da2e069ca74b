"""Input normalisation fit on the training split (report 002's ``ImageDataGenerator``
``featurewise_center`` + ``featurewise_std_normalization``, and ``zca_whitening``).

``fit(mode, train_images)`` returns the statistics (``None`` for ``"none"``); they travel in the
train state (``state["norm"]``, replicated, never trained) and are saved beside the run's
weights as ``normalize.npz``, so evaluation and prediction apply exactly what training did.
``apply`` runs inside the jitted steps on uint8-valued float images after augmentation, in
place of the model's own preprocessing. ZCA follows Keras: flatten, centre, covariance
``U S U^T``, whitening matrix ``U diag(1 / sqrt(S + eps)) U^T`` (``eps`` on pixels scaled to
[0, 1]: ``ZCA_EPS``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime import io as bio

# On pixels scaled to [0, 1]. Keras' zca_epsilon is 1e-6; measured here (benchmark_cnn on
# digits at 32 px, Adam 3e-3, 10 epochs, test accuracy; 2-core CPU): no normalisation
# 74.37%, featurewise 85.52%, zca eps 1e-6 30.92%, 1e-2 49.03%, 1e-1 50.97%. A tiny epsilon
# amplifies the near-empty directions (interpolation noise of upscaled images) to unit
# variance; 0.1 is the usual CIFAR choice.
ZCA_EPS = 1e-1
ZCA_MAX_DIM = 64 * 64 * 3   # a D x D whitening matrix: 12,288^2 float32 = 604 MB at the limit
FIT_MAX_IMAGES = 20_000     # statistics from at most this many training images (seeded subset)


def fit(mode: str, images: np.ndarray, seed: int = 0) -> dict | None:
    """Statistics of ``mode`` over uint8 ``images`` (N, H, W, C)."""
    if mode == "none":
        return None
    if len(images) > FIT_MAX_IMAGES:
        idx = np.sort(np.random.default_rng(seed).choice(len(images), FIT_MAX_IMAGES,
                                                         replace=False))
        images = images[idx]
    x = np.asarray(images, np.float32)
    if mode == "featurewise":
        mean = x.mean(axis=(0, 1, 2))
        std = x.std(axis=(0, 1, 2))
        return {"mean": mean.astype(np.float32),
                "scale": (1.0 / np.maximum(std, 1e-6)).astype(np.float32)}
    if mode == "zca":
        d = int(np.prod(x.shape[1:]))
        if d > ZCA_MAX_DIM:
            raise ValueError(f"--normalize zca: {x.shape[1]}x{x.shape[2]}x{x.shape[3]} images "
                             f"give a {d}x{d} whitening matrix; zca accepts at most "
                             f"{ZCA_MAX_DIM} values per image (--image-size 64 or less)")
        flat = x.reshape(len(x), d) / 255.0
        mean = flat.mean(axis=0)
        centred = flat - mean
        cov = centred.T @ centred / max(1, len(flat))
        u, s, _ = np.linalg.svd(cov.astype(np.float64))
        w = (u * (1.0 / np.sqrt(s + ZCA_EPS))) @ u.T
        return {"mean": (mean * 255.0).astype(np.float32),
                "whiten": (w / 255.0).astype(np.float32)}
    raise ValueError(f"--normalize {mode!r}: expected none, featurewise or zca")


def apply(norm: dict, x):
    """Normalise float images ``x`` (N, H, W, C, values 0..255) with fitted statistics."""
    import jax.numpy as jnp

    if "whiten" in norm:
        n = x.shape[0]
        flat = x.reshape(n, -1) - norm["mean"]
        return (flat @ norm["whiten"]).reshape(x.shape)
    return (x - norm["mean"]) * norm["scale"] if norm else jnp.asarray(x)


def save(path: str | Path, norm: dict) -> None:
    keys = sorted(norm)
    bio.save_arrays(path, [norm[k] for k in keys], {"keys": keys})


def load(path: str | Path) -> dict | None:
    path = Path(path)
    if not path.exists():
        return None
    arrays, meta = bio.load_arrays(path)
    keys = meta.get("keys") or []
    if len(keys) != len(arrays):
        raise ValueError(f"{path}: {len(arrays)} arrays for keys {keys}")
    return dict(zip(keys, arrays))
