"""Level-1 combiners of members' out-of-sample probabilities, and their own out-of-fold scores.

Every combiner here is fit on probabilities the members made for rows they were not trained
on (out-of-fold predictions, or a validation split) and is a scikit-learn estimator over a
list of (n_samples, n_classes) arrays (or one (n_members, n_samples, n_classes) array):

* ``fit_temperature`` / ``temper``: one temperature per member, fit by log-loss (Guo et al.
  2017), so that an over-confident member does not dominate an average;
* ``BaggedGreedySelection``: Caruana et al. 2006 ("Getting the most out of ensemble
  selection"): sorted initialisation, forward selection with replacement, the best prefix
  kept, bagged over random member subsets; members temperature-scaled first;
* ``TopKAverage``: the mean of the k best members (by their own loss on the fit rows), k
  chosen on those rows; in place of a uniform average of every member;
* ``LogProbaStack``: a logistic model on the members' log-probabilities (all of them, or
  one weight per member: a log-linear pool), form and L2 strength chosen by
  cross-validation over the fit rows;
* ``cross_fit_predict``: a combiner's out-of-fold predictions over its fit rows (what its
  validation score is computed from: a combiner scored on the rows it was fit on would look
  better than it is).

Columns are class indices 0..n_classes-1 and ``y`` holds those indices.

>>> sel = BaggedGreedySelection().fit([p_oof_a, p_oof_b], y_oof)        # doctest: +SKIP
>>> sel.weights_, sel.temperatures_, sel.predict_proba([p_test_a, p_test_b])  # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.model_selection import StratifiedKFold

from ._utils import full_logits, softmax
from .metrics import KAGGLE_EPS
from .selection import _stack

__all__ = ["BaggedGreedySelection", "LogProbaStack", "TopKAverage", "cross_fit_predict",
           "fit_temperature", "temper"]

# Temperatures are searched in [1/2, 20]. Sharpening is capped at 2x: on fit rows a member
# classifies without a mistake (a small validation split), the log-loss keeps falling as T
# goes to 0, and a one-hot member then pays 34.5 nats for each mistake on new images.
# Softening is not capped as tightly (over-confident networks need T of 2-5).
T_BOUNDS = (1.0, 20.0)  # soften only: fit on a few hundred rows nearly all right, T < 1
# sharpened members and lost on test (Dogs vs. Cats, 12-minute zoo: a top-1 average 0.0430
# against its member's own 0.0286)
# Level-1 features of the stack: log(max(p, LOG_EPS)) (as ensembles.stacking).
LOG_EPS = 1e-7


def _labels(y, A: np.ndarray) -> np.ndarray:
    y = np.asarray(y).ravel()
    if len(y) != A.shape[1]:
        raise ValueError(f"y has {len(y)} labels, the member predictions {A.shape[1]} rows")
    if y.dtype.kind not in "iu" or y.min() < 0 or y.max() >= A.shape[2]:
        raise ValueError(f"y must hold class indices 0..{A.shape[2] - 1} (the probability "
                         f"columns), got values in [{y.min()}, {y.max()}]")
    return y.astype(np.int64)


def _losses(P: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mean log-loss of each of ``P`` (..., n_samples, k), rows renormalised and clipped."""
    p = P / P.sum(axis=-1, keepdims=True)
    true = np.take_along_axis(p, np.broadcast_to(y[:, None], p.shape[:-1] + (1,)), -1)[..., 0]
    return -np.log(np.clip(true, KAGGLE_EPS, 1.0 - KAGGLE_EPS)).mean(axis=-1)


def temper(p, T: float) -> np.ndarray:
    """``p`` at temperature ``T``: softmax(log p / T), i.e. logits divided by T."""
    logp = np.log(np.maximum(np.asarray(p, np.float64), 1e-300))
    return softmax(logp / float(T))


def fit_temperature(p, y) -> float:
    """The temperature in ``T_BOUNDS`` that minimises the log-loss of ``temper(p, T)``."""
    from scipy.optimize import minimize_scalar

    A = _stack([p])
    y = _labels(y, A)
    res = minimize_scalar(lambda t: float(_losses(temper(A[0], np.exp(t)), y)),
                          bounds=tuple(np.log(T_BOUNDS)), method="bounded",
                          options={"xatol": 1e-4})
    T = float(np.exp(res.x))
    # Keep T = 1 unless the fit is strictly better (identical members stay identical).
    return T if _losses(temper(A[0], T), y) < _losses(A[0], y) - 1e-12 else 1.0


