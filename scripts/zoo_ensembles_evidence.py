"""Before/after evidence for the zoo's ensembles (issue 21), on the SAME members in one run.

Runs the zoo's stages once (``bench.suites.zoo``: the "after" board, written as usual to
OUT/leaderboard.md and exported to OUT/best), then rebuilds the "before" from the same runs
and the same cached features, the way the zoo did before out-of-fold stacking:

* heads fit on the training split only (LogisticHead, the same C grid and folds), scored on
  validation;
* the average of every member, greedy selection (25 picks) and a stack, all fit on the
  members' validation predictions;
* the board ranked by TEST log-loss and its first row exported (selection on test).

For each side: the best single row (by test log-loss), each combiner, and the row each side
would export; test log-loss with a 95% paired bootstrap interval against that side's best
single row. Writes OUT/evidence.json and OUT/evidence.md.

    PYTHONPATH=. python scripts/zoo_ensembles_evidence.py --dataset digits --out /tmp/ev \\
        --preset fast --time-budget 4m
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np


def run_after(args):
    """The zoo as it is now, stage by stage (the member rows are kept for the before)."""
    from bench.suites import zoo

    run = zoo.open_run(out=args.out, quiet=args.quiet, force=False, cache_dir=args.cache_dir,
                       seed=args.seed, devices=None, dataset=args.dataset,
                       time_budget=args.time_budget, preset=args.preset,
                       max_per_class=args.max_per_class)
    data = zoo.load_data(run)
    plan = zoo.plan_stage(run, data)
    rows = zoo.run_candidates(run, data, plan)
    t0 = time.perf_counter()
    ens = zoo.ensemble_stage(run, rows)
    zoo.board_stage(run, data, plan, list(rows.values()) + ens, t0)
    return run, data, list(rows.values()), ens


def before_members(run, members: list[dict]) -> list[dict]:
    """The members as the old zoo had them: heads refit on the training split alone."""
    import features
    from ensembles import LogisticHead

    out = []
    for m in members:
        if m["source"]["type"] != "head":
            out.append(dict(m))
            continue
        d = features.load([run.out / f for f in m["source"]["features"]])
        head = LogisticHead(Cs=run.P["head_cs"], cv=run.P["head_cv"],
                            random_state=run.seed).fit(*d["train"])
        out.append(dict(m, val=head.predict_proba(d["val"][0]), y_val=d["val"][1],
                        test=head.predict_proba(d["test"][0])))
    return out


def old_ensembles(members: list[dict], seed: int) -> list[dict]:
    """The old ``ensemble_rows``: average, greedy (25 picks), stack, fit on validation."""
    from ensembles import GreedyEnsembleSelection, LogisticHead, PrefitMember, StackingEnsemble
    from ensembles import Views

    y_val = members[0]["y_val"]
    m = len(members)
    val = [mm["val"] for mm in members]
    test = [mm["test"] for mm in members]
    rows = [{"name": f"average of {m}", "test": np.mean(test, axis=0)}]
    sel = GreedyEnsembleSelection(n_iter=25).fit(val, y_val)
    rows.append({"name": f"greedy selection of {m} (25 picks)",
                 "test": sel.predict_proba(test)})
    folds = min(5, int(np.bincount(np.asarray(y_val)).min()))
    if folds >= 2:
        stack = StackingEnsemble([PrefitMember(f"m{i}") for i in range(m)],
                                 final=LogisticHead(cv=folds, random_state=seed), cv=folds).fit(
            Views({f"m{i}": v for i, v in enumerate(val)}), y_val)
        rows.append({"name": f"stack of {m} (val log-probas)",
                     "test": stack.predict_proba(Views({f"m{i}": t for i, t in
                                                        enumerate(test)}))})
    return rows


def score(rows: list[dict], y, ref: np.ndarray) -> list[dict]:
    """Test log-loss and accuracy of each row, and the paired interval against ``ref``."""
    from ensembles import accuracy, log_loss, log_loss_difference

    out = []
    for r in rows:
        vb = log_loss_difference(y, r["test"], ref)
        out.append({"name": r["name"], "kind": r.get("kind", "ensemble"),
                    "val_log_loss": r.get("val_log_loss"), "val_rows": r.get("val_rows"),
                    "test_log_loss": log_loss(y, r["test"]),
                    "test_accuracy": accuracy(y, r["test"]),
                    "vs_best_single": vb})
    return out


def compare(run, data, members: list[dict], after_ens: list[dict]) -> dict:
    """Before and after, each against its own best single row (by test log-loss)."""
    from ensembles import log_loss

    y = members[0]["y_test"]
    board = json.loads((run.out / "zoo.json").read_text())
    before = before_members(run, members)
    old = old_ensembles(before, run.seed)
    sides = {}
    for side, mem, ens in (("before", before, old),
                           ("after", members, after_ens)):
        best = min(mem, key=lambda r: log_loss(y, r["test"]))
        rows = [dict(best, name=f"best single: {best['name']}")] + ens
        if side == "before":  # the old zoo had no honest validation score for its rows
            rows = [dict(r, val_log_loss=None, val_rows=None) for r in rows]
        sides[side] = {"best_single": best["name"], "rows": score(rows, y, best["test"])}
    by_test = min(before + old,
                  key=lambda r: log_loss(y, r["test"]))
    sides["before"]["exported"] = by_test["name"] + " (lowest TEST log-loss)"
    rec = next(r for r in board["rows"] if r["recommended"])
    sides["after"]["exported"] = (f"{rec['name']} (lowest validation log-loss "
                                  f"{rec['val_log_loss']:.4f}; test {rec['log_loss']:.4f})")
    return {"dataset": run.spec, "sizes": data.n, "classes": data.num_classes,
            "preset": run.preset, "budget_s": run.budget, "wall_s": run.clock.used(),
            "load_before": LOAD0, "load_after": os.getloadavg(), **sides}


def markdown(ev: dict) -> str:
    """The evidence as a Markdown table per side."""
    L = [f"### {ev['dataset']} (train/val/test {ev['sizes']['train']}/{ev['sizes']['val']}/"
         f"{ev['sizes']['test']}, {ev['classes']} classes)", "",
         f"Preset {ev['preset']}, budget {ev['budget_s']:.0f} s, wall {ev['wall_s']:.0f} s; "
         f"load average at start {ev['load_before'][0]:.2f}, at end {ev['load_after'][0]:.2f}.",
         "", "| side | row | val log-loss (rows) | test acc | test log-loss | vs best single "
             "[95% CI] |", "|---|---|---|---|---|---|"]
    for side in ("before", "after"):
        for r in ev[side]["rows"]:
            vb = r["vs_best_single"]
            val = ("" if r["val_log_loss"] is None
                   else f"{r['val_log_loss']:.4f} ({r['val_rows']})")
            gap = ("—" if r["name"].startswith("best single")
                   else f"{vb['diff']:+.4f} [{vb['lo']:+.4f}, {vb['hi']:+.4f}]")
            L.append(f"| {side} | {r['name']} | {val if side == 'after' else ''} | "
                     f"{100 * r['test_accuracy']:.2f}% | {r['test_log_loss']:.4f} | {gap} |")
        L.append(f"| {side} | exported: {ev[side]['exported']} | | | | |")
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--time-budget", default="4m")
    ap.add_argument("--max-per-class", type=int, default=None)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    run, data, members, ens = run_after(args)
    ev = compare(run, data, members, ens)
    from runtime import io as bio

    bio.write_json(args.out / "evidence.json", ev)
    bio.write_text(args.out / "evidence.md", markdown(ev))
    print(markdown(ev))
    return 0


LOAD0 = os.getloadavg()

if __name__ == "__main__":
    raise SystemExit(main())
