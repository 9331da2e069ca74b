"""The zoo's ensembles: combiners fit only on honest predictions, scored on their own
out-of-fold predictions.

Members arrive as the zoo's rows: each has ``oof`` (probabilities for the labelled rows
``oof_ids``, numbered train then val, that it was not trained on), ``trained_on`` (labelled
rows its ``oof`` model saw) and ``test``. A frozen-feature head has out-of-fold rows for all of
train+val (k-fold cross-fitting, then refit on all of them for ``test``); a trained network
only its validation rows. A group of members is fit on the rows they ALL have honest
predictions for (sklearn's ``StackingClassifier(cv=k)``, AutoGluon's bagging):

* all members, once a network is among them: the validation rows;
* heads only: every labelled row, while the best member on the validation rows is a head.

Per group: bagged greedy selection (Caruana et al. 2006) and a top-k average on
temperature-scaled members, and a stack (logistic on log-probabilities, L2 by CV). Each
combiner's validation score is the log-loss of its own 5-fold out-of-fold predictions over
its fit rows (``ensembles.cross_fit_predict``); the board then scores every row, members and
ensembles, on the rows they all have honest predictions for (``score_on_common_rows``), and
recommends the lowest. See docs/zoo.md.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from runtime import io as bio

LEVEL2_FOLDS = 5  # folds of a combiner's own out-of-fold score


def aligned(member: dict, ids: np.ndarray) -> np.ndarray:
    """``member``'s honest probabilities for labelled rows ``ids`` (all of which it has)."""
    own = np.asarray(member["oof_ids"])
    pos = np.searchsorted(own, ids)
    if np.any(pos >= len(own)) or not np.array_equal(own[np.minimum(pos, len(own) - 1)], ids):
        raise ValueError(f"{member['name']}: has no honest prediction for some of the rows "
                         f"asked for")
    return member["oof"][pos]


def level1_groups(members: list[dict], skipped: list | None = None
                  ) -> list[tuple[str, list[dict], np.ndarray]]:
    """(tag, members, rows) for each combiner group: every member on the rows all of them
    have honest predictions for, and the heads alone on all their out-of-fold rows while the
    best member on those common rows is a head (a group without the validation-best member
    could only lose to it); what is left out is appended to ``skipped``, with why."""
    from ensembles import log_loss

    heads = [m for m in members if m["val_source"] == "out-of-fold"]
    groups = []
    if len(members) > len(heads) and len(members) >= 2:
        ids = _common(members)
        y = aligned_labels(members, ids)
        best = min(members, key=lambda m: log_loss(y, aligned(m, ids)))
        if len(heads) >= 2 and best in heads:
            groups.append(("heads", heads, _common(heads)))
        elif len(heads) >= 2 and skipped is not None:
            skipped.append({"name": f"combiners of the {len(heads)} heads alone",
                            "kind": "ensemble",
                            "reason": f"the best member on the {len(ids)} validation rows is "
                                      f"{best['name']}, not a head"})
        groups.append(("all", members, ids))
    elif len(heads) >= 2:
        groups.append(("heads", heads, _common(heads)))
    for tag, group, ids in groups:
        check_honest(group, ids)
    return groups


def _common(members: list[dict]) -> np.ndarray:
    ids = np.asarray(members[0]["oof_ids"])
    for m in members[1:]:
        ids = np.intersect1d(ids, m["oof_ids"])
    return np.sort(ids)


def check_honest(members: list[dict], ids: np.ndarray) -> None:
    """Raise if a fit row is one a member was trained on (no combiner sees those)."""
    for m in members:
        bad = np.intersect1d(ids, m.get("trained_on", []))
        if bad.size:
            raise ValueError(f"{m['name']}: {bad.size} level-1 rows are among its training "
                             f"rows (e.g. labelled row {int(bad[0])}); refusing to fit")


def _combiners(seed: int):
    from ensembles import BaggedGreedySelection, LogProbaStack, TopKAverage

    return [("greedy", BaggedGreedySelection(random_state=seed)), ("topk", TopKAverage()),
            ("stack", LogProbaStack(random_state=seed))]


def ensemble_rows(members: list[dict], zdir: Path, seed: int,
                  skipped: list | None = None) -> list[dict]:
    """Every group's combiners, fit on its honest rows, with test probabilities and their own
    out-of-fold validation score; stacks saved under ``zdir/ensembles``."""
    from ensembles import cross_fit_predict, log_loss

    rows = []
    for tag, group, ids in level1_groups(members, skipped):
        P = np.stack([aligned(m, ids) for m in group])
        y = np.asarray(aligned_labels(group, ids))
        T = np.stack([m["test"] for m in group])
        smallest = int(np.bincount(y, minlength=P.shape[2]).min())
        source = "out-of-fold" if tag == "heads" else "validation"
        for kind, est in _combiners(seed):
            if smallest < 2 or (kind == "stack" and smallest < 3):
                continue  # too few rows of some class to cross-validate
            t0 = time.perf_counter()
            est.fit(P, y)
            oof = cross_fit_predict(est, P, y, cv=LEVEL2_FOLDS, random_state=seed)
            if kind != "stack":
                oof = _or_best_member(est, P, y, oof, group)
            fit_s = time.perf_counter() - t0
            rows.append(_row(tag, kind, est, group, est.predict_proba(T), fit_s, zdir, {
                "oof": oof, "y_oof": y, "oof_ids": ids, "trained_on": np.zeros(0, np.int64),
                "val_log_loss": log_loss(y, oof), "val_rows": len(ids),
                "val_source": f"cross-fit on {source} rows", "fit_rows": len(ids),
                "fit_on": source,
                "note": f"fit on {len(ids)} {source} rows"}))
    return rows


