"""The zoo's ensemble stage on synthetic member rows (no training, no JAX): combiners fit only
on honest rows, identical members give that member, the recommended row is the validation
argmin and is what the boards mark and ``best`` finds."""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest

N = {"train": 60, "val": 30, "test": 40}
K = 3


def _proba(rng, y, q):
    z = rng.normal(size=(len(y), K))
    z[np.arange(len(y)), y] += q
    return np.exp(z) / np.exp(z).sum(1, keepdims=True)


def _labels():
    rng = np.random.default_rng(0)
    return (np.arange(N["train"] + N["val"]) % K, rng.permutation(np.arange(N["test"]) % K))


def _member(name, kind, rng, q, network=False, oof=None, test=None):
    from bench.suites.zoo import labelled_ids

    y_lab, y_test = _labels()
    ids = labelled_ids(N, "val") if network else np.arange(len(y_lab))
    return {"name": name, "kind": kind, "source": {"type": "run" if network else "head"},
            "oof": _proba(rng, y_lab[ids], q) if oof is None else oof, "y_oof": y_lab[ids],
            "oof_ids": ids, "trained_on": labelled_ids(N, "train") if network else
            np.zeros(0, np.int64), "val_source": "validation" if network else "out-of-fold",
            "test": _proba(rng, y_test, q) if test is None else test, "y_test": y_test,
            "fit_s": 1.0, "img_per_s": 100.0, "params": 10, "size_mb": 0.1,
            "pipelines": [name]}


def test_combiners_use_only_rows_every_member_has_honest_predictions_for(tmp_path):
    from bench.suites.zoo import labelled_ids
    from bench.suites.zoo_ensembles import check_honest, ensemble_rows, level1_groups

    rng = np.random.default_rng(1)
    members = [_member("h1", "frozen", rng, 2.0), _member("h2", "frozen", rng, 1.5),
               _member("net", "scratch", rng, 1.0, network=True)]
    groups = {tag: ids for tag, _, ids in level1_groups(members)}
    assert groups["heads"].tolist() == list(range(N["train"] + N["val"]))
    assert groups["all"].tolist() == labelled_ids(N, "val").tolist()
    rows = ensemble_rows(members, tmp_path / "zoo", 0)
    assert {r["source"]["group"] for r in rows} == {"heads", "all"}
    for r in rows:
        n = N["train"] + N["val"] if r["source"]["group"] == "heads" else N["val"]
        assert r["val_rows"] == n and r["fit_rows"] == n and f"fit on {n} " in r["note"]
        assert r["fit_on"] == ("out-of-fold" if n > N["val"] else "validation")
    # Planted: a network that claims predictions for rows it was trained on is refused.
    liar = dict(members[2], oof_ids=np.arange(N["train"] + N["val"]), y_oof=_labels()[0],
                oof=_proba(rng, _labels()[0], 1.0), name="liar")
    with pytest.raises(ValueError, match="liar: .* among its training rows"):
        level1_groups(members[:2] + [liar])
    check_honest(members, labelled_ids(N, "val"))  # the validation rows are fine
    # A network better than every head on validation: no combiner of the heads alone (it
    # could only lose to that network), and the board says why.
    strong = _member("net", "scratch", rng, 6.0, network=True)
    skipped = []
    assert [t for t, _, _ in level1_groups(members[:2] + [strong], skipped)] == ["all"]
    assert "best member on the 30 validation rows is net" in skipped[0]["reason"]


def test_a_zoo_of_identical_members_gives_an_ensemble_equal_to_that_member(tmp_path):
    from bench.suites.zoo_ensembles import ensemble_rows
    from ensembles import fit_temperature, log_loss, temper

    rng = np.random.default_rng(2)
    one = _member("m", "frozen", rng, 2.0)
    members = [dict(one, name=f"m{i}") for i in range(3)]
    rows = ensemble_rows(members, tmp_path / "zoo", 0)
    T = fit_temperature(one["oof"], one["y_oof"])
    weighted = [r for r in rows if r["source"]["combiner"] == "weighted"]
    assert len(weighted) == 2 and len(rows) == 3
    for r in weighted:  # the member, temperature-scaled on its out-of-fold rows
        np.testing.assert_allclose(r["test"], temper(one["test"], T), atol=1e-12)
        assert set(r["source"]["temperatures"]) == {T}
    stack = next(r for r in rows if r["source"]["combiner"] == "stack")
    # The stack may recalibrate the member (its full form on the out-of-fold rows), never lose.
    assert log_loss(one["y_test"], stack["test"]) <= log_loss(
        one["y_test"], temper(one["test"], T)) + 0.05