def _tempered(A: np.ndarray, temperatures) -> np.ndarray:
    return np.stack([temper(a, t) for a, t in zip(A, temperatures)])


class _Weighted(ClassifierMixin, BaseEstimator):
    """A weighted mean of temperature-scaled members (``weights_``, ``temperatures_``)."""

    def _prepare(self, P, y):
        A = _stack(P)
        y = _labels(y, A)
        self.n_members_ = A.shape[0]
        self.classes_ = np.arange(A.shape[2])
        self.temperatures_ = np.array([fit_temperature(a, y) if self.temperature else 1.0
                                       for a in A])
        return _tempered(A, self.temperatures_), y

    def predict_proba(self, P) -> np.ndarray:
        if not hasattr(self, "weights_"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit first")
        A = _stack(P)
        if A.shape[0] != self.n_members_:
            raise ValueError(f"fit saw {self.n_members_} members, predict_proba got "
                             f"{A.shape[0]}")
        p = np.tensordot(self.weights_, _tempered(A, self.temperatures_), axes=1)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, P) -> np.ndarray:
        return np.argmax(self.predict_proba(P), axis=1)


def _best_top_k(A: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, int]:
    """Members by their own loss (best first, ties to the first), and the k whose top-k mean
    has the lowest loss (ties to the smaller k)."""
    order = np.argsort(_losses(A, y), kind="stable")
    means = np.cumsum(A[order], axis=0) / np.arange(1, len(order) + 1)[:, None, None]
    return order, int(np.argmin(_losses(means, y))) + 1


class TopKAverage(_Weighted):
    """The mean of the ``k_`` best members, ranked by their loss on the fit rows; ``k_`` is
    the k whose mean scores best there. Members temperature-scaled first (``temperature``).

    Fitted attributes: ``weights_`` (1/k_ on the chosen members), ``temperatures_``,
    ``order_`` (members best first), ``k_``, ``n_members_``, ``classes_``.
    """

    def __init__(self, temperature: bool = True):
        self.temperature = temperature

    def fit(self, P, y):
        A, y = self._prepare(P, y)
        self.order_, self.k_ = _best_top_k(A, y)
        self.weights_ = np.zeros(len(A))
        self.weights_[self.order_[:self.k_]] = 1.0 / self.k_
        return self


def _greedy(A: np.ndarray, y: np.ndarray, n_iter: int) -> np.ndarray:
    """Caruana's selection on members ``A``: sorted initialisation (the best top-k mean),
    then ``n_iter`` picks with replacement; the counts of the best prefix."""
    order, k = _best_top_k(A, y)
    counts = np.zeros(len(A), np.int64)
    counts[order[:k]] = 1
    total = A[order[:k]].sum(axis=0)
    best, best_counts = float(_losses(total / k, y)), counts.copy()
    for it in range(n_iter):
        n = counts.sum()
        loss = _losses((total[None] + A) / (n + 1), y)
        j = int(np.argmin(loss))
        total += A[j]
        counts[j] += 1
        if loss[j] < best - 1e-12:
            best, best_counts = float(loss[j]), counts.copy()
    return best_counts


class BaggedGreedySelection(_Weighted):
    """Ensemble selection as Caruana et al. 2006: per bag, a random subset of the members
    (``bag_fraction`` of them, at least 3 or all), sorted initialisation (the best members'
    mean, as many as score best together), then ``n_iter`` forward picks with replacement,
    keeping the best prefix; the bags' weights averaged. Members temperature-scaled first.

    Args:
      n_iter: picks after the initialisation, per bag.
      n_bags: bags (1: no bagging, all members).
      bag_fraction: share of the members each bag may pick from.
      temperature: fit one temperature per member on the fit rows first.
      random_state: seed of the member subsets.

    Fitted attributes: ``weights_`` (n_members,) summing to 1, ``temperatures_``,
    ``bag_weights_`` (n_bags, n_members), ``n_members_``, ``classes_``.
    """

    def __init__(self, n_iter: int = 25, n_bags: int = 20, bag_fraction: float = 0.5,
                 temperature: bool = True, random_state: int = 0):
        self.n_iter = n_iter
        self.n_bags = n_bags
        self.bag_fraction = bag_fraction
        self.temperature = temperature
        self.random_state = random_state

    def fit(self, P, y):
        if not (isinstance(self.n_iter, (int, np.integer)) and self.n_iter >= 0):
            raise ValueError(f"n_iter must be a non-negative integer, got {self.n_iter!r}")
        if not (isinstance(self.n_bags, (int, np.integer)) and self.n_bags >= 1):
            raise ValueError(f"n_bags must be a positive integer, got {self.n_bags!r}")
        if not 0.0 < self.bag_fraction <= 1.0:
            raise ValueError(f"bag_fraction must be in (0, 1], got {self.bag_fraction!r}")
        A, y = self._prepare(P, y)
        m = len(A)
        size = m if self.n_bags == 1 else min(m, max(3, int(np.ceil(self.bag_fraction * m))))
        rng = np.random.default_rng(self.random_state)
        bags = np.zeros((int(self.n_bags), m))
        for b in range(int(self.n_bags)):
            subset = np.sort(rng.choice(m, size, replace=False)) if size < m else np.arange(m)
            counts = _greedy(A[subset], y, int(self.n_iter))
            bags[b, subset] = counts / counts.sum()
        self.bag_weights_ = bags
        self.weights_ = bags.mean(axis=0)
        return self


