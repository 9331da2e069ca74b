"""`bench group`, run re-evaluation (robustness) and the seeds suite's pieces."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import write_image_folder

from bench.cli import main


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A finished 6-class run on a synthetic image folder (one epoch, small CNN)."""
    root = tmp_path_factory.mktemp("grp")
    data = write_image_folder(root / "data", n_per_class=20, size=16, num_classes=6)
    out = root / "out"
    code = main(["train", "--model", "benchmark_cnn", "--dataset", str(data), "--epochs", "2",
                 "--image-size", "16", "--batch-size", "16", "--optimizer", "adam",
                 "--lr", "0.003", "--augment", "none", "--cache-dir", str(root / "cache"),
                 "--out", str(out), "--quiet"])
    assert code == 0
    (run_dir,) = (out / "runs").iterdir()
    return run_dir, root / "cache"


def test_train_saves_validation_predictions(trained_run):
    run_dir, _ = trained_run
    lp, y = np.load(run_dir / "val_log_proba.npy"), np.load(run_dir / "val_labels.npy")
    assert lp.shape == (len(y), 6)
    np.testing.assert_allclose(np.exp(lp).sum(1), 1.0, rtol=1e-4)


def test_group_cli_writes_groups_and_scores_test_per_group(trained_run, capsys):
    run_dir, _ = trained_run
    assert main(["group", "--run", str(run_dir), "--groups", "3"]) == 0
    out = capsys.readouterr().out
    assert "6 classes -> 3 groups" in out
    g = json.loads((run_dir / "groups.json").read_text())
    assert g["n_groups"] == 3 and len(set(g["class_to_group"])) == 3
    assert sum(len(m) for m in g["groups"].values()) == 6
    # Merging classes cannot lose a right answer; the test predictions are the saved ones.
    test_lp = np.load(run_dir / "test_log_proba.npy")
    test_y = np.load(run_dir / "test_labels.npy")
    assert g["accuracy"] == pytest.approx(np.mean(test_lp.argmax(1) == test_y))
    assert g["grouped_accuracy"] >= g["accuracy"]
    groups = np.array(g["class_to_group"])
    assert g["grouped_accuracy"] == pytest.approx(
        np.mean(groups[test_lp.argmax(1)] == groups[test_y]))
    conf = np.array(g["grouped_confusion"])
    assert conf.shape == (3, 3) and conf.sum() == len(test_y)
    assert (run_dir / "grouped_confusion.png").stat().st_size > 0


def test_group_recomputes_validation_predictions_for_older_runs(trained_run, tmp_path):
    """A run without val_log_proba.npy (older records): rebuilt from weights + data cache."""
    import shutil

    from bench.evaluate import split_log_proba

    run_dir, cache = trained_run
    copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy)
    saved = np.load(copy / "val_log_proba.npy")
    (copy / "val_log_proba.npy").unlink()
    lp, y = split_log_proba(copy, "val", cache_dir=cache)
    np.testing.assert_array_equal(y, np.load(copy / "val_labels.npy"))
    np.testing.assert_allclose(lp, saved, atol=1e-4)


def test_group_errors_name_the_path(tmp_path, capsys):
    assert main(["group", "--run", str(tmp_path / "nope")]) == 2
    assert "record.json" in capsys.readouterr().err
    assert main(["group", "--run", str(tmp_path), "--groups", "x"]) == 2


def test_robustness_reevaluates_the_saved_weights(trained_run):
    from bench.evaluate import load_run, perturb, robustness

    run_dir, cache = trained_run
    run = load_run(run_dir, cache_dir=cache)
    rows = robustness(run)
    assert [r["perturbation"] for r in rows][0] == "clean"
    # The clean row reproduces the run's own test score.
    assert rows[0]["accuracy"] == pytest.approx(run.record["accuracy"])
    assert rows[0]["top5_accuracy"] == pytest.approx(run.record["top5_accuracy"])
    assert len(rows) == 4 and all(np.isfinite(r["log_loss"]) for r in rows)
    x = run.dataset.splits["test"].images
    y = perturb(x, 0, 180.0, 0.3, 0.4, True, True)
    assert y.dtype == np.uint8 and y.shape == x.shape and not np.array_equal(x, y)
    np.testing.assert_array_equal(perturb(x, 0, 0.0, 0.0, 0.0, False, False), x)


