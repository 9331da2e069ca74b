"""Linear heads on frozen embeddings: a cross-validated logistic regression and a concat head.

Both are scikit-learn classifiers (``fit`` returns ``self``, fitted attributes end in ``_``),
so they drop into ``cross_val_predict``, ``GridSearchCV`` and ``StackingClassifier``.
Predictions are computed in NumPy from ``coef_`` / ``intercept_``, which are stored in the
units of the input features (the standardisation is folded into them), whatever backend
trained the head.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import StratifiedKFold
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted

from ._utils import (
    concat_blocks,
    full_logits,
    is_block_list,
    log_softmax,
    softmax,
    validate_data,
)

__all__ = ["ConcatHead", "LogisticHead", "c_grid"]

# The C grid when ``Cs`` is an int: C is scikit-learn's inverse L2 strength on the summed
# log-loss, so the per-sample penalty is 1 / (C * n_samples): for 1,000-50,000 standardised
# embeddings, 1e-4 is a penalty of 0.2-10 per sample (near-constant output), 1e1 one of
# 2e-6-1e-4 (close to unregularised). Larger C mostly adds slow, near-separable fits.
C_GRID_RANGE = (1e-4, 1e1)
# Cross-validation walks the grid from strong to weak regularisation, warm-starting each fit
# from the previous solution, and stops a fold once its held-out log-loss has risen this many
# times in a row (the validation curve of an L2 path is unimodal in practice).
PATH_PATIENCE = 2
# The JAX solver pads the rows to a multiple of this (zero-weight rows), so that data of
# nearby sizes share one compilation.
_ROW_BUCKET = 256
# Probabilities are clipped to [eps, 1 - eps] when a fold's held-out log-loss is scored.
_SCORE_EPS = 1e-15


def c_grid(Cs) -> np.ndarray:
    """The C values an ``int`` or a sequence ``Cs`` stands for, ascending."""
    if isinstance(Cs, (int, np.integer)) and not isinstance(Cs, bool):
        if Cs < 1:
            raise ValueError(f"Cs must be a positive int or a sequence of C values, got {Cs}")
        if Cs == 1:
            return np.array([1.0])
        return np.logspace(np.log10(C_GRID_RANGE[0]), np.log10(C_GRID_RANGE[1]), int(Cs))
    grid = np.sort(np.asarray(Cs, dtype=float).ravel())
    if grid.size == 0 or not np.all(np.isfinite(grid)) or np.any(grid <= 0):
        raise ValueError(f"Cs must hold positive finite C values, got {Cs!r}")
    return grid


def _standardize(X: np.ndarray):
    """Column means and scales (1 where a column is constant), in X's dtype."""
    mean = X.mean(axis=0)
    scale = X.std(axis=0)
    scale[scale < 10 * np.finfo(X.dtype).eps] = 1.0
    return mean, scale


def _unscale(coef, intercept, mean, scale):
    """Fold a standardisation into a linear layer: w.(x-m)/s + b = (w/s).x + b - (w/s).m."""
    coef = np.asarray(coef, dtype=np.float64) / scale
    intercept = np.asarray(intercept, dtype=np.float64) - coef @ mean
    return coef, intercept


class _PathStopper:
    """Tracks one fold's held-out loss along the C path; stops after PATH_PATIENCE rises."""

    def __init__(self):
        self.best, self.rises, self.stopped = np.inf, 0, False

    def stop(self, loss: float) -> bool:
        if loss < self.best:
            self.best, self.rises = loss, 0
        else:
            self.rises += 1
            self.stopped = self.rises >= PATH_PATIENCE
        return self.stopped


def _fold_log_loss(proba: np.ndarray, y_idx: np.ndarray) -> float:
    p = np.clip(proba[np.arange(len(y_idx)), y_idx], _SCORE_EPS, 1.0)
    return float(-np.mean(np.log(p)))


# --------------------------------------------------------------------------------------------
# Solvers. Each holds its training data and refits it at a new C, warm-started from its last
# solution; coef has one row per class, or a single row (class 1's logit) for two classes,
# as in scikit-learn. Both minimise  mean_i CE_i + ||W||^2 / (2 C n)  (intercept unpenalised).
# --------------------------------------------------------------------------------------------


