"""``bench predict --template``: the template's rows, order and id column, filled with a class
name, one probability per class, or (two classes, numeric column) the positive class's
probability. The predictor is a stand-in whose probabilities follow the file name, so every
cell can be checked; exported predictors themselves are tested in test_predict.py."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest


class _Fake:
    """Class k's probability is high for files named ``<k>_...`` (0.7, rest shared)."""

    def __init__(self, classes):
        self.classes_ = np.asarray(classes)
        self.name = "fake"
        self.seen: list = []

    def predict_files(self, files):
        self.seen += list(files)
        ok, bad, rows = [], [], []
        n = len(self.classes_)
        for i, f in enumerate(files):
            if Path(f).read_bytes() == b"broken":
                bad.append((i, "UnidentifiedImageError: cannot identify"))
                continue
            k = int(Path(f).name.split("_")[0])
            p = np.full(n, 0.3 / (n - 1))
            p[k] = 0.7
            rows.append(p)
            ok.append(i)
        return np.array(rows), ok, bad


@pytest.fixture
def fake(monkeypatch):
    import bench.predict as bp

    box = {}

    def load(classes):
        box["p"] = _Fake(classes)
        monkeypatch.setattr(bp, "resolve", lambda from_, model: Path(from_))
        monkeypatch.setattr(bp, "load_predictor", lambda folder: box["p"])
        return box["p"]
    return load


def _images(root: Path, names) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for n in names:
        (root / n).write_bytes(b"broken" if "broken" in n else b"img")
    return root


def _run(tmp_path, template_text, test_dir, *extra):
    from bench.cli import main

    tpl = tmp_path / "sample_submission.csv"
    tpl.write_text(template_text)
    out = tmp_path / "submission.csv"
    rc = main(["predict", "--from", str(tmp_path), str(test_dir), "--template", str(tpl),
               "--out", str(out), *extra])
    return rc, (list(csv.reader(out.open())) if out.exists() else None)


def test_label_column_keeps_order_and_ids(tmp_path, fake):
    p = fake(["cbb", "cbsd", "healthy"])
    test = _images(tmp_path / "test_images", ["2_b.jpg", "0_a.jpg", "1_c.jpg", "0_extra.jpg"])
    rc, rows = _run(tmp_path, "image_id,label\n1_c.jpg,4\n0_a.jpg,4\n2_b.jpg,4\n", test)
    assert rc == 0
    assert rows == [["image_id", "label"], ["1_c.jpg", "cbsd"], ["0_a.jpg", "cbb"],
                    ["2_b.jpg", "healthy"]]
    assert sorted(Path(f).name for f in p.seen) == ["0_a.jpg", "1_c.jpg", "2_b.jpg"]


def test_one_column_per_class_ids_without_extension(tmp_path, fake):
    fake(["golden_retriever", "pug", "Shiba Inu"])
    test = _images(tmp_path / "test", ["1_x.jpg", "2_y.jpg"])
    rc, rows = _run(tmp_path, "id,pug,golden retriever,shiba_inu\n2_y,0.3,0.3,0.3\n"
                    "1_x,0.3,0.3,0.3\n", test)
    assert rc == 0 and rows[0] == ["id", "pug", "golden retriever", "shiba_inu"]
    assert [r[0] for r in rows[1:]] == ["2_y", "1_x"]
    got = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    np.testing.assert_allclose(got, [[0.15, 0.15, 0.7], [0.7, 0.15, 0.15]], atol=1e-6)


def test_binary_probability_column_is_kaggle_meaning(tmp_path, fake, capsys):
    fake(["cat", "dog"])
    test = _images(tmp_path / "test1", ["1_1.jpg", "0_2.jpg", "0_3broken.jpg"])
    rc, rows = _run(tmp_path, "id,label\n1_1,0.5\n0_2,0.5\n0_3broken,0.5\n", test)
    assert rc == 0
    assert rows[1:] == [["1_1", "0.7"], ["0_2", "0.3"], ["0_3broken", "0.5"]]
    assert "0_3broken.jpg" in capsys.readouterr().err


def test_template_id_without_image_is_one_line_error(tmp_path, fake, capsys):
    fake(["cat", "dog"])
    test = _images(tmp_path / "t", ["0_1.jpg"])
    rc, rows = _run(tmp_path, "id,label\n0_1,0.5\n0_9,0.5\n1_8,0.5\n", test)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and rows is None and len(err.splitlines()) == 1
    assert "id '0_9' (line 3) has no image" in err and "(and 1 more ids)" in err


def test_class_columns_must_match_the_model(tmp_path, fake, capsys):
    fake(["a", "b", "c"])
    test = _images(tmp_path / "t", ["0_1.jpg"])
    rc, _ = _run(tmp_path, "id,a,b,zebra\n0_1,0,0,0\n", test)
    err = capsys.readouterr().err
    assert rc == 2 and "['zebra'] name no class" in err and "['c'] have no column" in err
