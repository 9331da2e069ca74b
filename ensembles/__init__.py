"""Heads, stacking and ensemble scores on arrays (embeddings and class probabilities).

Everything here is a scikit-learn estimator or a function of NumPy arrays; nothing imports
the models, features or bench packages, and JAX is imported only when a JAX head is fit.

* ``LogisticHead``: multinomial logistic regression on standardised embeddings, L2 by CV.
* ``ConcatHead``: one head over several backbones' embeddings, optionally with dropout.
* ``StackingEnsemble``, ``AveragingEnsemble``, ``VotingEnsemble``, ``PrefitMember``,
  ``Views``: ensembles of heads and of networks trained elsewhere.
* ``GreedyEnsembleSelection``: Caruana et al. 2004 forward selection with replacement over
  members' probabilities (AutoGluon's weighted ensemble).
* ``BaggedGreedySelection``, ``TopKAverage``, ``LogProbaStack``, ``fit_temperature``,
  ``cross_fit_predict``: level-1 combiners of out-of-fold probabilities (Caruana et al.
  2006 bagged selection, per-member temperature scaling, a stack with CV-chosen L2).
* ``metrics``: accuracy, top-k, Kaggle log-loss, ECE, ``compare`` for results tables.
* ``grouping``: merge classes that a model confuses (report 004).
"""

from .grouping import class_affinity, estimate_n_groups, group_classes, grouped_confusion, regroup
from .heads import ConcatHead, LogisticHead
from .metrics import (
    accuracy,
    combined_throughput,
    compare,
    expected_calibration_error,
    log_loss,
    log_loss_difference,
    top_k_accuracy,
)
from .level1 import (
    BaggedGreedySelection,
    LogProbaStack,
    TopKAverage,
    cross_fit_predict,
    fit_temperature,
    temper,
)
from .selection import GreedyEnsembleSelection
from .stacking import AveragingEnsemble, PrefitMember, StackingEnsemble, Views, VotingEnsemble

__all__ = [
    "AveragingEnsemble",
    "BaggedGreedySelection",
    "ConcatHead",
    "GreedyEnsembleSelection",
    "LogProbaStack",
    "LogisticHead",
    "PrefitMember",
    "StackingEnsemble",
    "TopKAverage",
    "Views",
    "VotingEnsemble",
    "accuracy",
    "class_affinity",
    "combined_throughput",
    "compare",
    "cross_fit_predict",
    "estimate_n_groups",
    "expected_calibration_error",
    "fit_temperature",
    "group_classes",
    "grouped_confusion",
    "log_loss",
    "log_loss_difference",
    "regroup",
    "temper",
    "top_k_accuracy",
]