@functools.cache
def _controller():
    """One threadpoolctl controller per process: finding the BLAS/OpenMP libraries costs
    about 8 ms, more than a small fit."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _thread_limit(n_threads):
    import contextlib

    return contextlib.nullcontext() if n_threads is None else _controller().limit(
        limits=n_threads)


class _SklearnSolver:
    """scikit-learn's LogisticRegression (multinomial for > 2 classes)."""

    def __init__(self, X, y_idx, n_classes, *, solver, max_iter, tol, n_threads):
        from sklearn.linear_model import LogisticRegression

        self.X, self.y, self.n_classes = X, y_idx, n_classes
        self.model = LogisticRegression(solver=solver, max_iter=max_iter, tol=tol,
                                        warm_start=True)
        self.n_threads = n_threads
        self.n_iter = 0

    def fit(self, C: float):
        with warnings.catch_warnings(record=True) as caught, \
                _thread_limit(self.n_threads):
            warnings.simplefilter("always", ConvergenceWarning)
            self.model.set_params(C=C).fit(self.X, self.y)
        self.converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        self.n_iter = int(np.max(self.model.n_iter_))
        return self

    def predict_proba(self, X) -> np.ndarray:
        proba = np.zeros((X.shape[0], self.n_classes))
        proba[:, self.model.classes_] = self.model.predict_proba(X)  # a fold may lack a class
        return proba

    def coef(self):
        if len(self.model.classes_) != self.n_classes:
            raise ValueError("the training data lacks a class")  # only reached for folds
        return self.model.coef_, self.model.intercept_


