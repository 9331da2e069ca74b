"""Ensembles of heads and networks: stacking, probability averaging, majority voting.

A member is a ``(name, estimator)`` pair, fit here on its own features, or a
``PrefitMember`` for a model trained elsewhere (a fine-tuned network whose probabilities come
from its run records, or an already fitted head). Members may each see a different feature
matrix (heads on different backbones): pass ``X`` as a ``Views`` (or a dict) keyed by member
name, a list aligned with ``members``, or one array that every member sees.

>>> stack = StackingEnsemble([("r50", LogisticHead()), ("xcp", LogisticHead()),
...                           PrefitMember("inception_ft")])
>>> stack.fit(Views(r50=emb_r50_val, xcp=emb_xcp_val, inception_ft=proba_val), y_val)
>>> stack.predict_proba(Views(r50=emb_r50_test, xcp=emb_xcp_test, inception_ft=proba_test))
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.model_selection import check_cv, cross_val_predict
from sklearn.utils import check_array
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_consistent_length, check_is_fitted, column_or_1d

from ._utils import is_block_list, validate_data
from .heads import LogisticHead

__all__ = ["AveragingEnsemble", "PrefitMember", "StackingEnsemble", "Views", "VotingEnsemble"]

# Level-1 features are log(max(p, LOG_EPS)): a member's confident zeros become -16.1 instead
# of -inf or -34.5 (the 1e-15 log-loss clip), which would dominate the standardised features.
LOG_EPS = 1e-7
# A prefit member's rows must sum to 1 within this (probabilities, not logits).
_PROBA_ATOL = 1e-3


class Views:
    """Row-aligned feature matrices by name (one per member), indexable by rows.

    ``views["r50"]`` is a matrix; ``views[rows]`` (indices, a mask or a slice) is a
    ``Views`` of those rows, so a ``Views`` passes through scikit-learn's cross-validation
    (``cross_val_predict``, ``GridSearchCV``) like an array. ``len`` and ``shape[0]`` count
    rows; ``shape[1]`` is the total number of columns.
    """

    def __init__(self, data: Mapping[str, Any] | None = None, **arrays):
        merged = dict(data or {})
        merged.update(arrays)
        if not merged:
            raise ValueError("Views needs at least one named matrix")
        self._data = {}
        for name, a in merged.items():
            a = np.asarray(a)
            if a.ndim != 2:
                raise ValueError(f"Views[{name!r}] must be 2-D (rows, features), got shape "
                                 f"{a.shape}")
            self._data[str(name)] = a
        lengths = {k: v.shape[0] for k, v in self._data.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"Views: the matrices must have the same number of rows, got "
                             f"{lengths}")

    @property
    def names(self) -> list[str]:
        return list(self._data)

    @property
    def shape(self) -> tuple[int, int]:
        first = next(iter(self._data.values()))
        return first.shape[0], sum(a.shape[1] for a in self._data.values())

    def __len__(self) -> int:
        return self.shape[0]

    def __contains__(self, name) -> bool:
        return name in self._data

    def __getitem__(self, key):
        if isinstance(key, str):
            return self._data[key]
        if isinstance(key, tuple):  # sklearn's _safe_indexing asks for views[rows, ...]
            key = key[0]
        return Views({k: v[key] for k, v in self._data.items()})

    def items(self):
        return self._data.items()

    def __repr__(self) -> str:
        cols = ", ".join(f"{k}: {v.shape[1]}" for k, v in self._data.items())
        return f"Views({self.shape[0]} rows; {cols})"


class PrefitMember:
    """An ensemble member trained elsewhere; the ensemble neither fits nor clones it.

    Without ``estimator``, the member's entry in ``X`` *is* its class probabilities for those
    rows, (n_rows, n_classes) in the order of ``classes`` (default: the ensemble's sorted
    ``classes_``); a network trained outside this package contributes its saved
    probabilities this way. With a fitted ``estimator``, the entry is that estimator's
    features and its ``predict_proba`` is called.

    The probabilities given when the ensemble is *fit* must be out-of-sample for those rows
    (validation-set predictions, or out-of-fold ones), as the estimator members' are: a
    member scored on its own training rows looks better than it is and the stack over-weights
    it.
    """

    def __init__(self, name: str, estimator=None, classes: Sequence | None = None):
        self.name = name
        self.estimator = estimator
        self.classes = None if classes is None else np.asarray(classes)

    def __repr__(self) -> str:
        extra = "" if self.estimator is None else f", estimator={self.estimator!r}"
        return f"PrefitMember({self.name!r}{extra})"

    def proba(self, X, classes: np.ndarray) -> np.ndarray:
        """Probabilities for the rows of X, columns in ``classes`` order."""
        if self.estimator is not None:
            proba = np.asarray(self.estimator.predict_proba(X), dtype=np.float64)
            cols = np.asarray(self.estimator.classes_)
        else:
            proba = check_array(X, dtype=np.float64)
            cols = classes if self.classes is None else self.classes
            if proba.shape[1] != len(cols):
                raise ValueError(
                    f"PrefitMember {self.name!r}: its entry in X must be probabilities with one "
                    f"column per class ({len(cols)}), got shape {proba.shape}"
                )
            sums = proba.sum(axis=1)
            if np.any(proba < 0) or not np.allclose(sums, 1.0, atol=_PROBA_ATOL):
                raise ValueError(
                    f"PrefitMember {self.name!r}: rows must be probabilities (>= 0, summing to "
                    f"1), got row sums in [{sums.min():.4g}, {sums.max():.4g}]; pass softmax "
                    f"outputs, not logits"
                )
        unknown = np.setdiff1d(cols, classes)
        if unknown.size:
            raise ValueError(f"PrefitMember {self.name!r} has classes {unknown.tolist()} that "
                             f"are not in y's classes {classes.tolist()}")
        out = np.zeros((proba.shape[0], len(classes)))
        out[:, np.searchsorted(classes, cols)] = proba  # classes it never predicts stay 0
        return out


def _member_inputs(X, names: list[str], owner: str) -> tuple[list, bool]:
    """Per-member inputs from X, and whether X was one shared matrix."""
    if sp.issparse(X):  # (a dok_matrix is a dict) validate_data says it is not supported
        return [X] * len(names), True
    if isinstance(X, Mapping):
        X = Views(X)
    if isinstance(X, Views):
        missing = [n for n in names if n not in X]
        if missing:
            raise ValueError(f"{owner}: X has no entry for member(s) {missing}; its entries are "
                             f"{X.names}")
        return [X[n] for n in names], False
    if is_block_list(X) and not isinstance(X, np.ndarray):
        if len(X) != len(names):
            raise ValueError(f"{owner}: X is a list of {len(X)} feature matrices but there are "
                             f"{len(names)} members {names}; give one per member")
        inputs = list(X)
        check_consistent_length(*inputs)
        return inputs, False
    return [X] * len(names), True


class _MemberEnsemble(ClassifierMixin, BaseEstimator):
    """Shared handling of ``members``: names, nested parameters, fitting, probabilities."""

    def _named_members(self) -> list[tuple[str, Any]]:
        if not isinstance(self.members, (list, tuple)) or len(self.members) == 0:
            raise ValueError(f"members must be a non-empty list of (name, estimator) pairs or "
                             f"PrefitMember objects, got {self.members!r}")
        pairs = []
        for m in self.members:
            if isinstance(m, PrefitMember):
                pairs.append((m.name, m))
            elif isinstance(m, tuple) and len(m) == 2 and isinstance(m[0], str):
                pairs.append(m)
            else:
                raise ValueError(f"a member must be a (name, estimator) pair or a PrefitMember, "
                                 f"got {m!r}")
        names = [n for n, _ in pairs]
        bad = [n for n in names if "__" in n or not n]
        if bad or len(set(names)) != len(names):
            raise ValueError(f"member names must be unique, non-empty and free of '__', got "
                             f"{names}")
        return pairs

    # Nested parameters (``head__Cs``), as sklearn's Pipeline / StackingClassifier do. Both
    # tolerate malformed members: those are reported by fit, not by get/set_params.
    def _estimator_members(self) -> list[tuple[str, Any]]:
        members = self.members if isinstance(self.members, (list, tuple)) else []
        return [m for m in members if isinstance(m, tuple) and len(m) == 2
                and isinstance(m[0], str) and hasattr(m[1], "get_params")]

    def get_params(self, deep=True):
        params = super().get_params(deep=deep)
        if deep:
            for name, est in self._estimator_members():
                params[name] = est
                for k, v in est.get_params(deep=True).items():
                    params[f"{name}__{k}"] = v
        return params

    def set_params(self, **params):
        if "members" in params:
            self.members = params.pop("members")
        if isinstance(self.members, (list, tuple)):
            def name(m):
                if isinstance(m, PrefitMember):
                    return m.name
                return m[0] if isinstance(m, tuple) and len(m) == 2 else None

            if any(name(m) in params for m in self.members):
                self.members = [(name(m), params.pop(name(m))) if name(m) in params else m
                                for m in self.members]
        return super().set_params(**params)

    def _check_fit_inputs(self, X, y):
        pairs = self._named_members()
        inputs, shared = _member_inputs(X, [n for n, _ in pairs], type(self).__name__)
        if shared:
            X, y = validate_data(self, X, y)
            inputs = [X] * len(pairs)
        else:
            y = column_or_1d(y, warn=True)
            check_consistent_length(inputs[0], y)
        check_classification_targets(y)
        self.classes_ = np.unique(y)
        if len(self.classes_) < 2:
            raise ValueError(f"{type(self).__name__} needs samples of at least 2 classes, got "
                             f"one class (label {self.classes_[0]!r})")
        return pairs, inputs, shared, y

    def _predict_inputs(self, X) -> list:
        check_is_fitted(self)
        inputs, shared = _member_inputs(X, list(self.named_members_), type(self).__name__)
        if shared != self.shared_input_:
            raise ValueError(f"{type(self).__name__} was fit on "
                             f"{'one shared matrix' if self.shared_input_ else 'per-member X'}; "
                             f"predict needs the same form")
        if shared:
            X = validate_data(self, X, reset=False)
            inputs = [X] * len(inputs)
        return inputs

    def _member_proba(self, member, X_m) -> np.ndarray:
        if isinstance(member, PrefitMember):
            return member.proba(X_m, self.classes_)
        return _align_columns(member.predict_proba(X_m), member.classes_, self.classes_)

    def _fit_all(self, pairs, inputs, y) -> None:
        self.named_members_ = {}
        for (name, member), X_m in zip(pairs, inputs):
            self.named_members_[name] = (member if isinstance(member, PrefitMember)
                                         else clone(member).fit(X_m, y))

    def _all_proba(self, X) -> list[np.ndarray]:
        inputs = self._predict_inputs(X)
        return [self._member_proba(m, X_m)
                for m, X_m in zip(self.named_members_.values(), inputs)]


def _align_columns(proba, cols, classes) -> np.ndarray:
    proba = np.asarray(proba, dtype=np.float64)
    if len(cols) == len(classes) and np.array_equal(cols, classes):
        return proba
    out = np.zeros((proba.shape[0], len(classes)))
    out[:, np.searchsorted(classes, cols)] = proba
    return out


class StackingEnsemble(_MemberEnsemble):
    """Stacked generalisation: a level-1 head on the members' out-of-fold probabilities.

    Fit: each ``(name, estimator)`` member's probabilities for the training rows come out of
    fold (``cross_val_predict`` over the same ``cv`` splits for every member); prefit members
    give theirs through X. The level-1 head (default ``LogisticHead()``: multinomial,
    standardised, L2 by cross-validation) is fit on them; each estimator member is then refit
    on all rows for prediction.

    Level-1 features are the members' log-probabilities by default (``meta='log_proba'``):
    a multinomial logistic model on them contains the weighted product of the members,
    softmax(sum_m a_m log p_m + b), as a special case, so it can sharpen or soften each
    member (a temperature), add up independent evidence the way Bayes' rule does, and
    reproduce a single member (a = 1). On raw probabilities (``meta='proba'``) its logits
    are linear in p, which saturates near 0 and 1, where log-loss is decided. Measured in
    ``tests/test_ensembles.py`` (three backbones each seeing part of the signal): test
    log-loss 0.37 on log-probabilities, 0.43 on probabilities, 0.71 averaging, 0.77 best
    single head.

    Args:
      members: list of ``(name, estimator)`` pairs and/or ``PrefitMember`` objects.
      final: the level-1 classifier (cloned); default ``LogisticHead()``.
      cv: folds (int: stratified, unshuffled, as scikit-learn's stacking) or a splitter.
      passthrough: also give the level-1 head the members' features (the shared X, or each
        estimator member's matrix, once per distinct matrix).
      method: ``'predict_proba'`` or ``'decision_function'``, what estimator members give.
      meta: ``'log_proba'`` or ``'proba'`` (applies to probabilities).

    Fitted attributes: ``classes_``, ``named_members_`` (name -> member refit on all rows, or
    the PrefitMember), ``final_``, ``oof_`` (the level-1 training features), ``n_features_in_``
    when X is one shared matrix.
    """

    def __init__(self, members, final=None, *, cv=5, passthrough=False,
                 method="predict_proba", meta="log_proba"):
        self.members = members
        self.final = final
        self.cv = cv
        self.passthrough = passthrough
        self.method = method
        self.meta = meta

    def fit(self, X, y):
        """Fit the members out of fold, the level-1 head on their outputs, refit members.

        Args:
          X: one (n_samples, n_features) matrix, a ``Views``/dict keyed by member name, or a
            list of matrices aligned with ``members``.
          y: (n_samples,) class labels.
        Returns:
          self
        """
        if self.method not in ("predict_proba", "decision_function"):
            raise ValueError(f"method must be 'predict_proba' or 'decision_function', got "
                             f"{self.method!r}")
        if self.meta not in ("log_proba", "proba"):
            raise ValueError(f"meta must be 'log_proba' or 'proba', got {self.meta!r}")
        pairs, inputs, self.shared_input_, y = self._check_fit_inputs(X, y)
        splits = list(check_cv(self.cv, y, classifier=True).split(np.zeros((len(y), 1)), y))
        blocks = []
        for (name, member), X_m in zip(pairs, inputs):
            if isinstance(member, PrefitMember):
                out = member.proba(X_m, self.classes_)
            else:
                out = cross_val_predict(clone(member), X_m, y, cv=splits, method=self.method)
            blocks.append(self._level1(out, member))
        self._fit_all(pairs, inputs, y)
        self.oof_ = self._with_passthrough(blocks, inputs)
        self.final_ = clone(self.final if self.final is not None else LogisticHead())
        self.final_.fit(self.oof_, y)
        return self

    def _level1(self, out, member) -> np.ndarray:
        out = np.asarray(out, dtype=np.float64)
        if out.ndim == 1:  # binary decision_function
            return out[:, None]
        if self.method == "predict_proba" or isinstance(member, PrefitMember):
            if self.meta == "log_proba":
                return np.log(np.clip(out, LOG_EPS, 1.0))
            if out.shape[1] == 2:
                return out[:, 1:]  # the other column is 1 minus this one
        return out

    def _with_passthrough(self, blocks, inputs) -> np.ndarray:
        if self.passthrough:
            seen = set()
            for (name, member), X_m in zip(self._named_members(), inputs):
                if not isinstance(member, PrefitMember) and id(X_m) not in seen:
                    seen.add(id(X_m))
                    blocks.append(np.asarray(X_m, dtype=np.float64))
        return np.concatenate(blocks, axis=1)

    def level1_features(self, X) -> np.ndarray:
        """Level-1 features for new rows (members refit on all training rows).

        (Not ``transform``: that would make this a transformer to scikit-learn's checks.)
        """
        inputs = self._predict_inputs(X)
        blocks = []
        for member, X_m in zip(self.named_members_.values(), inputs):
            if isinstance(member, PrefitMember):
                out = member.proba(X_m, self.classes_)
            elif self.method == "predict_proba":
                out = _align_columns(member.predict_proba(X_m), member.classes_, self.classes_)
            else:
                out = member.decision_function(X_m)
            blocks.append(self._level1(out, member))
        return self._with_passthrough(blocks, inputs)

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, (n_samples, n_classes), columns in ``classes_`` order."""
        level1 = self.level1_features(X)  # checks it is fitted first
        return _align_columns(self.final_.predict_proba(level1), self.final_.classes_,
                              self.classes_)

    def predict(self, X) -> np.ndarray:
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]


class AveragingEnsemble(_MemberEnsemble):
    """Weighted mean of the members' probabilities (estimator members are fit on all rows).

    Args:
      members: list of ``(name, estimator)`` pairs and/or ``PrefitMember`` objects.
      weights: one non-negative weight per member (normalised), or None for equal weights.
    """

    def __init__(self, members, weights=None):
        self.members = members
        self.weights = weights

    def _weights(self, n: int) -> np.ndarray:
        if self.weights is None:
            return np.full(n, 1.0 / n)
        w = np.asarray(self.weights, dtype=np.float64)
        if w.shape != (n,) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError(f"weights must be {n} non-negative numbers, not all 0, got "
                             f"{self.weights!r}")
        return w / w.sum()

    def fit(self, X, y):
        """Fit the estimator members on all rows. Returns self."""
        pairs, inputs, self.shared_input_, y = self._check_fit_inputs(X, y)
        self.weights_ = self._weights(len(pairs))
        self._fit_all(pairs, inputs, y)
        return self

    def predict_proba(self, X) -> np.ndarray:
        probas = self._all_proba(X)  # checks it is fitted first
        return sum(w * p for w, p in zip(self.weights_, probas))

    def predict(self, X) -> np.ndarray:
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]