def _pool_loss(theta, L, y, lam):
    """Log-loss (and gradient) of the log-linear pool softmax(sum_j w_j L_j + b) + lam/2 |w|^2."""
    m, n, k = L.shape
    w, b = theta[:m], theta[m:]
    z = np.tensordot(w, L, axes=1) + b
    z -= z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=1))
    loss = float((lse - z[np.arange(n), y]).mean() + 0.5 * lam * (w @ w))
    g = np.exp(z - lse[:, None])
    g[np.arange(n), y] -= 1.0
    g /= n
    return loss, np.concatenate([np.einsum("nk,mnk->m", g, L) + lam * w, g.sum(axis=0)])


def _fit_pool(L, y, lam, x0=None) -> np.ndarray:
    """The pool's (w, b), with w >= 0 and sum(w) <= 1: a weighted geometric mean of the
    members (softened, never sharpened) and a bias per class. Unconstrained weights summed
    correlated members and sharpened them: on Dogs vs. Cats (12-minute zoo, 200 validation
    rows nearly all right) a stack of 11 reached validation 0.0082 and lost on test, 0.0833
    against the best single row's 0.0253."""
    from scipy.optimize import minimize

    m, _, k = L.shape
    x0 = np.concatenate([np.full(m, 1.0 / m), np.zeros(k)]) if x0 is None else x0
    ones = np.concatenate([-np.ones(m), np.zeros(k)])
    total = {"type": "ineq", "fun": lambda t: 1.0 - t[:m].sum(), "jac": lambda t: ones}
    bounds = [(0.0, 1.0)] * m + [(None, None)] * k
    return minimize(_pool_loss, x0, args=(L, y, lam), jac=True, method="SLSQP",
                    bounds=bounds, constraints=[total], options={"maxiter": 500}).x