class _JaxSolver:
    """Full-batch L-BFGS (optax, zoom line search) in float32, jitted once per padded shape.

    Rows are padded with zero-weight rows to a multiple of ``_ROW_BUCKET``, so the folds of
    a cross-validation share one compilation (and the final fit on all rows has a second).
    """

    def __init__(self, X, y_idx, n_classes, *, max_iter, tol):
        import jax.numpy as jnp

        n, d = X.shape
        n_pad = -(-n // _ROW_BUCKET) * _ROW_BUCKET
        Xp = np.zeros((n_pad, d), np.float32)
        Xp[:n] = X
        Y = np.zeros((n_pad, n_classes), np.float32)
        Y[np.arange(n), y_idx] = 1.0
        weights = np.zeros(n_pad, np.float32)
        weights[:n] = 1.0
        self.X, self.Y, self.weights = jnp.asarray(Xp), jnp.asarray(Y), jnp.asarray(weights)
        self.n = n
        n_out = 1 if n_classes == 2 else n_classes
        self.params = (jnp.zeros((d, n_out), jnp.float32), jnp.zeros((n_out,), jnp.float32))
        self.max_iter, self.tol = max_iter, tol

    def fit(self, C: float):
        import jax

        params, n_iter, gmax = _jax_lbfgs(self.params, self.X, self.Y, self.weights,
                                          1.0 / (C * self.n), self.max_iter, self.tol)
        self.params = jax.block_until_ready(params)
        self.n_iter = int(n_iter)
        self.converged = bool(gmax <= self.tol)
        return self

    def coef(self):
        """(coef, intercept) in scikit-learn's layout, float64."""
        W, b = (np.asarray(p, dtype=np.float64) for p in self.params)
        return W.T, b

    def predict_proba(self, X) -> np.ndarray:
        return softmax(full_logits(np.asarray(X, dtype=np.float64), *self.coef()))


def _softmax_loss(params, X, Y, weights, lam):
    """Weighted mean softmax cross-entropy plus lam/2 ||W||^2."""
    import jax.numpy as jnp
    from jax.nn import logsumexp

    W, b = params
    z = X @ W + b
    if W.shape[1] == 1:  # binary: logits (0, z), as scikit-learn parametrises it
        z = jnp.concatenate([jnp.zeros_like(z), z], axis=1)
    ce = logsumexp(z, axis=1) - jnp.sum(Y * z, axis=1)
    ce = jnp.sum(weights * ce) / jnp.sum(weights)
    return ce + 0.5 * lam * jnp.sum(W * W)


@functools.cache
def _jitted_lbfgs():
    import jax
    import jax.numpy as jnp
    import optax
    import optax.tree_utils as otu

    def run(params, X, Y, weights, lam, max_iter, tol):
        fun = functools.partial(_softmax_loss, X=X, Y=Y, weights=weights, lam=lam)
        opt = optax.lbfgs()
        value_and_grad = optax.value_and_grad_from_state(fun)

        def step(carry):
            params, state = carry
            value, grad = value_and_grad(params, state=state)
            updates, state = opt.update(grad, state, params, value=value, grad=grad,
                                        value_fn=fun)
            return optax.apply_updates(params, updates), state

        def gmax(state):
            return otu.tree_max(jax.tree.map(jnp.abs, otu.tree_get(state, "grad")))

        def keep_going(carry):
            count = otu.tree_get(carry[1], "count")
            return (count == 0) | ((count < max_iter) & (gmax(carry[1]) > tol))

        params, state = jax.lax.while_loop(keep_going, step, (params, opt.init(params)))
        # Converged or not, judged by a fresh gradient at the parameters returned.
        g = jax.grad(fun)(params)
        final_gmax = otu.tree_max(jax.tree.map(jnp.abs, g))
        return params, otu.tree_get(state, "count"), final_gmax

    return jax.jit(run)


def _jax_lbfgs(params, X, Y, weights, lam, max_iter, tol):
    return _jitted_lbfgs()(params, X, Y, weights, np.float32(lam), np.int32(max_iter),
                           np.float32(tol))


# --------------------------------------------------------------------------------------------


class LogisticHead(ClassifierMixin, BaseEstimator):
    """Multinomial logistic regression on standardised embeddings, L2 strength chosen by CV.

    Features are standardised (training mean and scale), then C is picked from the grid
    ``Cs`` by stratified ``cv``-fold cross-validation on the training data, scoring held-out
    log-loss; the head is refit on all the data at the chosen C. Each fold walks the grid
    from strong to weak regularisation, warm-started, and stops once its held-out log-loss
    has risen ``PATH_PATIENCE`` times in a row (C values it did not reach count as worse).

    Default backend: scikit-learn's L-BFGS with its BLAS/OpenMP thread pools held to one
    thread (``n_threads=1``). Measured by ``tests/benchmarks/test_heads_benchmark.py`` on
    this project's 2-core CPU, shared with other jobs (so indicative), whole fit with the C
    search, synthetic ReLU embeddings of 3,840 features, wall seconds:

    ====================  ===========  =============  ======================
    rows, classes          sklearn 1t   sklearn all t   jax warm + compile
    ====================  ===========  =============  ======================
    2,000, 2                    3.1          22.7          4.3 + 12
    2,000, 10                   7.2         154.8         25.1 + 7
    10,000, 2                   9.2          29.6         18.3 + 9
    10,000, 10                 66.9         423.4        104.2 + (noise)
    ====================  ===========  =============  ======================

    Test log-loss was the same to 4 decimals for all three. OpenBLAS's threads spin-wait
    when the cores are busy, which made the multi-threaded solver 3-21x slower here; with
    one thread scikit-learn beat the JAX backend (float32, jitted per padded shape) at every
    size, also with XLA held to one thread (2,000 x 10 classes: 14.9 s warm). Set
    ``n_threads=None`` on an otherwise idle many-core machine; use ``backend='jax'`` where
    JAX has an accelerator.

    Args:
      Cs: number of C values log-spaced over ``C_GRID_RANGE`` (1e-4..1e1), or the C values.
        C is scikit-learn's inverse L2 strength (penalty ||W||^2 / (2 C) on the summed loss).
        A single value skips cross-validation.
      cv: number of stratified folds (shuffled with ``random_state``) or a splitter.
      max_iter: L-BFGS iterations per fit.
      solver: scikit-learn solver (``backend='sklearn'`` only).
      tol: stop when the largest gradient component of the mean objective is below this.
      backend: ``'sklearn'`` or ``'jax'``.
      n_threads: thread limit for scikit-learn's BLAS/OpenMP pools during fits
        (threadpoolctl); None keeps the libraries' defaults. Not used by the JAX backend.
      random_state: seed of the fold shuffle.
      store_oof: keep the folds' held-out probabilities at the chosen C (``oof_proba_``):
        out-of-fold predictions for every row at no extra fit, as ``cross_val_predict``
        would give at that C. C itself was chosen on these folds (one of ``Cs`` values), a
        small optimism. Needs more than one C.

    Fitted attributes: ``classes_``, ``coef_`` (n_classes or 1, n_features) and
    ``intercept_`` in input units, ``C_`` (chosen), ``Cs_`` (grid), ``cv_log_loss_``
    (n_Cs, n_folds) held-out log-loss (inf where a fold stopped early), ``n_iter_``
    (iterations of the final fit), ``n_features_in_``; with ``store_oof``, ``oof_proba_``
    (n_samples, n_classes) and ``oof_fold_`` (n_samples,) the fold each row was held out in.
    """

    def __init__(self, Cs=6, cv=5, max_iter=200, solver="lbfgs", tol=1e-4, backend="sklearn",
                 n_threads=1, random_state=0, store_oof=False):
        self.Cs = Cs
        self.cv = cv
        self.max_iter = max_iter
        self.solver = solver
        self.tol = tol
        self.backend = backend
        self.n_threads = n_threads
        self.random_state = random_state
        self.store_oof = store_oof

    def _splits(self, X, y_idx):
        cv = self.cv
        if isinstance(cv, (int, np.integer)) and not isinstance(cv, bool):
            smallest = int(np.bincount(y_idx).min())
            if smallest < 2:
                raise ValueError(
                    f"LogisticHead: cross-validating C needs at least 2 samples of every class, "
                    f"the smallest class has {smallest}; pass a single C (Cs=[1.0]) instead"
                )
            # A fold per sample of the smallest class at most, so every fold sees every class.
            cv = StratifiedKFold(min(int(cv), smallest), shuffle=True,
                                 random_state=self.random_state)
        return list(cv.split(X, y_idx))

    def fit(self, X, y):
        """Standardise, choose C by cross-validation, refit on all of ``X``.

        Args:
          X: (n_samples, n_features) embeddings.
          y: (n_samples,) class labels (any hashable labels).
        Returns:
          self
        """
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        self.classes_, y_idx = np.unique(y, return_inverse=True)
        n_classes = len(self.classes_)
        if n_classes < 2:
            raise ValueError(
                f"LogisticHead needs samples of at least 2 classes, got one class "
                f"(label {self.classes_[0]!r})"
            )
        if self.backend not in ("sklearn", "jax"):
            raise ValueError(f"backend must be 'sklearn' or 'jax', got {self.backend!r}")
        self.Cs_ = c_grid(self.Cs)
        # Standardised once, with all rows' statistics (label-free), for the folds too.
        mean, scale = _standardize(X)
        Xs = (X - mean) / scale
        self.cv_log_loss_ = None
        if self.store_oof and len(self.Cs_) < 2:
            raise ValueError("LogisticHead(store_oof=True) needs more than one C: the "
                             "out-of-fold predictions come from the C search's folds")
        if len(self.Cs_) > 1:
            held = np.full((len(self.Cs_), len(y_idx), n_classes), np.nan) \
                if self.store_oof else None
            self.cv_log_loss_ = self._cross_validate(Xs, y_idx, n_classes, held)
            best = int(np.argmin(self.cv_log_loss_.mean(axis=1)))
            self.C_ = float(self.Cs_[best])
            if held is not None:  # every fold reached the chosen C (else its mean is inf)
                self.oof_proba_ = held[best]
        else:
            self.C_ = float(self.Cs_[0])
        solver = self._solver(Xs, y_idx, n_classes).fit(self.C_)
        if not solver.converged:
            warnings.warn(
                f"LogisticHead ({self.backend}) did not converge in max_iter={self.max_iter} "
                f"iterations at C={self.C_:.3g}; raise max_iter", ConvergenceWarning,
                stacklevel=2,
            )
        self.coef_, self.intercept_ = _unscale(*solver.coef(), mean, scale)
        self.n_iter_ = solver.n_iter
        return self

    def _solver(self, X, y_idx, n_classes):
        if self.backend == "jax":
            return _JaxSolver(X, y_idx, n_classes, max_iter=self.max_iter, tol=self.tol)
        return _SklearnSolver(X, y_idx, n_classes, solver=self.solver, max_iter=self.max_iter,
                              tol=self.tol, n_threads=self.n_threads)

    def _cross_validate(self, Xs, y_idx, n_classes, held=None) -> np.ndarray:
        """Held-out log-loss for every (C, fold), fold by fold (one fold's copy in memory at a
        time); inf where the fold stopped its path early. ``held`` (n_Cs, n, k), if given,
        receives the held-out probabilities."""
        splits = self._splits(Xs, y_idx)
        scores = np.full((len(self.Cs_), len(splits)), np.inf)
        if held is not None:
            self.oof_fold_ = np.full(len(y_idx), -1, np.int64)
        for f, (tr, va) in enumerate(splits):
            solver = self._solver(Xs[tr], y_idx[tr], n_classes)
            X_va = Xs[va]
            path = _PathStopper()
            if held is not None:
                self.oof_fold_[va] = f
            for i, C in enumerate(self.Cs_):
                proba = solver.fit(C).predict_proba(X_va)
                if held is not None:
                    held[i, va] = proba
                scores[i, f] = _fold_log_loss(proba, y_idx[va])
                if path.stop(scores[i, f]):
                    break
        return scores

    def decision_function(self, X) -> np.ndarray:
        """Logits, (n_samples, n_classes); (n_samples,) class-1 logit for two classes."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        z = np.asarray(X, dtype=np.float64) @ self.coef_.T + self.intercept_
        return z[:, 0] if self.coef_.shape[0] == 1 else z

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, (n_samples, n_classes), columns in ``classes_`` order."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return softmax(full_logits(np.asarray(X, dtype=np.float64), self.coef_,
                                   self.intercept_))

    def predict(self, X) -> np.ndarray:
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    def predict_log_proba(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return log_softmax(full_logits(np.asarray(X, dtype=np.float64), self.coef_,
                                       self.intercept_))


# --------------------------------------------------------------------------------------------
# ConcatHead's dropout path: a softmax layer trained by minibatch Adadelta with input dropout.
# --------------------------------------------------------------------------------------------


@functools.cache
def _jitted_dropout_step(dropout: float, learning_rate: float, rho: float, eps: float,
                         l2: float):
    """One Adadelta step on a fixed-size batch; compiled once per (batch, features, classes).

    The batch loop stays in Python (a few microseconds a step) so that data of any length
    reuses one compilation: check_estimator-style callers fit many small shapes.
    """
    import jax
    import jax.numpy as jnp
    import optax

    opt = optax.adadelta(learning_rate, rho=rho, eps=eps)

    def loss_fn(params, xb, yb, wb, key):
        keep = jax.random.bernoulli(key, 1.0 - dropout, xb.shape)
        xb = jnp.where(keep, xb / (1.0 - dropout), 0.0)  # inverted dropout
        return _softmax_loss(params, xb, yb, wb, l2)

    def step(params, state, xb, yb, wb, key):
        grads = jax.grad(loss_fn)(params, xb, yb, wb, key)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return opt.init, jax.jit(step, donate_argnums=(0, 1))


def _train_dropout_softmax(X, y_idx, n_classes, *, dropout, epochs, batch_size,
                           learning_rate, rho, eps, l2, seed):
    """Minibatch Adadelta on softmax cross-entropy with input dropout; returns (W, b).

    Every row is seen once per epoch in a fresh order; the last batch of an epoch is padded
    with zero-weight rows, so it counts only its real rows.
    """
    import jax
    import jax.numpy as jnp

    n, d = X.shape
    init, step = _jitted_dropout_step(dropout, learning_rate, rho, eps, l2)
    key = jax.random.key(seed)
    init_key, drop_key = jax.random.split(key)
    W = jax.nn.initializers.glorot_uniform()(init_key, (d, n_classes), jnp.float32)
    params = (W, jnp.zeros((n_classes,), jnp.float32))
    state = init(params)
    X = np.asarray(X, dtype=np.float32)
    Y = np.eye(n_classes, dtype=np.float32)[y_idx]
    rng = np.random.default_rng(seed)
    n_batches = -(-n // batch_size)
    t = 0
    for _ in range(epochs):
        order = rng.permutation(n)
        for i in range(n_batches):
            idx = order[i * batch_size:(i + 1) * batch_size]
            w = np.zeros(batch_size, np.float32)
            w[:len(idx)] = 1.0
            idx = np.pad(idx, (0, batch_size - len(idx)))
            params, state = step(params, state, X[idx], Y[idx], w,
                                 jax.random.fold_in(drop_key, t))
            t += 1
    W, b = (np.asarray(p, dtype=np.float64) for p in params)
    return W, b


class ConcatHead(ClassifierMixin, BaseEstimator):
    """One softmax head over several backbones' embeddings, concatenated (report 001).

    Report 001 concatenated the GAP features of ResNet50, Xception and InceptionV3 (6,144-d)
    and trained dropout 0.5 + a dense sigmoid output with Adadelta for 8 epochs (Keras
    defaults: batch 32, lr 1.0, rho 0.95, epsilon 1e-7): Kaggle log-loss 0.0415.

    ``X`` is a 2-D array (already concatenated) or a list/tuple of row-aligned 2-D arrays, one
    per backbone, concatenated here in the order given. Features are standardised. With
    ``dropout > 0`` a multinomial softmax layer (Glorot-uniform init) is trained in JAX/optax
    with inverted input dropout, seeded by ``random_state``; with ``dropout == 0`` the head is
    a ``LogisticHead`` (L2 chosen by cross-validation) and ``Cs``, ``cv``, ``max_iter``,
    ``backend``, ``n_threads`` are passed to it.

    Adadelta's first steps are about sqrt(eps) per weight: with a few hundred rows, 8 epochs
    of Keras' defaults barely move the weights from their initialisation (test log-loss can
    be worse than chance); raise ``epochs`` or ``eps`` there. At report 001's size (20,000 x
    6,144) it reaches a test log-loss of 0.005 on the benchmark's synthetic features.

    Args:
      dropout: input dropout rate during training, in [0, 1).
      epochs, batch_size: passes over the data and rows per Adadelta step (dropout > 0).
      learning_rate, rho, eps: Adadelta's, Keras 2 defaults (dropout > 0).
      l2: L2 penalty lam/2 ||W||^2 added to the mean loss (dropout > 0).
      Cs, cv, max_iter, backend, n_threads: LogisticHead's (dropout == 0).
      random_state: seed of the initialisation, the batch order and the dropout masks.

    Fitted attributes: ``classes_``, ``coef_``, ``intercept_`` (input units, one row per
    class; ``LogisticHead``'s layout when dropout == 0), ``n_iter_`` (epochs, or the
    LogisticHead's L-BFGS iterations), ``n_features_in_``, and ``logistic_`` (the fitted
    LogisticHead) when dropout == 0.
    """

    def __init__(self, dropout=0.0, *, epochs=8, batch_size=32, learning_rate=1.0, rho=0.95,
                 eps=1e-7, l2=0.0, Cs=6, cv=5, max_iter=200, backend="sklearn", n_threads=1,
                 random_state=0):
        self.dropout = dropout
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.rho = rho
        self.eps = eps
        self.l2 = l2
        self.Cs = Cs
        self.cv = cv
        self.max_iter = max_iter
        self.backend = backend
        self.n_threads = n_threads
        self.random_state = random_state

    @staticmethod
    def _join(X):
        return concat_blocks(X, "ConcatHead X") if is_block_list(X) else X

    def fit(self, X, y):
        """Concatenate the feature blocks, standardise, train.

        Args:
          X: (n_samples, n_features) array, or a list of (n_samples, n_features_i) arrays.
          y: (n_samples,) class labels.
        Returns:
          self
        """
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        X, y = validate_data(self, self._join(X), y, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        if self.dropout == 0.0:
            self.logistic_ = LogisticHead(Cs=self.Cs, cv=self.cv, max_iter=self.max_iter,
                                          backend=self.backend, n_threads=self.n_threads,
                                          random_state=self.random_state).fit(X, y)
            self.classes_ = self.logistic_.classes_
            self.coef_, self.intercept_ = self.logistic_.coef_, self.logistic_.intercept_
            self.n_iter_ = self.logistic_.n_iter_
            return self
        self.classes_, y_idx = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(
                f"ConcatHead needs samples of at least 2 classes, got one class "
                f"(label {self.classes_[0]!r})"
            )
        self.coef_, self.intercept_ = self._train_dropout(X, y_idx, len(self.classes_))
        self.n_iter_ = int(self.epochs)
        return self

    def _train_dropout(self, X, y_idx, n_classes):
        mean, scale = _standardize(X)
        W, b = _train_dropout_softmax(
            (X - mean) / scale, y_idx, n_classes, dropout=float(self.dropout),
            epochs=int(self.epochs), batch_size=int(self.batch_size),
            learning_rate=float(self.learning_rate), rho=float(self.rho), eps=float(self.eps),
            l2=float(self.l2), seed=self.random_state,
        )
        if not np.all(np.isfinite(W)):
            raise FloatingPointError("ConcatHead: training diverged (non-finite weights); "
                                     "lower learning_rate")
        return _unscale(W.T, b, mean, scale)

    def _logits(self, X):
        check_is_fitted(self)
        X = validate_data(self, self._join(X), reset=False, dtype=[np.float64, np.float32])
        return full_logits(np.asarray(X, dtype=np.float64), self.coef_, self.intercept_)

    def decision_function(self, X) -> np.ndarray:
        """Logits, (n_samples, n_classes); (n_samples,) class-1 logit for two classes."""
        z = self._logits(X)
        return z[:, 1] - z[:, 0] if z.shape[1] == 2 else z

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, (n_samples, n_classes), columns in ``classes_`` order."""
        return softmax(self._logits(X))

    def predict_log_proba(self, X) -> np.ndarray:
        return log_softmax(self._logits(X))

    def predict(self, X) -> np.ndarray:
        logits = self._logits(X)
        return self.classes_[np.argmax(logits, axis=1)]
