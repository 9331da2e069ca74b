"""Greedy ensemble selection (Caruana et al. 2004, with replacement)."""

from __future__ import annotations

import numpy as np
import pytest

from ensembles import GreedyEnsembleSelection, log_loss


def _members(seed=0, n=400, k=3):
    """Three members: a good one, a noisy copy of the truth, and one that is always wrong."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    onehot = np.eye(k)[y]
    good = 0.6 * onehot + 0.4 * rng.dirichlet(np.ones(k), n)
    noisy = 0.5 * onehot + 0.5 * rng.dirichlet(np.ones(k), n)
    bad = 0.8 * np.eye(k)[(y + 1) % k] + 0.2 * rng.dirichlet(np.ones(k), n)
    return [good, noisy, bad], y


def test_weights_are_pick_counts_and_the_wrong_member_is_never_picked():
    P, y = _members()
    sel = GreedyEnsembleSelection(n_iter=20).fit(P, y)
    assert sel.counts_.sum() == 20
    np.testing.assert_allclose(sel.weights_, sel.counts_ / 20)
    assert sel.counts_[2] == 0
    assert sel.counts_[0] > 0
    # The running validation loss after each pick matches a direct computation.
    mean = np.mean([P[j] for j in sel.order_], axis=0)
    assert sel.scores_[-1] == pytest.approx(log_loss(y, mean))


def test_selection_is_no_worse_than_the_best_member_on_the_rows_it_was_fit_on():
    P, y = _members(1)
    sel = GreedyEnsembleSelection(n_iter=25).fit(P, y)
    best_single = min(log_loss(y, p) for p in P)
    assert log_loss(y, sel.predict_proba(P)) <= best_single + 1e-12
    # The first pick is the best single member.
    assert sel.order_[0] == int(np.argmin([log_loss(y, p) for p in P]))


def test_with_replacement_one_member_can_take_all_the_weight():
    P, y = _members(2)
    onehot = np.eye(3)[y] * 0.98 + 0.01  # a near-perfect member
    sel = GreedyEnsembleSelection(n_iter=10).fit([P[1], onehot, P[2]], y)
    assert sel.counts_.tolist() == [0, 10, 0]


def test_array_input_same_as_list_and_predict_returns_labels():
    P, y = _members(3)
    a = GreedyEnsembleSelection(n_iter=7).fit(np.stack(P), y)
    b = GreedyEnsembleSelection(n_iter=7).fit(P, y)
    np.testing.assert_array_equal(a.weights_, b.weights_)
    labels = np.array(["x", "y", "z"])[y]
    c = GreedyEnsembleSelection(n_iter=7).fit(P, labels)
    assert set(c.predict(P)) <= {"x", "y", "z"}
    np.testing.assert_array_equal(c.weights_, a.weights_)


def test_bad_inputs_are_refused():
    P, y = _members()
    with pytest.raises(ValueError, match="n_iter"):
        GreedyEnsembleSelection(n_iter=0).fit(P, y)
    with pytest.raises(ValueError, match="labels"):
        GreedyEnsembleSelection().fit(P, y[:-1])
    with pytest.raises(ValueError, match="one shape"):
        GreedyEnsembleSelection().fit([P[0], P[1][:10]], y)
    sel = GreedyEnsembleSelection(n_iter=3).fit(P, y)
    with pytest.raises(ValueError, match="members"):
        sel.predict_proba(P[:2])
