"""``bench ensemble``: heads on cached embeddings, their average and their stack, scored on
the same test split and added to the results table."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from runtime import io as bio


def feature_files(spec: str | list[str]) -> list[Path]:
    """Feature files from a directory (every ``*.h5`` under it) or comma-separated paths."""
    from runtime.paths import expand_paths

    items = spec if isinstance(spec, list) else [s for s in spec.split(",") if s]
    return expand_paths(items, lambda p: sorted(p.rglob("*.h5")),
                        empty="{path}: no .h5 feature files in this directory",
                        missing="{path}: no such feature file or directory")


def run_ensemble(files: list[Path], out_dir: str | Path, *, cv: int = 5, seed: int = 0,
                 eps: float = 1e-15, quiet: bool = False) -> list[dict]:
    """Fit a ``LogisticHead`` per feature file, a head on their concatenation, their average
    and a stack; score all on the test split; write rows under ``out_dir/rows``.

    Heads are fit on train + val (the L2 strength is chosen by ``cv``-fold cross-validation
    inside the training rows). The stack's level-1 model learns from out-of-fold member
    probabilities on the same rows.
    """
    views = _load_views(files)
    probas, fit_s, ens = _fit_methods(views, cv=cv, seed=seed, quiet=quiet)
    labels = list(range(len(views["classes"])))
    rows = _score(probas, views, ens, eps=eps, seed=seed, labels=labels)
    return _write_rows(rows, files, views, fit_s, ens, out_dir, eps=eps)


def _load_views(files: list[Path]) -> dict:
    """The feature files as row-aligned views: fit (train + val) and test, with labels."""
    import features
    from ensembles import Views

    data = [features.load([f]) for f in files]
    names = [d.backbones[0] for d in data]
    if len(set(names)) != len(names):
        raise ValueError(f"two feature files for the same backbone among {files}")
    attrs = [features.read_attrs(f) for f in files]
    fp = {a.get("dataset_fingerprint") for a in attrs}
    if len(fp) != 1:
        raise ValueError(f"feature files come from different data sets: {files}")

    def fit_xy(d):
        X = np.concatenate([d["train"][0], d["val"][0]])
        y = np.concatenate([d["train"][1], d["val"][1]])
        return X, y

    y_fit = fit_xy(data[0])[1]
    y_test = data[0]["test"][1]
    for d, f in zip(data[1:], files[1:]):
        if not (np.array_equal(fit_xy(d)[1], y_fit) and np.array_equal(d["test"][1], y_test)):
            raise ValueError(f"{f}: labels are not row-aligned with {files[0]}")
    return {"data": data, "names": names, "attrs": attrs, "classes": data[0].classes,
            "fit": Views({n: fit_xy(d)[0] for n, d in zip(names, data)}),
            "test": Views({n: d["test"][0] for n, d in zip(names, data)}),
            "y_fit": y_fit, "y_test": y_test}


def _fit_methods(views: dict, *, cv: int, seed: int, quiet: bool):
    """Fit the heads (and, for two or more files, concat, average and stack); return their
    test probabilities, fit times and each ensemble's members."""
    from ensembles import AveragingEnsemble, LogisticHead, PrefitMember, StackingEnsemble

    names, fit_views, test_views, y_fit = (views[k] for k in ("names", "fit", "test", "y_fit"))
    probas, fit_s = {}, {}

    def timed(label, fn):
        t0 = time.perf_counter()
        out = fn()
        fit_s[label] = time.perf_counter() - t0
        if not quiet:
            print(f"  {label}: fit in {fit_s[label]:.1f} s")
        return out

    heads = {}
    for n in names:
        heads[n] = timed(f"head:{n}", lambda n=n: LogisticHead(cv=cv, random_state=seed).fit(
            fit_views[n], y_fit))
        probas[f"head:{n}"] = heads[n].predict_proba(test_views[n])
    if len(names) > 1:
        concat = timed("concat", lambda: LogisticHead(cv=cv, random_state=seed).fit(
            np.concatenate([fit_views[n] for n in names], 1), y_fit))
        probas["concat"] = concat.predict_proba(np.concatenate([test_views[n] for n in names], 1))
        # The heads are already fit: average them as prefit members.
        avg = AveragingEnsemble([PrefitMember(n, heads[n]) for n in names]).fit(
            fit_views, y_fit)
        probas["average"] = avg.predict_proba(test_views)
        stack = timed("stack", lambda: StackingEnsemble(
            [(n, LogisticHead(cv=cv, random_state=seed)) for n in names], cv=cv).fit(
            fit_views, y_fit))
        probas["stack"] = stack.predict_proba(test_views)
    ens = {m: [f"head:{n}" for n in names] for m in ("concat", "average", "stack")
           if m in probas}
    return probas, fit_s, ens


