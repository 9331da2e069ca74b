"""bench inspect: duplicates (exact and near, within and across splits), unreadable files,
colour and resolution outliers, exclusion lists, the near-duplicate search itself."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import ASSETS

from bench.inspect import (DEFAULT_NEAR_THRESHOLD, cross_split_near_duplicates,
                           cross_split_warning, inspect_dataset, inspect_html_section,
                           near_duplicate_pairs, phash, read_exclusions)


def _texture(rng, size=(56, 48)) -> Image.Image:
    """A distinct smooth random picture (low-frequency content, as photographs have)."""
    small = rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.BICUBIC)


def _jpeg(im: Image.Image, quality=90) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture
def planted(tmp_path):
    """train/ + test/ split folders, 3 classes, with one exact and one near duplicate planted
    in test, a truncated file, a non-image, a tiny image and a white image."""
    rng = np.random.default_rng(1)
    root = tmp_path / "data"
    for split, n in (("train", 14), ("test", 5)):
        for c in ("a", "b", "c"):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                (d / f"{i:03d}.jpg").write_bytes(_jpeg(_texture(rng)))
    shutil.copy(root / "train/a/003.jpg", root / "test/a/copy.jpg")             # exact
    near = Image.open(root / "train/b/005.jpg").resize((50, 43), Image.BILINEAR)
    (root / "test/b/near.jpg").write_bytes(_jpeg(near, quality=70))            # near
    (root / "train/c/broken.jpg").write_bytes(_jpeg(_texture(rng))[:200])      # truncated
    (root / "train/c/notes.txt").write_text("not an image")
    (root / "train/a/tiny.jpg").write_bytes(_jpeg(_texture(rng, (6, 5))))
    (root / "train/b/white.jpg").write_bytes(_jpeg(Image.new("RGB", (56, 48), "white")))
    return root


def test_planted_duplicates_and_outliers(planted, tmp_path):
    out = tmp_path / "out"
    r = inspect_dataset(planted, out, cache_dir=tmp_path / "cache", progress=False, min_side=20)
    nd = r["near_duplicates"]
    pairs = {tuple(sorted((p["a"]["path"], p["b"]["path"]))): p for p in nd["listed"]}
    assert set(pairs) == {("test/a/copy.jpg", "train/a/003.jpg"),
                          ("test/b/near.jpg", "train/b/005.jpg")}, pairs
    exact = pairs[("test/a/copy.jpg", "train/a/003.jpg")]
    assert exact["exact"] and exact["cross_split"] and exact["distance"] == 0
    assert not pairs[("test/b/near.jpg", "train/b/005.jpg")]["exact"]
    assert r["exact_duplicates"]["groups"] == 1 and r["exact_duplicates"]["cross_split_groups"] == 1
    assert nd["by_splits"] == {"train-test": 2}
    assert [s["path"] for s in r["skipped"]] == ["train/c/broken.jpg"]
    assert "truncated" in r["skipped"][0]["reason"]
    assert [s["path"] for s in r["ignored"]] == ["train/c/notes.txt"]
    kinds = {f["path"]: set(f["kinds"]) for f in r["flagged"]}
    assert "low-resolution" in kinds["train/a/tiny.jpg"]
    assert "colour-outlier" in kinds["train/b/white.jpg"]
    assert kinds["test/a/copy.jpg"] == {"exact-duplicate"}
    assert kinds["test/b/near.jpg"] == {"near-duplicate"}
    assert "train/a/003.jpg" not in kinds  # the train copy is the one kept
    assert r["sizes"]["most_common"][0] == {"w": 56, "h": 48, "count": 3 * 19 + 2}  # + copy, white
    assert r["counts"]["per_class"] == {"a": 21, "b": 21, "c": 19}
    # Exclusion list: both formats, read back the same; the kept copies are not in it.
    txt = read_exclusions(out / "exclusions.txt")
    assert txt == read_exclusions(out / "exclusions.json")
    assert {"test/a/copy.jpg", "test/b/near.jpg", "train/a/tiny.jpg", "train/b/white.jpg",
            "train/c/broken.jpg"} <= set(txt)
    assert "train/a/003.jpg" not in txt and "train/b/005.jpg" not in txt
    assert Image.open(out / "contact.png").size[0] > 200
    md = (out / "inspect.md").read_text()
    assert "`test/b/near.jpg`" in md and "truncated" in md
    assert json.loads((out / "inspect.json").read_text())["counts"] == r["counts"]
    section = inspect_html_section(r, out)
    assert section.startswith('<section class="inspect">') and "data:image/png;base64," in section
    assert "<strong>2 across splits</strong>" in section and "test/b/near.jpg" in section


def test_cross_split_library_function(planted, tmp_path):
    from bench.data import load_dataset

    ds = load_dataset(planted, 32, cache_dir=tmp_path / "cache", progress=False)
    pairs = cross_split_near_duplicates(ds)
    assert len(pairs) == 2 and {(p.split_a, p.split_b) for p in pairs} == {("train", "test")}
    for p in pairs:  # indices point at the same picture
        a = ds.splits[p.split_a].images[p.index_a].astype(int)
        b = ds.splits[p.split_b].images[p.index_b].astype(int)
        assert np.abs(a - b).mean() < 12
    assert "2 test-train pair(s)" in cross_split_warning(ds, pairs=pairs)
    assert cross_split_warning(ds, pairs=[]) is None


def test_near_search_matches_brute_force():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, 3000, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    # Plant neighbours at distances 0..8 by flipping random bits.
    extra = []
    for d in range(9):
        for k in rng.choice(len(base), 20, replace=False):
            bits = rng.choice(64, d, replace=False)
            extra.append(base[k] ^ np.uint64(sum(1 << int(b) for b in bits)))
    h = np.concatenate([base, np.array(extra, np.uint64)])
    for t in (0, 3, 6):
        i, j, d, stats = near_duplicate_pairs(h, t)
        x = np.bitwise_count(h[:, None] ^ h[None, :])
        bi, bj = np.nonzero(np.triu(x <= t, 1))
        assert list(zip(i, j)) == list(zip(bi, bj)), t
        assert np.array_equal(d, x[bi, bj])
        assert stats["candidates_verified"] < len(h) * (len(h) - 1) // 20  # not all pairs
    groups = np.arange(len(h)) % 2
    i, j, _, _ = near_duplicate_pairs(h, 6, groups=groups, cross_only=True)
    assert len(i) and np.all(groups[i] != groups[j])


def test_phash_is_stable_under_resize_and_differs_between_pictures():
    rng = np.random.default_rng(3)
    ims = [_texture(rng, (64, 64)) for _ in range(50)]
    a = np.stack([np.asarray(im) for im in ims])
    b = np.stack([np.asarray(Image.open(io.BytesIO(_jpeg(im.resize((57, 57)), 75)))
                             .resize((64, 64))) for im in ims])
    ha, hb = phash(a), phash(b)
    same = np.bitwise_count(ha ^ hb)
    assert same.max() <= DEFAULT_NEAR_THRESHOLD, same
    cross = np.bitwise_count(ha[:, None] ^ ha[None, :])[np.triu_indices(50, 1)]
    assert cross.min() > DEFAULT_NEAR_THRESHOLD
    with pytest.raises(ValueError, match=r"expected \(N, H, W, 3\)"):
        phash(a[..., 0])


def test_bad_options_and_lists(planted, tmp_path):
    for kw, text in (({"near_threshold": 40}, "--near-threshold 40"),
                     ({"iqr_k": 0}, "--iqr-k 0"), ({"min_side": 0}, "--min-side 0"),
                     ({"exclude": ("dupes",)}, "--exclude dupes"),
                     ({"image_size": 4}, "--image-size 4"),
                     ({"near_min_corr": 2.0}, "--near-min-corr 2.0")):
        with pytest.raises(ValueError, match=text):
            inspect_dataset(planted, None, cache_dir=False, progress=False, **kw)
    with pytest.raises(ValueError, match="does not exist"):
        inspect_dataset(tmp_path / "nowhere", None, cache_dir=False, progress=False)
    with pytest.raises(ValueError, match="exclusion list .*missing.txt"):
        read_exclusions(tmp_path / "missing.txt")
    bad = tmp_path / "x.json"
    bad.write_text('{"paths": []}')
    with pytest.raises(ValueError, match="x.json.*expected JSON"):
        read_exclusions(bad)
    ok = tmp_path / "x.txt"
    ok.write_text("# comment\n\ntrain/a.jpg\ntrain/b.jpg\ntrain/a.jpg\n")
    assert read_exclusions(ok) == ["train/a.jpg", "train/b.jpg"]


def test_cli_inspect(planted, tmp_path, capsys):
    from bench.cli import main

    out = tmp_path / "cli"
    rc = main(["inspect", "--dataset", str(planted), "--out", str(out), "--quiet",
               "--cache-dir", str(tmp_path / "cache"), "--sheet-cross-split"])
    assert rc == 0
    assert "2 across splits" in capsys.readouterr().out
    assert (out / "contact.png").is_file() and (out / "exclusions.txt").is_file()
    rc = main(["inspect", "--dataset", str(planted), "--near-threshold", "99", "--quiet",
               "--out", str(out), "--cache-dir", str(tmp_path / "cache")])
    assert rc == 2 and "--near-threshold 99" in capsys.readouterr().err


@pytest.mark.assets
def test_dogs_vs_cats_planted_duplicates(assets, tmp_path):
    """2,002 Kaggle originals in train/ + test/ split folders, 20 train images copied into
    test under new names (10 byte-identical, 10 resized to 90% and re-encoded at q80)."""
    root = tmp_path / "dvc"
    with zipfile.ZipFile(assets / "dogs-vs-cats/train.zip") as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".jpg"))
        for k, name in enumerate(names):
            file = name.split("/")[-1]
            split = "test" if k % 5 == 0 else "train"
            dest = root / split / file.split(".")[0] / file
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(zf.read(name))
    train = sorted((root / "train").rglob("*.jpg"))
    chosen = [train[k] for k in range(0, len(train), len(train) // 20)][:20]
    planted = {}
    for n, src in enumerate(chosen):
        dest = root / "test" / src.parent.name / f"planted_{n:02d}.jpg"
        if n < 10:
            shutil.copy(src, dest)
        else:
            im = Image.open(src).convert("RGB")
            im = im.resize((int(im.width * 0.9), int(im.height * 0.9)), Image.BILINEAR)
            dest.write_bytes(_jpeg(im, quality=80))
        planted[f"test/{src.parent.name}/{dest.name}"] = f"train/{src.parent.name}/{src.name}"
    r = inspect_dataset(root, tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)
    found = {tuple(sorted((p["a"]["path"], p["b"]["path"])))
             for p in r["near_duplicates"]["listed"]}
    for test_copy, original in planted.items():
        assert tuple(sorted((test_copy, original))) in found, test_copy
    originals = {p for p in found if not any("planted_" in x for x in p)}
    # The one genuine duplicate among the 2,002: dog.180 and dog.74 (the same photo of four
    # boxer puppies, re-encoded; pHash distance 2). No other pair at the default threshold.
    assert originals == {("train/dog/dog.180.jpg", "train/dog/dog.74.jpg")}, originals
    assert r["exact_duplicates"]["groups"] == 10
    excluded = set(read_exclusions(tmp_path / "out/exclusions.txt"))
    assert set(planted) <= excluded
    dup_flagged = {f["path"] for f in r["flagged"]
                   if {"exact-duplicate", "near-duplicate"} & set(f["kinds"])}
    assert dup_flagged == set(planted) | {"train/dog/dog.74.jpg"}  # the train copies are kept


def test_the_package_and_its_flags_load_no_numpy():
    """`bench --help` reads bench.inspect.options: the package's __init__ stays stdlib-only,
    its public names import their module on first use."""
    import subprocess
    import sys

    from helpers import REPO

    code = ("import sys, bench.inspect, bench.inspect.options; a = 'numpy' in sys.modules; "
            "bench.inspect.phash; print(a, 'numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, check=True).stdout
    assert out.split() == ["False", "True"]