def test_recommended_row_is_the_validation_argmin_on_every_board(tmp_path):
    from bench.report.leaderboard import find_row, write_leaderboard
    from bench.suites.zoo import labelled_ids, leaderboard
    from ensembles import log_loss

    rng = np.random.default_rng(3)
    y_lab, y_test = _labels()
    rows = []
    # Validation and test disagree on purpose: the best on test has the worst validation.
    # "n" is a network: every row is then scored on the validation rows alone.
    for name, q_val, q_test in (("a", 0.5, 4.0), ("b", 4.0, 1.0), ("c", 2.0, 2.0),
                                ("n", 0.2, 0.2)):
        net = name == "n"
        r = _member(name, "scratch" if net else "frozen", rng, 0.0, network=net,
                    test=_proba(rng, y_test, q_test))
        r["oof"] = _proba(rng, r["y_oof"], q_val)
        r["val_log_loss"] = log_loss(r["y_oof"], r["oof"])
        rows.append(r)
    own = {r["name"]: r["val_log_loss"] for r in rows}
    ds = SimpleNamespace(classes=["x", "y", "z"], splits={
        k: SimpleNamespace(labels=np.zeros(v)) for k, v in N.items()})
    st = {"decisions": {}, "near_duplicates": {}}
    plan = {"skipped": [], "items": [], "estimates": {}, "epochs": {}}
    board = leaderboard(rows, ds, st, plan, 60.0, "fast", "synthetic")
    assert [r["name"] for r in board["rows"]] == ["b", "c", "a", "n"]
    val_ids = labelled_ids(N, "val")
    for r, src in zip(board["rows"], (rows[1], rows[2], rows[0], rows[3])):
        pos = np.searchsorted(src["oof_ids"], val_ids)
        assert r["val_rows"] == N["val"] and r["val_log_loss"] == pytest.approx(
            log_loss(y_lab[val_ids], src["oof"][pos]))
        assert r["val_log_loss_own"] == own[r["name"]]
    assert board["recommended"] == "b" and board["rows"][0]["recommended"]
    assert [r["recommended"] for r in board["rows"]] == [True, False, False, False]
    assert min(board["rows"], key=lambda r: r["log_loss"])["name"] == "a"
    assert board["rows"][0]["vs_recommended"] is None
    for r, src in zip(board["rows"][1:], (rows[2], rows[0], rows[3])):
        vb = r["vs_recommended"]
        assert vb["diff"] == pytest.approx(log_loss(y_test, src["test"])
                                           - log_loss(y_test, rows[1]["test"]), abs=1e-9)
    assert find_row(board, "best")["name"] == "b"
    md = write_leaderboard(tmp_path, board).read_text()
    assert "| 1 ★ | b (refit" not in md and "| 1 ★ | b |" in md
    assert "val log-loss" in md and "vs recommended [95% CI]" in md and "**b**" in md
    html = (tmp_path / "leaderboard.html").read_text()
    assert "1 ★" in html and "val log-loss" in html
    with open(tmp_path / "leaderboard.csv") as f:
        table = list(csv.DictReader(f))
    assert [t["method"] for t in table] == ["b", "c", "a", "n"]
    assert [t["recommended"] for t in table] == ["1", "0", "0", "0"]
    assert float(table[0]["val_log_loss"]) == pytest.approx(board["rows"][0]["val_log_loss"])
    assert table[0]["val_source"] == "out-of-fold" and table[0]["val_rows"] == str(N["val"])
    assert json.loads((tmp_path / "zoo.json").read_text())["recommended"] == "b"
