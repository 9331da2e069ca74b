"""Hostile and careless input outside the weight readers (issue 13): links in data folders,
damaged checkpoints and caches, empty classes, oversized images, flags that reach only part of
the code."""

from __future__ import annotations

import json
import logging
import os
import stat

import numpy as np
import pytest

from helpers import synthetic_dataset, write_image_folder


def _tree(root, n=6):
    from PIL import Image

    for c, value in (("cat", 40), ("dog", 200)):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = np.full((10, 10, 3), value + i, np.uint8)
            Image.fromarray(arr).save(root / c / f"{i:03d}.png")
    return root


def test_dangling_and_looping_links_are_skipped_and_counted(tmp_path):
    from bench.data import load_dataset

    root = _tree(tmp_path / "imgs")
    os.symlink(root / "cat" / "missing.png", root / "cat" / "dangling.png")
    os.symlink(root / "dog" / "self.png", root / "dog" / "self.png")  # points at itself
    ds = load_dataset(root, 8, cache_dir=False, progress=False)
    reasons = {os.path.basename(s["path"]): s["reason"] for s in ds.skipped}
    assert set(reasons) == {"dangling.png", "self.png"}
    assert all("cannot be opened" in r for r in reasons.values())
    assert sum(len(s) for s in ds.splits.values()) == 12


def test_empty_class_folder_and_tiny_class_are_warned(tmp_path, caplog):
    from PIL import Image

    from bench.data import load_dataset

    root = _tree(tmp_path / "imgs")
    (root / "fox").mkdir()  # empty: dropped, but said so
    (root / "owl").mkdir()
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(root / "owl" / "0.png")
    with caplog.at_level(logging.WARNING, logger="bench.data"):
        ds = load_dataset(root, 8, cache_dir=False, progress=False)
    warnings = ds.split_info["warnings"]
    assert any("'fox' holds no images" in w for w in warnings)
    assert any("class 'owl' has no images in" in w for w in warnings)
    assert "fox" in caplog.text and "owl" in caplog.text


def test_images_over_the_pixel_budget_are_skipped_before_decoding(tmp_path, monkeypatch):
    from PIL import Image

    from bench.data import load_dataset

    root = _tree(tmp_path / "imgs")
    Image.fromarray(np.zeros((300, 400, 3), np.uint8)).save(root / "cat" / "big.png")
    monkeypatch.setenv("BENCH_MAX_PIXELS", "50000")
    ds = load_dataset(root, 8, cache_dir=False, progress=False)
    (big,) = [s for s in ds.skipped if s["path"].endswith("big.png")]
    assert "400x300 pixels to decode exceed the budget of 50,000" in big["reason"]


def _cache_entry(cache):
    (entry,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    return entry


def test_cache_bytes_changed_in_place_are_detected_and_rebuilt(tmp_path, caplog):
    from bench.data import load_dataset

    root = _tree(tmp_path / "imgs")
    cache = tmp_path / "cache"
    first = load_dataset(root, 8, cache_dir=cache, progress=False)
    images = _cache_entry(cache) / "all_images.npy"
    arr = np.load(images, mmap_mode="r+")
    arr[0, 0, 0, 0] ^= 0xFF  # one byte overwritten in place
    arr.flush()
    del arr
    with caplog.at_level(logging.WARNING, logger="bench.data"):
        again = load_dataset(root, 8, cache_dir=cache, progress=False)
    assert again.cache["hit"] is False and "checksum" in caplog.text
    for k in first.splits:
        np.testing.assert_array_equal(again.splits[k].images, first.splits[k].images)


def test_cache_labels_out_of_range_are_refused(tmp_path, caplog):
    from bench.data import load_dataset
    from runtime.hashing import arrays_digest

    root = _tree(tmp_path / "imgs")
    cache = tmp_path / "cache"
    load_dataset(root, 8, cache_dir=cache, progress=False)
    entry = _cache_entry(cache)
    labels = np.load(entry / "all_labels.npy")
    labels[0] = 7  # two classes: 7 is out of range
    np.save(entry / "all_labels.npy", labels)
    meta = json.loads((entry / "meta.json").read_text())
    images = np.load(entry / "all_images.npy")
    meta["checksums"]["all"] = arrays_digest([images, labels])  # a consistent forgery
    (entry / "meta.json").write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, logger="bench.data"):
        ds = load_dataset(root, 8, cache_dir=cache, progress=False)
    assert ds.cache["hit"] is False and "labels outside 0..1" in caplog.text
    assert max(int(s.labels.max()) for s in ds.splits.values() if len(s)) == 1


