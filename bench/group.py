"""``bench group``: merge the classes a trained run confuses, and score it at group level
(report 004, chapter 5: 73 classes -> 42 groups, test accuracy 37.33% -> 50.03%).

The groups are chosen on the run's *validation* predictions (as the report used its
validation confusion matrix) and scored on its test predictions, so the grouped figure is not
graded on the data that chose the groups. Next to it: the expected accuracy of random groupings
with the same group sizes, the gain any merge of classes gives for free.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime import io as bio


def _confusion(labels: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    c = np.zeros((n, n), np.int64)
    np.add.at(c, (labels, pred), 1)
    return c


def random_grouping_accuracy(labels: np.ndarray, pred: np.ndarray, groups: np.ndarray,
                             n_draws: int = 200, seed: int = 0) -> float:
    """Mean group accuracy over random assignments of classes to groups of the same sizes."""
    rng = np.random.default_rng(seed)
    accs = []
    for _ in range(n_draws):
        g = rng.permutation(groups)
        accs.append(float(np.mean(g[labels] == g[pred])))
    return float(np.mean(accs))


def group_run(run_dir: str | Path, n_groups: int | None = None, *,
              method: str = "agglomerative", min_confusion: float | None = None,
              cache_dir=None, write: bool = True) -> dict:
    """Group a finished run's classes from its validation confusion and re-score its test
    predictions per group. Writes ``RUN_DIR/groups.json`` and ``grouped_confusion.{csv,png}``.
    """
    from ensembles.grouping import (DEFAULT_MIN_CONFUSION, group_classes, grouped_confusion,
                                    regroup)

    from .evaluate import read_record, split_log_proba
    from .report.tables import write_confusion_files

    run_dir = Path(run_dir)
    rec = read_record(run_dir)
    classes = list(rec["classes"])
    n = len(classes)
    if n < 3:
        raise ValueError(f"{run_dir}: {n} classes; grouping needs at least 3")
    min_confusion = DEFAULT_MIN_CONFUSION if min_confusion is None else min_confusion
    try:
        val_lp, val_y = split_log_proba(run_dir, "val", cache_dir=cache_dir)
        chosen_on = "val"
    except ValueError:  # no validation split: fall back to the test split, and say so
        val_lp, val_y = split_log_proba(run_dir, "test", cache_dir=cache_dir)
        chosen_on = "test (the run has no validation split: the grouped score is optimistic)"
    val_conf = _confusion(val_y, val_lp.argmax(1), n)
    groups = group_classes(val_conf, n_groups, method, min_confusion=min_confusion)
    k = int(groups.max()) + 1

    test_lp, test_y = split_log_proba(run_dir, "test", cache_dir=cache_dir)
    pred = test_lp.argmax(1)
    yg, pg = regroup(test_y, pred, groups)
    _, proba_g = regroup(test_y, np.exp(test_lp.astype(np.float64)), groups)
    test_conf = _confusion(test_y, pred, n)
    gconf = grouped_confusion(test_conf, groups).astype(np.int64)
    names = ["+".join(classes[i] for i in np.flatnonzero(groups == g)) for g in range(k)]
    result = {
        "run_id": rec["run_id"], "tag": rec.get("tag"), "n_classes": n, "n_groups": k,
        "method": method, "min_confusion": min_confusion if n_groups is None else None,
        "chosen_on": chosen_on,
        "groups": {name: [classes[i] for i in np.flatnonzero(groups == g)]
                   for g, name in enumerate(names)},
        "class_to_group": [int(g) for g in groups],
        "accuracy": float(np.mean(pred == test_y)),
        "grouped_accuracy": float(np.mean(yg == pg)),
        "grouped_accuracy_summed_proba": float(np.mean(proba_g.argmax(1) == yg)),
        "grouped_log_loss": float(-np.mean(np.log(np.clip(
            proba_g[np.arange(len(yg)), yg], 1e-15, 1.0)))),
        "random_grouping_accuracy": random_grouping_accuracy(test_y, pred, groups),
        "n_test": int(len(test_y)),
        "grouped_confusion": gconf.tolist(),
    }
    if write:
        bio.write_json(run_dir / "groups.json", result)
        short = [nm if len(nm) <= 24 else nm[:21] + "..." for nm in names]
        write_confusion_files(run_dir, "grouped_confusion", gconf, short,
                              f"{rec.get('tag')}: {k} groups, accuracy "
                              f"{100 * result['grouped_accuracy']:.2f}%")
    return result


def group_markdown(r: dict) -> str:
    from .report.schema import pct

    lines = [f"{r['tag']} ({r['run_id']}): {r['n_classes']} classes -> {r['n_groups']} groups "
             f"({r['method']}, chosen on {r['chosen_on']}; scored on {r['n_test']} test images)",
             "", "| | accuracy |", "|---|---|",
             f"| classes | {pct(r['accuracy'])} |",
             f"| groups (argmax class -> its group) | {pct(r['grouped_accuracy'])} |",
             f"| groups (argmax of summed probabilities) | "
             f"{pct(r['grouped_accuracy_summed_proba'])} |",
             f"| random groupings of the same sizes (mean of 200) | "
             f"{pct(r['random_grouping_accuracy'])} |", "", "Groups:"]
    for name, members in r["groups"].items():
        if len(members) > 1:
            lines.append(f"- {', '.join(members)}")
    singles = [m[0] for m in r["groups"].values() if len(m) == 1]
    if singles:
        lines.append(f"- alone: {', '.join(singles)}")
    return "\n".join(lines) + "\n"