def test_most_confused_picks_the_strongest_pair():
    from bench.suites.seeds import most_confused

    a = np.eye(4, dtype=int) * 10
    b = a.copy()
    b[0, 1], b[1, 0] = 6, 6  # classes 0 and 1 mixed up
    one_class = np.zeros((4, 4), int)
    one_class[:, 2] = 10  # predicts class 2 for everything: one-way confusion only
    runs = [{"run_id": "a", "num_classes": 4, "confusion": a.tolist()},
            {"run_id": "b", "num_classes": 4, "confusion": b.tolist()},
            {"run_id": "z", "num_classes": 4, "confusion": one_class.tolist()},
            {"run_id": "c", "num_classes": 3, "confusion": (np.ones((3, 3)) * 5).tolist()}]
    assert most_confused(runs)["run_id"] == "b"
    with pytest.raises(ValueError, match="4 or more classes"):
        most_confused(runs[3:])


def test_seeds_configs_and_missing_data(tmp_path, capsys):
    from bench.suites.seeds import configs_000, configs_002, configs_003

    c0 = configs_000(tmp_path)
    assert {c.model.name for c in c0} >= {"basic_cnn", "deeper_cnn", "resnet20", "vgg16_cut",
                                     "inception_resnet_small", "efficientnet_lite0"}
    assert all(c.data.image_size == 64 for c in c0 if c.model.weights is None)
    grid = configs_002(tmp_path)
    assert len({c.model.model_args for c in grid}) == len(grid) == 6
    assert [c.model.name for c in configs_003(tmp_path)] == ["benchmark_cnn", "mobilenet_v2",
                                                       "efficientnet_lite0"]
    # Missing data: a clear error naming what was expected, before any work.
    assert main(["run", "--suite", "seeds", "--data-root", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "food101-3class" in err and "cifar10-jpeg" in err
    assert main(["run", "--suite", "seeds", "--quiet"]) == 2
    assert "--data-root" in capsys.readouterr().err
    assert main(["run", "--suite", "seeds", "--data-root", str(tmp_path),
                 "--sections", "007"]) == 2


def test_ensemble_cli_rows_and_noise_intervals(tmp_path, capsys):
    """`bench ensemble` over two backbones' feature files: a row per head, concat, average,
    stack, each with its log-loss gap to the best row and a bootstrap interval."""
    import features
    from helpers import synthetic_dataset

    ds = synthetic_dataset(n_per_class=30, size=16, num_classes=3)
    for name in ("resnet20", "benchmark_cnn"):
        features.extract(name, ds, tmp_path / "f", weights=None, batch_size=16,
                         progress=False, image_size=(32, 32))
    out = tmp_path / "out"
    assert main(["ensemble", "--features", str(tmp_path / "f"), "--out", str(out), "--cv", "2",
                 "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "vs best [95% CI]" in text
    rows = {json.loads(p.read_text())["tag"]: json.loads(p.read_text())
            for p in (out / "rows").glob("*.json")}
    assert set(rows) == {"head:resnet20", "head:benchmark_cnn", "concat", "average", "stack"}
    best = [r for r in rows.values() if r["best"]]
    assert len(best) == 1 and best[0]["log_loss_vs_best"]["diff"] == 0.0
    for r in rows.values():
        v = r["log_loss_vs_best"]
        assert v["lo"] <= v["diff"] <= v["hi"]
        assert r["log_loss"] - best[0]["log_loss"] == pytest.approx(v["diff"], abs=1e-9)
    assert (out / "summary.csv").exists()


def test_committed_seeds_summary_rerenders(tmp_path):
    """`bench report results/seeds` rebuilds summary.md from the committed seeds.json."""
    import shutil

    from helpers import REPO

    from bench.suites.seeds import rewrite_summary

    saved = REPO / "results" / "seeds" / "seeds.json"
    if not saved.exists():
        pytest.skip("no committed seeds run")
    shutil.copy(saved, tmp_path / "seeds.json")
    text = rewrite_summary(tmp_path).read_text()
    for section in ("## 000", "## 001", "## 002", "## 003", "## 004"):
        assert section in text
    assert "| resnet20+aug+schedule | 94.01%" in text and "Groups:" in text