class VotingEnsemble(_MemberEnsemble):
    """Majority vote of the members' top classes; a tie goes to the tied class with the
    highest mean probability (then to the first in ``classes_``).

    Hard votes are not probabilities, so there is no ``predict_proba``; ``votes(X)`` gives
    the counts.
    """

    def __init__(self, members):
        self.members = members

    def fit(self, X, y):
        """Fit the estimator members on all rows. Returns self."""
        pairs, inputs, self.shared_input_, y = self._check_fit_inputs(X, y)
        self._fit_all(pairs, inputs, y)
        return self

    def _votes_and_mean(self, X):
        probas = self._all_proba(X)
        votes = np.zeros_like(probas[0])
        rows = np.arange(votes.shape[0])
        for p in probas:
            votes[rows, np.argmax(p, axis=1)] += 1
        return votes, np.mean(probas, axis=0)

    def votes(self, X) -> np.ndarray:
        """(n_samples, n_classes) number of members voting for each class."""
        return self._votes_and_mean(X)[0].astype(np.int64)

    def predict(self, X) -> np.ndarray:
        votes, mean = self._votes_and_mean(X)  # checks it is fitted first
        tied = votes == votes.max(axis=1, keepdims=True)
        # Mean probabilities are in [0, 1]: adding them can only reorder the tied classes.
        return self.classes_[np.argmax(np.where(tied, mean, -1.0), axis=1)]