class LogProbaStack(ClassifierMixin, BaseEstimator):
    """A logistic level-1 model on the members' log-probabilities (``log(max(p, log_eps))``),
    its form and L2 strength chosen by ``cv``-fold cross-validation over the fit rows:

    * ``full``: a ``LogisticHead`` on all members' log-probabilities concatenated (m x k
      features, k x m x k weights): the stronger model where there are many rows;
    * ``pool``: a log-linear pool softmax(sum_j w_j log p_j + b), one weight per member
      (w >= 0, sum w <= 1) and a bias per class (m + k parameters): what a few hundred
      validation rows can support; it contains every single member (w = 1 on it) and their
      geometric mean, and is never sharper than its members.

    * ``member``: the best single member as it is, when neither model beats it on the
      held-out rows (a stack that cannot win then ties instead of losing).

    All scored on the same folds; the lowest held-out log-loss wins, at its best C (``Cs``:
    C values or their number, as ``LogisticHead``'s; the pool's penalty is 1 / (C n)). No
    temperatures: the level-1 weights scale each member themselves. Exported as one linear
    layer on the concatenated log-probabilities either way.

    Fitted attributes: ``coef_``, ``intercept_`` (on the concatenated log-probabilities, in
    ``ensembles._utils.full_logits``'s layout), ``form_``, ``C_``, ``cv_log_loss_`` (form ->
    best held-out log-loss), ``n_members_``, ``classes_``.
    """

    def __init__(self, Cs=8, cv: int = 5, log_eps: float = LOG_EPS, random_state: int = 0):
        self.Cs = Cs
        self.cv = cv
        self.log_eps = log_eps
        self.random_state = random_state

    def _features(self, A: np.ndarray) -> np.ndarray:
        return np.concatenate([np.log(np.clip(a, self.log_eps, 1.0)) for a in A], axis=1)

    def fit(self, P, y):
        from .heads import LogisticHead, _thread_limit, c_grid

        A = _stack(P)
        y = _labels(y, A)
        m, n, k = A.shape
        smallest = int(np.bincount(y, minlength=k).min())
        if smallest < 2:
            raise ValueError(f"LogProbaStack: choosing L2 by cross-validation needs at least 2 "
                             f"rows of every class; the smallest class has {smallest}")
        folds = min(int(self.cv), smallest)
        head = LogisticHead(Cs=self.Cs, cv=folds, random_state=self.random_state).fit(
            self._features(A), y)
        L = np.log(np.clip(A, self.log_eps, 1.0))
        splits = list(StratifiedKFold(folds, shuffle=True, random_state=self.random_state)
                      .split(A[0], y))
        pool = {}
        with _thread_limit(1):  # BLAS threads spin-wait on a busy CPU (see LogisticHead)
            for C in c_grid(self.Cs):
                held = [_losses(self._pool_proba(
                    _fit_pool(L[:, tr], y[tr], 1.0 / (C * len(tr))), L[:, va])[None],
                    y[va])[0] for tr, va in splits]
                pool[float(C)] = float(np.mean(held))
        C_pool = min(pool, key=pool.get)
        member = [float(np.mean([_losses(A[j][va][None], y[va])[0] for _, va in splits]))
                  for j in range(m)]
        best = int(np.argmin(member))
        self.cv_log_loss_ = {"full": float(head.cv_log_loss_.mean(axis=1).min()),
                             "pool": pool[C_pool], "member": member[best]}
        self.n_members_, self.classes_, self.member_ = m, np.arange(k), None
        if member[best] < min(self.cv_log_loss_["full"], self.cv_log_loss_["pool"]):
            # Neither level-1 model beats its best member on held-out rows: be that member.
            self.form_, self.C_, self.member_ = "member", None, best
            theta = np.concatenate([np.eye(m)[best], np.zeros(k)])
            self.coef_, self.intercept_ = self._pool_layer(theta, m, k)
        elif self.cv_log_loss_["pool"] <= self.cv_log_loss_["full"]:
            self.form_, self.C_ = "pool", C_pool
            with _thread_limit(1):
                theta = _fit_pool(L, y, 1.0 / (C_pool * n))
            self.coef_, self.intercept_ = self._pool_layer(theta, m, k)
        else:
            self.form_, self.C_ = "full", head.C_
            self.coef_, self.intercept_ = head.coef_, head.intercept_
        return self

    @staticmethod
    def _pool_proba(theta, L) -> np.ndarray:
        m = L.shape[0]
        return softmax(np.tensordot(theta[:m], L, axes=1) + theta[m:])

    @staticmethod
    def _pool_layer(theta, m: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The pool as a linear layer on the concatenated log-probabilities."""
        w, b = theta[:m], theta[m:]
        coef = np.zeros((k, m * k))
        for j in range(m):
            coef[np.arange(k), j * k + np.arange(k)] = w[j]
        if k == 2:  # full_logits' binary layout: class 1's logit minus class 0's
            return (coef[1] - coef[0])[None], np.array([b[1] - b[0]])
        return coef, b

    def predict_proba(self, P) -> np.ndarray:
        A = _stack(P)
        if A.shape[0] != self.n_members_:
            raise ValueError(f"fit saw {self.n_members_} members, predict_proba got "
                             f"{A.shape[0]}")
        return softmax(full_logits(self._features(A), self.coef_, self.intercept_))

    def predict(self, P) -> np.ndarray:
        return np.argmax(self.predict_proba(P), axis=1)


def cross_fit_predict(estimator, P, y, cv: int = 5, random_state: int = 0) -> np.ndarray:
    """Out-of-fold predictions of the combiner ``estimator`` over the rows of ``P``: each row
    predicted by a clone fit on the other folds (stratified, shuffled with ``random_state``;
    at most one fold per row of the smallest class)."""
    A = _stack(P)
    y = _labels(y, A)
    smallest = int(np.bincount(y, minlength=A.shape[2]).min())
    if min(int(cv), smallest) < 2:
        raise ValueError(f"cross_fit_predict: needs at least 2 rows of every class; the "
                         f"smallest class has {smallest}")
    folds = StratifiedKFold(min(int(cv), smallest), shuffle=True, random_state=random_state)
    out = np.full(A.shape[1:], np.nan)
    for tr, va in folds.split(A[0], y):
        out[va] = clone(estimator).fit(A[:, tr], y[tr]).predict_proba(A[:, va])
    return out
