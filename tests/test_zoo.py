"""The zoo suite on a tiny image folder: plan within the budget, one leaderboard of every
kind present, resuming after SIGKILL without repeating finished work, and the exported best
model reproducing the leaderboard from the files alone."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import REPO, write_image_folder

# Tiny and fixed: one scratch CNN at 2 epochs, EfficientNet-Lite0 features (random weights
# would do for the cost, but the shipped ImageNet file loads in a second), no fine-tuning.
TINY = {"name": "tiny", "scratch": (("benchmark_cnn", (), "none"),),
        "backbones": ("efficientnet_lite0",), "keras": False, "scratch_size": (32, 32),
        "feature_size": 64, "finetune_size": 64, "scratch_epochs": (2, 2),
        "finetune_epochs": None, "head_cv": 2, "head_cs": 2}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("imgs") / "data", n_per_class=30, size=32)


@pytest.fixture(scope="module")
def zoo(folder, tmp_path_factory):
    from bench.suites.zoo import run_zoo

    out = tmp_path_factory.mktemp("zoo")
    t0 = time.perf_counter()
    path = run_zoo(out=out, quiet=True, cache_dir=str(out / "cache"), dataset=str(folder),
                   time_budget="10m", preset=TINY)
    return out, path, time.perf_counter() - t0


def _rows(out):
    return json.loads((Path(out) / "zoo.json").read_text())["rows"]


def test_leaderboard_has_every_kind_present_and_consistent_scores(zoo):
    out, path, _ = zoo
    rows = _rows(out)
    kinds = {r["kind"] for r in rows}
    assert kinds == {"scratch", "frozen", "ensemble"}
    names = [r["name"] for r in rows]
    assert any(n.startswith("greedy selection of all 2") for n in names)
    assert any(n.startswith("stack of all 2") for n in names)
    assert any(n.startswith("top-") and "average of all 2" in n for n in names)
    # Ranked by validation log-loss, every row on the same (validation) rows; the recommended
    # row has no gap, the others a paired test interval around theirs.
    val = [r["val_log_loss"] for r in rows]
    assert val == sorted(val) and {r["val_rows"] for r in rows} == {9}
    assert [r["recommended"] for r in rows] == [True] + [False] * (len(rows) - 1)
    assert rows[0]["vs_recommended"] is None
    for r in rows[1:]:
        vb = r["vs_recommended"]
        assert vb["lo"] <= vb["diff"] <= vb["hi"]
        assert vb["diff"] == pytest.approx(r["log_loss"] - rows[0]["log_loss"], abs=1e-9)
    head = next(r for r in rows if r["source"]["type"] == "head")
    assert head["val_rows_own"] == 72 and head["val_source"] == "out-of-fold"
    md = path.read_text()
    for col in ("val log-loss", "test acc", "test log-loss", "vs recommended [95% CI]", "ECE",
                "ms/img", "size MB", "★"):
        assert col in md
    assert "fit on 9 validation rows" in md
    board = json.loads((out / "zoo.json").read_text())
    assert board["level1"]["networks"].startswith("validation predictions only")
    assert json.loads((out / "best" / "predictor.json").read_text())["name"] == rows[0]["name"]
    assert "val_log_loss" in (out / "leaderboard.csv").read_text().splitlines()[0]
    assert "Near-duplicate pairs" in md
    assert (out / "leaderboard.csv").read_text().count("\n") == len(rows) + 1
    html = (out / "leaderboard.html").read_text()
    assert html.startswith('<section id="zoo-leaderboard">') and html.count("<tr>") == len(rows) + 1
    assert (out / "leaderboard_pareto.png").read_bytes()[:4] == b"\x89PNG"
    # The scratch row is an ordinary run, scored on the same test rows as the feature head.
    scratch = next(r for r in rows if r["kind"] == "scratch")
    rec = json.loads((out / scratch["source"]["run_dir"] / "record.json").read_text())
    assert rec["status"] == "complete" and rec["accuracy"] == pytest.approx(scratch["accuracy"])


def test_budget_and_plan_are_recorded(zoo):
    out, _, wall = zoo
    board = json.loads((out / "zoo.json").read_text())
    assert board["wall_s"] <= 600
    plan = json.loads((out / "zoo" / "plan.json").read_text())
    assert plan["planned_s"] <= plan["available_s"]
    for item in plan["items"]:
        assert plan["estimates"][item["name"]] > 0
    assert set(board["stages"]) >= {"data", "probe"}


def test_a_budget_too_small_skips_with_the_reason(folder, tmp_path):
    from bench.suites.zoo import make_plan, Item

    items = [Item("a", "scratch", "train", model="m", epochs=(1, 5)),
             Item("b", "frozen", "head", model="x")]
    probes = {"train:a": {"step_s": 1.0, "batch": 10, "compile_s": 1.0, "eval_batch_s": 0.5,
                          "eval_batch": 10, "eval_compile_s": 1.0},
              "features:x@0": {"img_per_s": 1.0, "compile_s": 1.0}}
    n = {"train": 100, "val": 20, "test": 20}
    plan = make_plan(items, [], probes, n, 3, available=40.0)
    assert [d["name"] for d in plan["items"]] == ["a"]
    assert plan["epochs"]["a"] >= 1 and plan["planned_s"] <= 40.0
    # What does not fit is held in reserve (run at the end if time is left, else skipped
    # with the reason); nothing was refused outright.
    assert [d["name"] for d in plan["reserve"]] == ["b"] and plan["skipped"] == []
    # More time: more epochs, up to the item's maximum.
    big = make_plan(items, [], probes, n, 3, available=10_000.0)
    assert big["epochs"]["a"] == 5 and len(big["items"]) == 2


def test_parse_budget():
    from bench.suites.zoo import parse_budget

    assert parse_budget("20m") == 1200 and parse_budget("90s") == 90
    assert parse_budget("1h30m") == 5400 and parse_budget("45") == 45
    for bad in ("soon", "0", "-3m", ""):
        with pytest.raises(ValueError, match="--time-budget"):
            parse_budget(bad)


def test_exported_best_reproduces_the_leaderboard_from_files_alone(zoo, folder, tmp_path):
    """Copy OUT/best elsewhere, hide the run folder, predict the test files: the same
    accuracy and log-loss as the leaderboard's best row."""
    from bench.data import load_dataset
    from bench.predict import load_predictor
    from ensembles import log_loss

    out, _, _ = zoo
    best = _rows(out)[0]
    dest = tmp_path / "moved"
    shutil.copytree(out / "best", dest)
    ds = load_dataset(str(folder), 32, cache_dir=False, progress=False)
    test = ds.splits["test"]
    files = [folder / f for f in test.files]
    hidden = out.with_name(out.name + "-hidden")
    os.replace(out, hidden)
    try:
        pred = load_predictor(dest)
        p = pred.predict_proba(files)
    finally:
        os.replace(hidden, out)
    assert list(pred.classes_) == ds.classes
    acc = float(np.mean(np.argmax(p, 1) == test.labels))
    assert acc == best["accuracy"]
    assert log_loss(test.labels, p) == pytest.approx(best["log_loss"], abs=1e-5)


