"""Evaluation metrics computed on host from log-probabilities."""

from __future__ import annotations

import numpy as np


def log_loss_from_logp(logp: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class (natural log), from log-probabilities."""
    if len(labels) == 0:
        return float("nan")
    return float(-np.mean(logp[np.arange(len(labels)), labels]))


def top_k_accuracy(logp: np.ndarray, labels: np.ndarray, k: int) -> float:
    topk = np.argsort(-logp, axis=1)[:, :k]
    return float(np.mean(np.any(topk == labels[:, None], axis=1)))


def basic_metrics(logp: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    return {"accuracy": float(np.mean(np.argmax(logp, 1) == labels)),
            "log_loss": log_loss_from_logp(logp, labels)}


def full_metrics(logp: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, top-5 (when more than 5 classes), log-loss, per-class P/R/F1, confusion."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    n = len(classes)
    labels = np.asarray(labels)
    pred = np.argmax(logp, 1)
    out = basic_metrics(logp, labels, n)
    out["top5_accuracy"] = top_k_accuracy(logp, labels, 5) if n > 5 else None
    p, r, f, s = precision_recall_fscore_support(labels, pred, labels=np.arange(n),
                                                 zero_division=0)
    out["per_class"] = {c: {"precision": float(p[i]), "recall": float(r[i]),
                            "f1": float(f[i]), "support": int(s[i])}
                        for i, c in enumerate(classes)}
    out["confusion"] = confusion_matrix(labels, pred, labels=np.arange(n)).tolist()
    return out
