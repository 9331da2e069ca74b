"""Greedy ensemble selection (Caruana et al. 2004), with replacement.

Start from an empty ensemble; ``n_iter`` times, add the member (any member, again and again
if it helps: *with replacement*) whose addition gives the lowest loss of the running mean of
the selected members' probabilities on the rows given to ``fit``. The weights are how often
each member was picked, divided by ``n_iter``. This is AutoGluon's ``WeightedEnsemble`` and
auto-sklearn's ensemble builder.

Fit it on predictions of rows the members were not trained on (a validation split, or
out-of-fold predictions): selection on training-row predictions favours the members that
overfit most.

>>> sel = GreedyEnsembleSelection(n_iter=25).fit([p_val_a, p_val_b], y_val)  # doctest: +SKIP
>>> sel.weights_, sel.predict_proba([p_test_a, p_test_b])                    # doctest: +SKIP
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from .metrics import KAGGLE_EPS, _class_index

__all__ = ["GreedyEnsembleSelection"]


def _stack(P) -> np.ndarray:
    """Member probabilities as one (n_members, n_samples, n_classes) float64 array."""
    if isinstance(P, np.ndarray):
        A = np.asarray(P, dtype=np.float64)
    else:
        parts = [np.asarray(p, dtype=np.float64) for p in P]
        if not parts:
            raise ValueError("GreedyEnsembleSelection needs at least one member, got none")
        shapes = {p.shape for p in parts}
        if len(shapes) != 1:
            raise ValueError(f"member probabilities must all have one shape, got "
                             f"{sorted(shapes)}")
        A = np.stack(parts)
    if A.ndim != 3:
        raise ValueError(f"member probabilities must be (n_members, n_samples, n_classes) or "
                         f"a list of (n_samples, n_classes) arrays, got shape {A.shape}")
    if A.shape[0] == 0:
        raise ValueError("GreedyEnsembleSelection needs at least one member, got none")
    if np.any(~np.isfinite(A)) or np.any(A < 0):
        raise ValueError("member probabilities must be finite and non-negative")
    return A


class GreedyEnsembleSelection(ClassifierMixin, BaseEstimator):
    """Caruana's forward selection with replacement over members' class probabilities.

    Args:
      n_iter: number of picks (AutoGluon uses 25 for its weighted ensemble; the weights are
        multiples of 1 / n_iter).
      metric: ``'log_loss'`` (rows renormalised, clipped to [eps, 1 - eps]) or
        ``'error'`` (1 - accuracy; ties broken by log-loss).
      eps: log-loss clip.

    ``fit(P, y)`` and ``predict_proba(P)`` take the members' probabilities: a list of
    (n_samples, n_classes) arrays or one (n_members, n_samples, n_classes) array, columns in
    ``classes_`` order (the sorted labels of ``y``), members in the same order both times.

    Fitted attributes: ``weights_`` (n_members,) summing to 1, ``counts_`` (picks per
    member), ``order_`` (member picked at each iteration), ``scores_`` (the running
    ensemble's loss after each pick), ``classes_``, ``n_members_``. Ties go to the member
    listed first, so the result is deterministic.
    """

    def __init__(self, n_iter: int = 25, metric: str = "log_loss", eps: float = KAGGLE_EPS):
        self.n_iter = n_iter
        self.metric = metric
        self.eps = eps

    def _loss(self, mean: np.ndarray, y_idx: np.ndarray) -> np.ndarray:
        """Loss of each candidate ensemble: ``mean`` is (n_candidates, n_samples, k)."""
        p = mean / mean.sum(axis=2, keepdims=True)
        true = np.clip(p[:, np.arange(len(y_idx)), y_idx], self.eps, 1.0 - self.eps)
        ll = -np.log(true).mean(axis=1)
        if self.metric == "log_loss":
            return ll
        err = (np.argmax(p, axis=2) != y_idx[None]).mean(axis=1)
        return err + 1e-9 * ll / (1.0 + ll)  # lexicographic: error first, log-loss breaks ties

    def fit(self, P, y):
        if not (isinstance(self.n_iter, (int, np.integer)) and self.n_iter >= 1):
            raise ValueError(f"n_iter must be a positive integer, got {self.n_iter!r}")
        if self.metric not in ("log_loss", "error"):
            raise ValueError(f"metric must be 'log_loss' or 'error', got {self.metric!r}")
        A = _stack(P)
        y = np.asarray(y).ravel()
        if len(y) != A.shape[1]:
            raise ValueError(f"y has {len(y)} labels, the member predictions {A.shape[1]} rows")
        self.classes_ = np.unique(y)
        labels = (np.arange(A.shape[2]) if len(self.classes_) != A.shape[2]
                  else self.classes_)
        y_idx = _class_index(y, A.shape[2], labels)
        m = A.shape[0]
        total = np.zeros(A.shape[1:])
        counts = np.zeros(m, np.int64)
        order, scores = [], []
        for it in range(int(self.n_iter)):
            cand = (total[None] + A) / (it + 1)  # the running mean with each member added
            loss = self._loss(cand, y_idx)
            j = int(np.argmin(loss))  # argmin: the first of equal losses
            total += A[j]
            counts[j] += 1
            order.append(j)
            scores.append(float(loss[j]))
        self.counts_ = counts
        self.weights_ = counts / counts.sum()
        self.order_ = np.asarray(order)
        self.scores_ = np.asarray(scores)
        self.n_members_ = m
        return self

    def predict_proba(self, P) -> np.ndarray:
        if not hasattr(self, "weights_"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError("GreedyEnsembleSelection is not fitted; call fit first")
        A = _stack(P)
        if A.shape[0] != self.n_members_:
            raise ValueError(f"fit saw {self.n_members_} members, predict_proba got "
                             f"{A.shape[0]}")
        p = np.tensordot(self.weights_, A, axes=1)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, P) -> np.ndarray:
        p = self.predict_proba(P)
        if len(self.classes_) == p.shape[1]:
            return self.classes_[np.argmax(p, axis=1)]
        return np.argmax(p, axis=1)

    def score(self, P, y, sample_weight=None) -> float:
        from sklearn.metrics import accuracy_score

        return float(accuracy_score(y, self.predict(P), sample_weight=sample_weight))


def selection_weights(members: Sequence[np.ndarray], y, n_iter: int = 25) -> np.ndarray:
    """The weights ``GreedyEnsembleSelection(n_iter).fit(members, y)`` gives."""
    return GreedyEnsembleSelection(n_iter=n_iter).fit(members, y).weights_