def test_killed_run_resumes_to_the_same_leaderboard_without_repeating_work(zoo, folder,
                                                                         tmp_path):
    out_ref, _, _ = zoo
    out = tmp_path / "killed"
    code = ("import sys; sys.path.insert(0, %r); sys.path.insert(0, %r);"
            "from test_zoo import TINY; from bench.suites.zoo import run_zoo;"
            "run_zoo(out=%r, quiet=True, cache_dir=%r, dataset=%r, time_budget='10m', "
            "preset=TINY)" % (str(REPO), str(REPO / "tests"), str(out), str(out / "cache"),
                              str(folder)))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = out / "zoo" / "state.json"
    deadline = time.time() + 240
    done_stage = None
    try:
        while time.time() < deadline and proc.poll() is None:
            if state.exists():
                try:
                    st = json.loads(state.read_text())
                except ValueError:
                    st = {}
                finished = [k for k in st.get("stages", {}) if k not in ("data", "probe")]
                if finished:
                    done_stage = finished[0]
                    break
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert done_stage is not None, "the first stage did not finish in time"
    assert not (out / "zoo.json").exists()  # killed before the end
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.suffix in (".h5", ".npz")
              and "best" not in p.parts}
    from bench.suites.zoo import run_zoo

    run_zoo(out=out, quiet=True, cache_dir=str(out / "cache"), dataset=str(folder),
            time_budget="10m", preset=TINY)
    # What was finished before the kill was not redone.
    for p, m in before.items():
        if p.exists() and p.name not in ("last.npz", "best.npz"):
            assert p.stat().st_mtime_ns == m, f"{p} was rewritten"
    a, b = _rows(out_ref), _rows(out)
    assert [r["name"] for r in a] == [r["name"] for r in b]
    for ra, rb in zip(a, b):
        assert ra["accuracy"] == rb["accuracy"]
        assert ra["log_loss"] == pytest.approx(rb["log_loss"], abs=1e-6)


def test_cli_flags_are_the_zoo_suites_only(tmp_path, capsys):
    from bench.cli import main

    assert main(["run", "--suite", "quick", "--time-budget", "5m", "--out", str(tmp_path)]) == 2
    assert "--time-budget: the quick suite does not take it" in capsys.readouterr().err
    assert main(["run", "--suite", "zoo", "--out", str(tmp_path)]) == 2
    assert "needs --dataset" in capsys.readouterr().err
    assert main(["run", "--suite", "zoo", "--dataset", "digits", "--time-budget", "soon",
                 "--out", str(tmp_path)]) == 2
    assert "--time-budget 'soon'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before any work