def score_on_common_rows(rows: list[dict]) -> np.ndarray:
    """Every row's validation log-loss on the SAME labelled rows: those all of them have
    honest predictions for (the validation rows once a network is on the board, else all of
    train+val), so the recommended row is chosen on one set. Each row's score on all of its
    own honest rows is kept as ``val_log_loss_own`` / ``val_rows_own``. Returns the rows."""
    from ensembles import log_loss

    ids = _common(rows)
    y = aligned_labels(rows, ids)
    for r in rows:
        r["val_log_loss_own"] = r.get("val_log_loss_own", r["val_log_loss"])
        r["val_rows_own"] = len(r["oof_ids"])
        r["val_log_loss"], r["val_rows"] = log_loss(y, aligned(r, ids)), len(ids)
    return ids


def aligned_labels(group: list[dict], ids: np.ndarray) -> np.ndarray:
    """The labels of rows ``ids``, checked to agree across the members."""
    ys = [np.asarray(m["y_oof"])[np.searchsorted(m["oof_ids"], ids)] for m in group]
    for m, yy in zip(group[1:], ys[1:]):
        if not np.array_equal(yy, ys[0]):
            raise ValueError(f"{m['name']}: its labels for the level-1 rows are not those of "
                             f"{group[0]['name']} (the splits differ)")
    return ys[0]


def _or_best_member(est, P: np.ndarray, y: np.ndarray, oof: np.ndarray,
                    group: list[dict]) -> np.ndarray:
    """A weighted combiner whose own out-of-fold log-loss is worse than its best member's on
    the same honest rows becomes that member alone (weight 1, no temperature), so that it
    ties instead of losing (as the stack's ``member`` form); returns the row's validation
    predictions. On the fast digits zoo the bagged selection scored 0.0914 there against
    ResNet-20's 0.0607, and lost on test beyond the interval."""
    from ensembles import log_loss

    own = [log_loss(y, p) for p in P]
    j = int(np.argmin(own))
    if own[j] >= log_loss(y, oof):
        return oof
    est.weights_ = np.eye(len(P))[j]
    est.temperatures_ = np.ones(len(P))
    est.alone_ = group[j]["name"]
    return P[j]


def _row(tag: str, kind: str, est, group: list[dict], test: np.ndarray, fit_s: float,
         zdir: Path, extra: dict) -> dict:
    """An ensemble row: name, test probabilities, cost of the members it runs, its source."""
    from ensembles import combined_throughput

    m = len(group)
    what = f"{m} heads" if tag == "heads" else f"all {m}"
    if kind == "stack":
        weights = np.ones(m)
        path = zdir / "ensembles" / f"stack-{tag}.npz"
        bio.save_arrays(path, [est.coef_, est.intercept_],
                        {"format": "stack v1: level-1 logistic head on log(clip(p, 1e-7, 1)) "
                                   "of the members in order"})
        src = {"combiner": "stack", "stack": str(path.relative_to(zdir.parent)),
               "log_eps": est.log_eps, "C": est.C_, "form": est.form_}
        form = (f"its best member alone: {group[est.member_]['name']}"
                if est.form_ == "member" else
                {"pool": "log-linear pool", "full": "logistic on log-probas"}[est.form_])
        name = f"stack of {what} ({form}, chosen by CV)"
    else:
        weights = est.weights_
        src = {"combiner": "weighted",
               "temperatures": [float(t) for t, w in zip(est.temperatures_, weights) if w > 0]}
        name = (f"greedy selection of {what} (bagged Caruana)" if kind == "greedy"
                else f"top-{est.k_} average of {what}")
        if getattr(est, "alone_", None):
            name = (f"{'greedy selection' if kind == 'greedy' else 'top-k average'} of {what} "
                    f"(its best member alone: {est.alone_}, chosen on validation)")
    used = [g for g, w in zip(group, weights) if w > 0]
    ips: dict = {}
    for g in used:
        for p in g["pipelines"]:
            ips.setdefault(p, g.get("ips_by_pipeline", {}).get(p, g["img_per_s"]))
    vals = [v for v in ips.values() if v]
    kept = [float(w) for w in weights if w > 0]
    return {"name": name, "kind": "ensemble", "test": test, "y_test": group[0]["y_test"],
            "fit_s": sum(g["fit_s"] or 0 for g in used) + fit_s,
            "img_per_s": combined_throughput(vals) if len(vals) == len(ips) else None,
            "params": sum(g["params"] or 0 for g in used),
            "size_mb": sum(g["size_mb"] or 0 for g in used),
            "source": {"type": "ensemble", "members": [g["name"] for g in used],
                       "weights": kept, "group": tag, **src},
            "members": [g["name"] for g in used], "weights": kept, **extra}
