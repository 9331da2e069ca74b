"""Small helpers shared by the heads and the ensembles: input checks and numerics."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.utils.validation import validate_data  # noqa: F401  (scikit-learn >= 1.6)


def is_block_list(X: Any) -> bool:
    """True for a list/tuple of 2-D arrays (feature blocks), not for a list of rows."""
    return (
        isinstance(X, (list, tuple))
        and len(X) > 0
        and all(hasattr(b, "shape") and len(b.shape) == 2 for b in X)
    )


def concat_blocks(blocks, what: str = "X") -> np.ndarray:
    """Concatenate row-aligned 2-D feature blocks along the feature axis."""
    lengths = [b.shape[0] for b in blocks]
    if len(set(lengths)) != 1:
        raise ValueError(
            f"{what}: the feature blocks must have the same number of rows (one per image), "
            f"got {lengths}"
        )
    return np.concatenate([np.asarray(b) for b in blocks], axis=1)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def full_logits(X: np.ndarray, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
    """Logits for all classes; a binary model's single column gets a zero column in front."""
    z = X @ coef.T + intercept
    if coef.shape[0] == 1:
        z = np.concatenate([np.zeros_like(z), z], axis=1)
    return z