def test_unreadable_best_checkpoint_does_not_block_the_run(tmp_path):
    from bench.config import make
    from bench.train import train

    ds = synthetic_dataset(n_per_class=10, size=16)
    cfg = make(model="benchmark_cnn", image_size=16, epochs=2, batch_size=8)
    first = train(cfg.replace(epochs=1), tmp_path, dataset=ds, quiet=True)
    run_dir = tmp_path / "runs" / cfg.replace(epochs=1).run_id(ds.name, 1)
    assert first["status"] == "complete"
    # A killed two-epoch run left a damaged best.npz: the rerun still finishes.
    run2 = tmp_path / "runs" / cfg.run_id(ds.name, 1)
    run2.mkdir(parents=True)
    (run2 / "best.npz").write_bytes(b"PK\x03\x04 not a zip")
    rec = train(cfg, tmp_path, dataset=ds, quiet=True)
    assert rec["status"] == "complete" and rec["epochs_completed"] == 2
    assert run_dir.exists()


def test_feature_files_have_the_usual_mode(tmp_path):
    import features
    from runtime.io import FILE_MODE

    ds = synthetic_dataset(n_per_class=4, size=16)
    path = features.extract("resnet20", ds, tmp_path, weights=None, progress=False)
    assert stat.S_IMODE(path.stat().st_mode) == FILE_MODE


def test_features_image_size_is_honoured(tmp_path, capsys):
    import features
    from bench.cli import main

    data = write_image_folder(tmp_path / "imgs", n_per_class=4, size=24)
    out = tmp_path / "feats"
    assert main(["features", "--backbone", "resnet20", "--weights", "none", "--dataset",
                 str(data), "--image-size", "16", "--out", str(out), "--quiet",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    (path,) = out.rglob("*.h5")
    assert list(features.read_attrs(path)["input_size"])[:2] == [16, 16]
    assert main(["features", "--backbone", "resnet20", "--dataset", str(data),
                 "--image-size", "0", "--out", str(out)]) == 2
    assert "--image-size 0" in capsys.readouterr().err


def test_training_with_an_exclusion_list_records_it_and_changes_the_fingerprint(tmp_path):
    from bench.cli import main

    data = write_image_folder(tmp_path / "imgs", n_per_class=8, size=16)
    listing = tmp_path / "exclusions.txt"
    listing.write_text("# from bench inspect\nc0/00000.png\nc1/00001.png\n\n")
    common = ["train", "--model", "benchmark_cnn", "--dataset", str(data), "--epochs", "1",
              "--image-size", "16", "--batch-size", "8", "--quiet",
              "--cache-dir", str(tmp_path / "cache")]
    assert main(common + ["--out", str(tmp_path / "a")]) == 0
    assert main(common + ["--out", str(tmp_path / "b"), "--exclude", str(listing)]) == 0
    (ra,) = (tmp_path / "a").glob("runs/*/record.json")
    (rb,) = (tmp_path / "b").glob("runs/*/record.json")
    a, b = json.loads(ra.read_text()), json.loads(rb.read_text())
    present = [f for f in ("c0/00000.png", "c1/00001.png") if (data / f).exists()]
    assert present and b["dataset"]["excluded"] == sorted(present)
    assert b["dataset"]["fingerprint"] != a["dataset"]["fingerprint"]
    assert b["config"]["data"]["exclude"] == str(listing)
    assert main(common + ["--out", str(tmp_path / "c"), "--exclude", str(tmp_path / "no")]) == 2
