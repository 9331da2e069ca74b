"""ensembles.grouping: finding and scoring groups of mutually confused classes (report 004)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix

from ensembles import accuracy, class_affinity, group_classes, grouped_confusion, regroup
from ensembles.grouping import estimate_n_groups

# Two pairs and a triple among 12 classes; the other five classes stand alone.
PLANTED = ((0, 5), (2, 9, 7), (3, 11))
PLANTED_LABELS = np.array([0, 1, 2, 3, 4, 0, 5, 2, 6, 2, 7, 3])  # numbered by lowest class


def planted_confusion(confused=0.3, background=0.2, per_class=100, seed=0, n_classes=12,
                      blocks=PLANTED):
    """Counts where each planted class goes to its block partners ``confused`` of the time
    and to all other classes ``background`` of the time, uniformly."""
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_classes, n_classes))
    for i in range(n_classes):
        p = np.full(n_classes, background / (n_classes - 1))
        p[i] = 1.0 - background
        for block in blocks:
            if i in block:
                partners = [j for j in block if j != i]
                p[partners] += confused / len(partners)
                p[i] -= confused
        counts[i] = rng.multinomial(per_class, p / p.sum())
    return counts


@pytest.mark.parametrize("background", [0.02, 0.2, 0.5])
@pytest.mark.parametrize("method", ["agglomerative", "spectral"])
def test_planted_groups_recovered(method, background):
    counts = planted_confusion(background=background)
    np.testing.assert_array_equal(group_classes(counts, method=method), PLANTED_LABELS)
    np.testing.assert_array_equal(group_classes(counts, n_groups=8, method=method),
                                  PLANTED_LABELS)


def test_automatic_k_keeps_unconfused_classes_apart():
    clean = planted_confusion(confused=0.0, background=0.3)
    assert estimate_n_groups(class_affinity(clean)) == 12
    np.testing.assert_array_equal(group_classes(clean), np.arange(12))
    # Only the strongly confused pair is merged at a stricter cut.
    mixed = planted_confusion(blocks=((0, 1), (4, 6)), background=0.1) \
        + planted_confusion(confused=0.6, blocks=((0, 1),), background=0.1, seed=1)
    assert estimate_n_groups(class_affinity(mixed)) == 10
    assert estimate_n_groups(class_affinity(mixed), min_confusion=0.3) == 11


def test_seventy_three_classes_like_report_004():
    """73 classes, 63-73% error (report 004's accuracy was 37%), random blocks of 2-3 classes
    (report 004 went from 73 classes to 42 groups)."""
    rng = np.random.default_rng(1)
    order = rng.permutation(73)
    sizes = rng.integers(2, 4, 40)
    cuts = np.cumsum(sizes)
    blocks = [tuple(order[a:b]) for a, b in zip(np.r_[0, cuts], cuts) if b <= 60]
    counts = planted_confusion(confused=0.4, background=0.33, per_class=100, n_classes=73,
                               blocks=blocks)
    labels = group_classes(counts)
    for block in blocks:
        assert len(set(labels[list(block)])) == 1, block
    assert labels.max() + 1 == 73 - sum(len(b) - 1 for b in blocks)


def test_affinity_is_symmetric_rates():
    counts = np.array([[8, 2, 0], [4, 4, 2], [0, 0, 0]])  # class 2 absent from the data
    a = class_affinity(counts)
    np.testing.assert_allclose(a, [[1, 0.3, 0], [0.3, 1, 0.1], [0, 0.1, 1]])


def test_grouped_accuracy_never_below_class_accuracy():
    rng = np.random.default_rng(0)
    for seed in range(50):
        n_classes = rng.integers(3, 30)
        groups = rng.integers(0, rng.integers(1, n_classes + 1), n_classes)
        groups = np.unique(groups, return_inverse=True)[1]  # ids 0..G-1
        y = rng.integers(0, n_classes, 300)
        pred = np.where(rng.uniform(size=300) < 0.3, y, rng.integers(0, n_classes, 300))
        g_true, g_pred = regroup(y, pred, groups)
        assert accuracy(g_true, g_pred) >= accuracy(y, pred)


def test_summed_probabilities_can_lose_accuracy():
    """Why the guarantee is stated for hard predictions: summing inside groups can flip it."""
    groups = np.array([0, 0, 1])
    proba = np.array([[0.3, 0.3, 0.4]])
    y = np.array([2])
    assert accuracy(y, proba) == 1.0
    g_true, g_proba = regroup(y, proba, groups)
    np.testing.assert_allclose(g_proba, [[0.6, 0.4]])
    assert accuracy(g_true, g_proba) == 0.0


def test_grouped_confusion_matches_regrouped_labels():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 6, 500)
    pred = np.where(rng.uniform(size=500) < 0.5, y, rng.integers(0, 6, 500))
    groups = np.array([0, 1, 0, 2, 1, 2])
    counts = confusion_matrix(y, pred, labels=np.arange(6))
    g_true, g_pred = regroup(y, pred, groups)
    np.testing.assert_array_equal(grouped_confusion(counts, groups),
                                  confusion_matrix(g_true, g_pred, labels=np.arange(3)))


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="square"):
        group_classes(np.ones((3, 4)))
    with pytest.raises(ValueError, match="between 1 and"):
        group_classes(np.eye(3), n_groups=4)
    with pytest.raises(ValueError, match="method"):
        group_classes(np.eye(3), method="kmeans")
    with pytest.raises(ValueError, match="3 entries for 4 classes"):
        grouped_confusion(np.eye(4), np.array([0, 1, 1]))