def _score(probas: dict, views: dict, ens: dict, *, eps: float, seed: int,
           labels: list[int]) -> list[dict]:
    """The compared rows on the test split, each with its log-loss gap to the best row."""
    from ensembles import compare, log_loss_difference

    y_test = views["y_test"]
    # Inference cost: the backbone's measured extraction rate (the head's cost is negligible).
    ips = {}
    for n, a, d in zip(views["names"], views["attrs"], views["data"]):
        n_img = sum(len(d[s][1]) for s in ("train", "val", "test"))
        if a.get("seconds"):
            ips[f"head:{n}"] = n_img / float(a["seconds"])
    rows = compare(probas, y_test, ips, ensembles=ens, eps=eps, labels=labels)
    # Is each gap to the best row more than the test split's sampling noise?
    best = next(r["method"] for r in rows if r["best"])
    for row in rows:
        row["vs_best"] = log_loss_difference(y_test, probas[row["method"]], probas[best],
                                             eps=eps, labels=labels, seed=seed)
    return rows


def _write_rows(rows: list[dict], files: list[Path], views: dict, fit_s: dict, ens: dict,
                out_dir, *, eps: float) -> list[dict]:
    """One results row a method under ``out_dir/rows``, and ``ensemble-<data>.md``."""
    attrs, classes = views["attrs"], views["classes"]
    dataset = attrs[0].get("dataset", "features")
    written = []
    for row in rows:
        method = row["method"]
        rec = {
            "run_id": f"ensemble-{dataset}-{method.replace(':', '_')}",
            "tag": method, "model": method, "status": "complete",
            "dataset": {"name": dataset, "fingerprint": attrs[0].get("dataset_fingerprint")},
            "accuracy": row["accuracy"],
            "top5_accuracy": row.get("top5") if len(classes) > 5 else None,
            "log_loss": row["log_loss"], "ece": row["ece"],
            "infer_img_per_s": row.get("img_per_s"), "best": row["best"],
            "fit_s": fit_s.get(method), "log_loss_clip": eps,
            "log_loss_vs_best": row["vs_best"],
            "members": ens.get(method, [method]),
            "feature_files": [str(f) for f in files], "num_classes": len(classes),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        bio.write_json(Path(out_dir) / "rows" / f"{rec['run_id']}.json", rec)
        written.append(rec)
    bio.write_text(Path(out_dir) / f"ensemble-{dataset}.md", ensemble_markdown(written, eps))
    return written


def ensemble_markdown(rows: list[dict], eps: float) -> str:
    lines = [f"Test split; log-loss with predictions clipped to [{eps:g}, 1 - {eps:g}]; ECE over "
             "15 equal-width bins; img/s = backbone extraction rate (combined for ensembles); "
             "vs best: log-loss minus the best row's, with a 95% paired bootstrap interval over "
             "the test images (an interval containing 0: within the split's noise).",
             ""]
    from .report import schema

    lines += schema.markdown_table(schema.ensemble_rows(rows), schema.ENSEMBLE_MD)
    return "\n".join(lines) + "\n"
