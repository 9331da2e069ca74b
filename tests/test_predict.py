"""``bench predict`` and exported predictors: CSV and Kaggle output, unreadable files listed
and skipped, rows chosen by name, a folder that loads without the training data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from helpers import write_image_folder

SCRATCH_ONLY = {"name": "scratch-only", "scratch": (("benchmark_cnn", (), "none"),
                                                    ("basic_cnn", (), "none")),
                "backbones": (), "keras": False, "scratch_size": (32, 32), "feature_size": 64,
                "finetune_size": 64, "scratch_epochs": (1, 1), "finetune_epochs": None,
                "head_cv": 2, "head_cs": 2}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    from bench.suites.zoo import run_zoo

    root = tmp_path_factory.mktemp("p")
    folder = write_image_folder(root / "data", n_per_class=24, size=32, num_classes=2)
    out = root / "out"
    run_zoo(out=out, quiet=True, cache_dir=str(root / "cache"), dataset=str(folder),
            time_budget="10m", preset=SCRATCH_ONLY)
    return folder, out


def _test_files(folder):
    from bench.data import load_dataset

    ds = load_dataset(str(folder), 32, cache_dir=False, progress=False)
    t = ds.splits["test"]
    return [folder / f for f in t.files], t.labels, ds.classes


def _read(path):
    with open(path) as f:
        return list(csv.reader(f))


def test_every_row_predicts_its_leaderboard_accuracy(zoo, tmp_path):
    from bench.cli import main

    folder, out = zoo
    files, labels, classes = _test_files(folder)
    rows = json.loads((out / "zoo.json").read_text())["rows"]
    assert {r["kind"] for r in rows} == {"scratch", "ensemble"}
    for r in rows:
        dest = tmp_path / "p.csv"
        assert main(["predict", "--from", str(out), "--model", r["name"], *map(str, files),
                     "--out", str(dest)]) == 0
        table = _read(dest)
        assert table[0] == ["file", "predicted"] + [f"p_{c}" for c in classes]
        pred = [classes.index(row[1]) for row in table[1:]]
        assert float(np.mean(np.array(pred) == labels)) == r["accuracy"], r["name"]
        p = np.array([[float(v) for v in row[2:]] for row in table[1:]])
        np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)


def test_kaggle_format_and_unreadable_files(zoo, tmp_path, capsys):
    from bench.cli import main

    folder, out = zoo
    files, _, _ = _test_files(folder)
    broken = tmp_path / "777.jpg"
    broken.write_bytes(b"not an image")
    dest = tmp_path / "k.csv"
    assert main(["predict", "--from", str(out), *map(str, files[:5]), str(broken), "--out",
                 str(dest), "--format", "kaggle"]) == 0
    err = capsys.readouterr().err
    assert "777.jpg" in err and "unreadable" in err
    table = _read(dest)
    assert table[0] == ["id", "label"]
    ids = [int(r[0]) for r in table[1:]]
    assert ids == sorted(int(f.stem) for f in files[:5])
    assert all(0.0 <= float(r[1]) <= 1.0 for r in table[1:])


def test_predictor_api_on_arrays_and_a_moved_folder(zoo, tmp_path):
    import shutil

    import bench
    from bench.data import decode_image

    folder, out = zoo
    files, labels, classes = _test_files(folder)
    dest = tmp_path / "moved"
    shutil.copytree(out / "best", dest)
    pred = bench.load_predictor(dest)
    arrays = np.stack([decode_image(f.read_bytes(), (32, 32)) for f in files])
    np.testing.assert_allclose(pred.predict_proba(arrays), pred.predict_proba(files), atol=1e-6)
    assert list(pred.predict(files[:3])) == [classes[i] for i in
                                             np.argmax(pred.predict_proba(files[:3]), 1)]
    assert bench.load_predictor(out).name == pred.name  # a zoo OUT means its best/
    meta = json.loads((dest / "predictor.json").read_text())
    assert meta["format"] == "bench predictor v1" and meta["classes"] == classes
    # No pickled file anywhere in the folder: every .npz loads with allow_pickle=False.
    for f in dest.rglob("*.npz"):
        np.load(f, allow_pickle=False).files


def test_bad_arguments_are_one_line_errors(zoo, tmp_path, capsys):
    from bench.cli import main

    folder, out = zoo
    files, _, _ = _test_files(folder)
    assert main(["predict", "--from", str(out), "--model", "nope", str(files[0]), "--out",
                 str(tmp_path / "x.csv")]) == 2
    assert "--model 'nope'" in capsys.readouterr().err
    assert main(["predict", "--from", str(out), str(tmp_path / "missing.jpg"), "--out",
                 str(tmp_path / "x.csv")]) == 2
    assert "missing.jpg" in capsys.readouterr().err
    assert main(["predict", "--from", str(tmp_path), str(files[0]), "--out",
                 str(tmp_path / "x.csv")]) == 2
    assert "zoo.json" in capsys.readouterr().err
    named = tmp_path / "cat.jpg"
    named.write_bytes(files[0].read_bytes())
    assert main(["predict", "--from", str(out), str(named), "--out", str(tmp_path / "x.csv"),
                 "--format", "kaggle"]) == 2
    assert "no number in the file name" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


def test_kaggle_id_and_collect(tmp_path):
    from bench.predict import collect_images, kaggle_id

    assert kaggle_id(Path("12.jpg")) == 12 and kaggle_id(Path("dog.7.png")) == 7
    d = write_image_folder(tmp_path / "d", n_per_class=2, size=8)
    (d / "notes.txt").write_text("x")
    found = collect_images([d])
    assert len(found) == 6 and all(f.suffix == ".png" for f in found)
    with pytest.raises(ValueError, match="no image files"):
        collect_images([tmp_path / "d" / "c0" / ".."  if False else _empty(tmp_path)])


def _empty(tmp_path):
    e = tmp_path / "empty"
    e.mkdir()
    return e
