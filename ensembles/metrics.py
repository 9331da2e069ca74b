"""Scores for class probabilities, and a comparison table of members and ensembles.

Probabilities are (n_samples, n_classes) arrays whose columns are the classes ``labels``
(default ``0..n_classes-1``); a 1-D array is a binary problem's probability of class 1.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

__all__ = [
    "accuracy",
    "combined_throughput",
    "compare",
    "expected_calibration_error",
    "log_loss",
    "log_loss_difference",
    "top_k_accuracy",
]

# Kaggle's log-loss metric clips every probability to [1e-15, 1 - 1e-15] (after dividing
# each row by its sum), so one confident mistake costs at most -log(1e-15) = 34.5.
KAGGLE_EPS = 1e-15


def _as_proba(proba) -> np.ndarray:
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim == 1:
        p = np.stack([1.0 - p, p], axis=1)
    if p.ndim != 2:
        raise ValueError(f"probabilities must be (n_samples, n_classes) or (n_samples,), got "
                         f"shape {p.shape}")
    return p


def _class_index(y, n_columns: int, labels: Sequence | None) -> np.ndarray:
    """Column index of each label; labels default to 0..n_columns-1."""
    y = np.asarray(y).ravel()
    labels = np.arange(n_columns) if labels is None else np.asarray(labels)
    if len(labels) != n_columns:
        raise ValueError(f"{len(labels)} labels for {n_columns} probability columns")
    order = np.argsort(labels, kind="stable")
    pos = np.searchsorted(labels[order], y)
    pos = np.clip(pos, 0, len(labels) - 1)
    idx = order[pos]
    unknown = labels[idx] != y
    if np.any(unknown):
        raise ValueError(f"labels {np.unique(y[unknown])[:5].tolist()} in y are not among the "
                         f"probability columns' labels {labels[:10].tolist()}")
    return idx


def _check_lengths(y, p) -> None:
    if len(np.asarray(y).ravel()) != p.shape[0]:
        raise ValueError(f"y has {len(np.asarray(y).ravel())} labels, the predictions "
                         f"{p.shape[0]} rows")


def accuracy(y, proba_or_pred, labels: Sequence | None = None) -> float:
    """Top-1 accuracy of probabilities (argmax) or of predicted labels (1-D, same type as y)."""
    pred = np.asarray(proba_or_pred)
    if pred.ndim == 2:
        _check_lengths(y, pred)
        y_idx = _class_index(y, pred.shape[1], labels)
        return float(np.mean(np.argmax(pred, axis=1) == y_idx))
    y = np.asarray(y).ravel()
    if len(y) != len(pred):
        raise ValueError(f"y has {len(y)} labels, the predictions {len(pred)}")
    return float(np.mean(pred == y))


def top_k_accuracy(y, proba, k: int = 5, labels: Sequence | None = None) -> float:
    """Fraction of rows whose true class is among the k most probable (ties count for it)."""
    p = _as_proba(proba)
    _check_lengths(y, p)
    y_idx = _class_index(y, p.shape[1], labels)
    if k >= p.shape[1]:
        return 1.0
    true_p = p[np.arange(len(y_idx)), y_idx]
    # The true class is in the top k when fewer than k classes are strictly more probable.
    return float(np.mean((p > true_p[:, None]).sum(axis=1) < k))


def log_loss(y, proba, eps: float = KAGGLE_EPS, labels: Sequence | None = None) -> float:
    """Mean negative log-probability of the true class, Kaggle-style.

    Each row is divided by its sum, then clipped to [eps, 1 - eps], as Kaggle's metric does
    (eps = 1e-15). Report 001 scored 0.04150 on Kaggle's Dogs vs. Cats Redux this way; the
    notebook it follows (ypwhs/dogs_vs_cats) clipped its submitted probabilities to
    [0.005, 0.995] first, which caps one confident mistake at -log(0.005) = 5.3 for a
    floor of -log(0.995) = 0.005 on every right answer: ``log_loss(y, p, eps=0.005)`` scores
    such a submission.
    """
    return float(np.mean(_per_sample_log_loss(y, proba, eps, labels)))


def _per_sample_log_loss(y, proba, eps: float, labels) -> np.ndarray:
    p = _as_proba(proba)
    _check_lengths(y, p)
    y_idx = _class_index(y, p.shape[1], labels)
    p = p / p.sum(axis=1, keepdims=True)
    return -np.log(np.clip(p[np.arange(len(y_idx)), y_idx], eps, 1.0 - eps))


def log_loss_difference(y, proba_a, proba_b, eps: float = KAGGLE_EPS,
                        labels: Sequence | None = None, n_boot: int = 2000, seed: int = 0,
                        level: float = 0.95) -> dict:
    """Log-loss of ``a`` minus that of ``b`` on the same rows, with a paired bootstrap
    confidence interval (rows resampled with replacement, ``n_boot`` times): whether a gap
    between two methods on one test split is larger than the split's sampling noise.

    Returns ``{'diff', 'lo', 'hi'}``.
    """
    d = _per_sample_log_loss(y, proba_a, eps, labels) - _per_sample_log_loss(
        y, proba_b, eps, labels)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(d), size=(n_boot, len(d)))
    boots = d[idx].mean(axis=1)
    alpha = (1.0 - level) / 2
    return {"diff": float(d.mean()), "lo": float(np.quantile(boots, alpha)),
            "hi": float(np.quantile(boots, 1 - alpha))}


def expected_calibration_error(y, proba, n_bins: int = 15,
                               labels: Sequence | None = None) -> float:
    """Top-label ECE: sum over equal-width confidence bins of |accuracy - confidence| weighted
    by the bin's share of rows (Guo et al. 2017, 15 bins; bins are (lo, hi], the first [0, hi]).
    """
    p = _as_proba(proba)
    _check_lengths(y, p)
    y_idx = _class_index(y, p.shape[1], labels)
    conf = p.max(axis=1)
    correct = (np.argmax(p, axis=1) == y_idx).astype(np.float64)
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    gap = np.abs(np.bincount(bins, correct, n_bins) - np.bincount(bins, conf, n_bins))
    return float(gap.sum() / max(count.sum(), 1))


def combined_throughput(images_per_s: Sequence[float]) -> float:
    """Images/s of running several models one after the other on each image: 1 / sum(1/ips)."""
    ips = np.asarray(images_per_s, dtype=np.float64)
    if ips.size == 0 or np.any(ips <= 0):
        raise ValueError(f"throughputs must be positive, got {list(images_per_s)}")
    return float(1.0 / np.sum(1.0 / ips))


def compare(
    members: Mapping[str, np.ndarray],
    y,
    costs: Mapping[str, float] | None = None,
    *,
    ensembles: Mapping[str, Sequence[str]] | None = None,
    labels: Sequence | None = None,
    k: int = 5,
    eps: float = KAGGLE_EPS,
    best_by: str = "log_loss",
) -> list[dict]:
    """Rows for a results table: one per method, scored on the same labels.

    Args:
      members: method name -> (n_samples, n_classes) probabilities (single models and
        ensembles alike), in the order the rows should appear.
      y: (n_samples,) true labels.
      costs: method name -> inference images/s, where measured.
      ensembles: ensemble name -> the names of the models it runs; an ensemble missing from
        ``costs`` gets their combined throughput 1 / sum(1/ips_i) (each image goes through
        every model; a head's own cost is negligible). Name backbones, not heads, when two
        heads share one backbone's features.
      labels, eps: as ``log_loss``.
      k: the top-k column.
      best_by: ``'log_loss'`` (lowest wins) or ``'accuracy'`` (highest wins).

    Returns:
      a list of flat dicts with keys method, accuracy, top{k}, log_loss, ece, img_per_s
      (None where unknown) and best (True on exactly one row).
    """
    if best_by not in ("log_loss", "accuracy"):
        raise ValueError(f"best_by must be 'log_loss' or 'accuracy', got {best_by!r}")
    if not members:
        raise ValueError("compare needs at least one method")
    costs = dict(costs or {})
    for name, parts in (ensembles or {}).items():
        if name not in costs and all(p in costs for p in parts):
            costs[name] = combined_throughput([costs[p] for p in parts])
    rows = []
    for name, proba in members.items():
        rows.append({
            "method": name,
            "accuracy": accuracy(y, _as_proba(proba), labels),
            f"top{k}": top_k_accuracy(y, proba, k, labels),
            "log_loss": log_loss(y, proba, eps, labels),
            "ece": expected_calibration_error(y, proba, labels=labels),
            "img_per_s": costs.get(name),
            "best": False,
        })
    sign = 1.0 if best_by == "log_loss" else -1.0
    best = min(range(len(rows)), key=lambda i: sign * rows[i][best_by])
    rows[best]["best"] = True
    return rows
