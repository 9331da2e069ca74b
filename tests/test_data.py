"""bench.data: layouts, decoding of awkward files, splits, the cache, tfds, the real assets."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import bench.data as data
import bench.data.decode  # noqa: F401  (monkeypatched below)
from bench.data import Dataset, load_dataset

# --------------------------------------------------------------------------------------------
# Small synthetic image trees, written as a folder or as a stored zip.


def _encode(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt)  # uint16 (H, W) -> a 16-bit greyscale PNG
    return buf.getvalue()


def _image(value: int, fmt: str = "PNG", shape=(6, 9, 3)) -> bytes:
    """A flat colour image whose red channel is ``value`` (identifies it after decoding)."""
    arr = np.zeros(shape, np.uint8)
    arr[..., 0] = value
    arr[..., 1] = 255 - value
    return _encode(arr, fmt)


def _write(tree: dict[str, bytes], root: Path, container: str) -> Path:
    if container == "zip":
        path = root.with_suffix(".zip")
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
            for name, content in tree.items():
                z.writestr(name, content)
        return path
    for name, content in tree.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content)
    return root


def _class_tree(prefix: str, classes=("cat", "dog"), n=5, start=0) -> dict[str, bytes]:
    return {f"{prefix}{c}/{i:03d}.png": _image(10 * k + i)
            for k, c in enumerate(classes) for i in range(start, start + n)}


def _load(path, **kw) -> Dataset:
    kw.setdefault("cache_dir", False)
    kw.setdefault("progress", False)
    return load_dataset(path, kw.pop("image_size", 8), **kw)


def _check_arrays(ds: Dataset, size=(8, 8)):
    assert set(ds.splits) == {"train", "val", "test"}
    for s in ds.splits.values():
        assert s.images.dtype == np.uint8 and s.images.shape[1:] == (*size, 3)
        assert s.labels.dtype == np.int32 and len(s.labels) == len(s.images)
    json.dumps(ds.summary())  # JSON-able, no arrays


# --------------------------------------------------------------------------------------------
# digits


# Images per class in scikit-learn's digits (load_digits().target), 1,797 in all.
DIGITS_PER_CLASS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def test_digits_splits_stratified_and_deterministic():
    ds = load_dataset("digits", 16, seed=0, progress=False)
    _check_arrays(ds, (16, 16))
    full = np.array(DIGITS_PER_CLASS)
    counts = {k: np.bincount(s.labels, minlength=10) for k, s in ds.splits.items()}
    np.testing.assert_array_equal(counts["train"] + counts["val"] + counts["test"], full)
    # Per class: test = round(20%), val = round(10%) of that class.
    np.testing.assert_array_equal(counts["test"], np.floor(full * 0.2 + 0.5))
    np.testing.assert_array_equal(counts["val"], np.floor(full * 0.1 + 0.5))
    assert ds.split_info["method"] == "stratified" and ds.split_info["seed"] == 0
    assert ds.classes == [str(i) for i in range(10)]
    assert ds.splits["train"].images.max() == 255  # 16 grey levels scaled to 0..255
    x = ds.splits["train"].images
    assert np.array_equal(x[..., 0], x[..., 2])  # grey: R == G == B

    again = load_dataset("digits", 16, seed=0, progress=False)
    other = load_dataset("digits", 16, seed=1, progress=False)
    for k in ("train", "val", "test"):
        np.testing.assert_array_equal(again.splits[k].images, ds.splits[k].images)
        np.testing.assert_array_equal(again.splits[k].labels, ds.splits[k].labels)
    assert again.fingerprint == ds.fingerprint
    assert other.fingerprint != ds.fingerprint  # the split is part of the fingerprint
    assert other.source_fingerprint == ds.source_fingerprint
    assert not np.array_equal(other.splits["test"].images, ds.splits["test"].images)


def test_non_square_size_and_max_per_class():
    ds = load_dataset("digits", (12, 20), max_per_class=30, progress=False)
    _check_arrays(ds, (12, 20))
    total = sum(np.bincount(s.labels, minlength=10) for s in ds.splits.values())
    assert (total == 30).all()


# --------------------------------------------------------------------------------------------
# Layouts


@pytest.mark.parametrize("container", ["dir", "zip"])
def test_split_folders_val_carved_from_train(tmp_path, container):
    tree = {**_class_tree("train/", n=10), **_class_tree("test/", n=3, start=20)}
    ds = _load(_write(tree, tmp_path / "splitset", container))
    _check_arrays(ds)
    assert ds.classes == ["cat", "dog"]
    assert ds.split_info["method"].startswith("given train/test; val carved")
    assert ds.split_info["counts"]["test"] == {"cat": 3, "dog": 3}
    assert ds.split_info["counts"]["val"] == {"cat": 1, "dog": 1}
    assert ds.split_info["counts"]["train"] == {"cat": 9, "dog": 9}
    # The given test images are exactly the test/ files (red channel = 10 * class + i).
    red = sorted(ds.splits["test"].images[:, 0, 0, 0].tolist())
    assert red == [20, 21, 22, 30, 31, 32]


@pytest.mark.parametrize("container", ["dir", "zip"])
def test_split_folders_given_val_wrapped_with_classes_txt(tmp_path, container):
    """A single wrapping folder, `validation/`, a classes.txt order and macOS litter."""
    tree = {}
    for split, n in (("train", 4), ("validation", 2), ("test", 2)):
        tree.update(_class_tree(f"cifar/{split}/", classes=("zebra", "ant", "moth"), n=n))
    tree["cifar/classes.txt"] = b"zebra\nant\nmoth\n"
    tree["__MACOSX/cifar/train/._000.png"] = b"\x00\x05\x16\x07junk"
    tree["cifar/.DS_Store"] = b"junk"
    tree["cifar/train/zebra/notes.txt"] = b"not an image"
    ds = _load(_write(tree, tmp_path / "wrapped", container))
    _check_arrays(ds)
    assert ds.classes == ["zebra", "ant", "moth"]  # classes.txt order, not sorted
    assert ds.split_info["method"] == "given"
    assert {k: len(s) for k, s in ds.splits.items()} == {"train": 12, "val": 6, "test": 6}
    # Label 0 is zebra: its images have red 0..3 in train.
    assert sorted(ds.splits["train"].images[ds.splits["train"].labels == 0, 0, 0, 0]) == \
        [0, 1, 2, 3]
    assert ds.skipped == []


def test_train_and_val_folders_only_val_is_the_test_split(tmp_path):
    tree = {**_class_tree("train/", n=10), **_class_tree("val/", n=2, start=40)}
    ds = _load(_write(tree, tmp_path / "trainval", "dir"))
    assert "validation folder is the test split" in ds.split_info["layout"]
    assert sorted(ds.splits["test"].images[:, 0, 0, 0].tolist()) == [40, 41, 50, 51]
    assert ds.split_info["counts"]["val"] == {"cat": 1, "dog": 1}


@pytest.mark.parametrize("container", ["dir", "zip"])
def test_class_folders_stratified(tmp_path, container):
    tree = _class_tree("", classes=("b", "a", "c"), n=10)
    ds = _load(_write(tree, tmp_path / "classes", container), seed=3)
    _check_arrays(ds)
    assert ds.classes == ["a", "b", "c"]
    assert ds.split_info["method"] == "stratified" and ds.split_info["seed"] == 3
    for split, n in (("train", 7), ("val", 1), ("test", 2)):
        assert ds.split_info["counts"][split] == {"a": n, "b": n, "c": n}
    # Every image lands in exactly one split.
    red = np.concatenate([s.images[:, 0, 0, 0] for s in ds.splits.values()])
    assert sorted(red.tolist()) == sorted(10 * k + i for k in range(3) for i in range(10))


@pytest.mark.parametrize("container", ["dir", "zip"])
def test_flat_kaggle_names_under_train(tmp_path, container):
    tree = {f"train/{c}.{i}.jpg": _image(100 * k + i, "JPEG")
            for k, c in enumerate(("dog", "cat")) for i in range(6)}
    tree["train/great_dane_3.jpg"] = _image(200, "JPEG")  # label prefix with an underscore
    tree["train/great_dane_12.jpg"] = _image(201, "JPEG")
    ds = _load(_write(tree, tmp_path / "kaggle", container))
    _check_arrays(ds)
    assert ds.classes == ["cat", "dog", "great_dane"]
    assert ds.split_info["layout"].startswith("flat files")
    total = sum(np.bincount(s.labels, minlength=3) for s in ds.splits.values())
    assert total.tolist() == [6, 6, 2]


# --------------------------------------------------------------------------------------------
# Awkward files


def test_bad_files_are_skipped_and_modes_converted(tmp_path, caplog):
    root = tmp_path / "messy"
    tree = _class_tree("", n=3)
    good_jpeg = _image(50, "JPEG", shape=(40, 40, 3))
    tree["cat/truncated.jpg"] = good_jpeg[: len(good_jpeg) // 2]
    tree["cat/empty.jpg"] = b""
    tree["dog/text.jpg"] = b"this is not an image at all\n"
    grey = np.tile(np.arange(0, 240, 30, dtype=np.uint8), (8, 1))
    tree["dog/grey.png"] = _encode(grey)                           # mode L
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 255                                             # red, fully transparent
    tree["cat/transparent.png"] = _encode(rgba)                    # mode RGBA
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([0, 0, 255] * 256)
    buf = io.BytesIO()
    pal.save(buf, "GIF")
    tree["dog/palette.gif"] = buf.getvalue()                       # mode P, blue
    tree["dog/deep.png"] = _encode(np.full((8, 8), 65535, np.uint16))
    tree["cat/cmyk.jpg"] = _encode_cmyk()
    tree["notes.txt"] = b"ignored"
    tree["Thumbs.db"] = b"ignored"
    tree["dog/.hidden.jpg"] = b"ignored: dotfile"
    _write(tree, root, "dir")

    with caplog.at_level("WARNING", logger="bench.data"):
        ds = _load(root, val_fraction=0.0, test_fraction=0.0, cache_dir=tmp_path / "cache")
    cached = _load(root, val_fraction=0.0, test_fraction=0.0, cache_dir=tmp_path / "cache")
    assert cached.cache["hit"] is True and cached.skipped == ds.skipped  # kept in the cache
    assert len(ds.splits["train"]) == 6 + 5
    reasons = {Path(d["path"]).name: d["reason"] for d in ds.skipped}
    assert set(reasons) == {"truncated.jpg", "empty.jpg", "text.jpg"}
    assert "empty" in reasons["empty.jpg"]
    assert "truncated" in reasons["truncated.jpg"]
    assert "not an image" in reasons["text.jpg"]
    assert all(str(root) in d["path"] for d in ds.skipped)
    assert "skipped 3 unreadable" in caplog.text and "Traceback" not in caplog.text
    assert ds.summary()["skipped_count"] == 3

    x = ds.splits["train"].images
    pixels = {tuple(img[0, 0]) for img in x}
    assert (255, 255, 255) in pixels      # transparent red composited on white
    assert (0, 0, 255) in pixels          # palette blue
    greys = [img for img in x if (img[..., 0] == img[..., 1]).all()
             and (img[..., 1] == img[..., 2]).all() and img.std() > 10]
    assert len(greys) == 1                 # the L gradient became a grey RGB gradient


def _encode_cmyk() -> bytes:
    buf = io.BytesIO()
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(buf, "JPEG")  # red in CMYK
    return buf.getvalue()


def test_cmyk_and_16bit_decode_to_expected_colours():
    red = data.decode_image(_encode_cmyk(), (4, 4))
    assert red.shape == (4, 4, 3) and red[..., 0].min() > 200 and red[..., 1:].max() < 60
    white = data.decode_image(_encode(np.full((8, 8), 65535, np.uint16)), (4, 4))
    assert (white == 255).all()


def test_exif_orientation_is_applied():
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, :40] = (255, 0, 0)  # stored: left red, right blue
    arr[:, 40:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6           # display = stored rotated 90 degrees clockwise
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    out = data.decode_image(buf.getvalue(), (8, 8)).astype(int)
    assert out[0, :, 0].min() > 200 and out[0, :, 2].max() < 60    # top row red
    assert out[-1, :, 2].min() > 200 and out[-1, :, 0].max() < 60  # bottom row blue


# --------------------------------------------------------------------------------------------
# Errors name the path and what was expected


def test_error_missing_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ValueError, match=re.escape(str(missing)) + ".*does not exist"):
        _load(missing)


@pytest.mark.parametrize("tree, message", [
    ({}, "no images found"),
    ({"readme.txt": b"hello", "sub/data.csv": b"1,2"}, "no images found"),
    (_class_tree("", classes=("only",), n=4), "only one class, 'only'"),
    ({**_class_tree("", n=2), "stray.png": _image(1)}, "unknown layout: images at mixed depths"),
    ({"x/cat/1.png": _image(1), "y/dog/2.png": _image(2)}, "unknown layout: .*not split"),
    ({"train/x.png": _image(1), "test/y.png": _image(2)}, "split folders .* hold image files"),
    ({"train/cat.1.png": _image(1), "train/cat.2.png": _image(2)}, "only one class, 'cat'"),
])
def test_errors_name_the_path(tmp_path, tree, message):
    root = tmp_path / "bad"
    root.mkdir()
    _write(tree, root, "dir")
    with pytest.raises(ValueError, match=re.escape(str(root)) + ".*" + message):
        _load(root)


def test_error_not_a_zip_and_bad_classes_txt(tmp_path):
    f = tmp_path / "images.tar"
    f.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=re.escape(str(f)) + ".*not a directory or a zip"):
        _load(f)
    root = _write({**_class_tree("", n=2), "classes.txt": b"cat\nbird\n"}, tmp_path / "c", "dir")
    with pytest.raises(ValueError, match=r"classes.txt: class names do not match.*'dog'.*'bird'"):
        _load(root)


# --------------------------------------------------------------------------------------------
# Cache


def test_cache_reused_then_invalidated_by_a_changed_file(tmp_path, monkeypatch):
    root = _write(_class_tree("", n=6), tmp_path / "imgs", "dir")
    cache = tmp_path / "cache"
    first = _load(root, cache_dir=cache)
    assert first.cache["hit"] is False and len(list(cache.iterdir())) == 1

    def no_decoding(*a, **k):
        raise AssertionError("decoded although the cache holds this data set")

    monkeypatch.setattr(data.decode, "decode_image", no_decoding)
    second = _load(root, cache_dir=cache, seed=5)  # another seed reuses the same file
    assert second.cache["hit"] is True
    again = _load(root, cache_dir=cache)
    for k in ("train", "val", "test"):
        np.testing.assert_array_equal(again.splits[k].images, first.splits[k].images)
        np.testing.assert_array_equal(again.splits[k].labels, first.splits[k].labels)
    assert again.fingerprint == first.fingerprint

    # Change one file: the fingerprint changes and the data set is decoded again.
    monkeypatch.undo()
    target = root / "cat" / "002.png"
    target.write_bytes(_image(222))
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    calls = []
    real = data.decode_image
    monkeypatch.setattr(data.decode, "decode_image", lambda *a: calls.append(1) or real(*a))
    third = _load(root, cache_dir=cache)
    assert third.cache["hit"] is False and len(calls) == 12
    assert third.source_fingerprint != first.source_fingerprint
    red = np.concatenate([s.images[:, 0, 0, 0] for s in third.splits.values()])
    assert 222 in red.tolist()


def test_zip_fingerprint_follows_content_not_mtime(tmp_path):
    tree = _class_tree("", n=3)
    a = _write(tree, tmp_path / "a", "zip")
    b = _write(tree, tmp_path / "b", "zip")
    os.utime(b, (0, 0))
    assert _load(a).source_fingerprint == _load(b).source_fingerprint
    tree["dog/000.png"] = _image(99)
    c = _write(tree, tmp_path / "c", "zip")
    assert _load(c).source_fingerprint != _load(a).source_fingerprint


@pytest.mark.parametrize("error", [OSError("No space left on device"), RuntimeError("killed")])
def test_cache_write_is_atomic(tmp_path, monkeypatch, error, caplog):
    root = _write(_class_tree("", n=4), tmp_path / "imgs", "dir")
    cache = tmp_path / "cache"

    real_save, calls = np.save, []

    def failing_save(file, arr, **kw):  # the second array is cut short by a full disk
        calls.append(file)
        if len(calls) == 2:
            Path(file).write_bytes(b"\x93NUMPY half an array")
            raise error
        real_save(file, arr, **kw)

    monkeypatch.setattr(np, "save", failing_save)
    if isinstance(error, OSError):  # a full disk costs the cache, not the run
        ds = _load(root, cache_dir=cache)
        assert len(ds.splits["train"]) > 0 and ds.cache["path"] is None
        assert "could not write the dataset cache" in caplog.text
    else:
        with pytest.raises(RuntimeError, match="killed"):
            _load(root, cache_dir=cache)
    assert list(cache.iterdir()) == []  # no partial file, no temporary left behind


def test_damaged_cache_file_is_rebuilt(tmp_path, caplog):
    root = _write(_class_tree("", n=4), tmp_path / "imgs", "dir")
    cache = tmp_path / "cache"
    first = _load(root, cache_dir=cache)
    images = Path(first.cache["path"]) / "all_images.npy"
    images.write_bytes(images.read_bytes()[:200])
    second = _load(root, cache_dir=cache)
    assert second.cache["hit"] is False and "rebuilding" in caplog.text
    np.testing.assert_array_equal(second.splits["train"].images, first.splits["train"].images)
    assert _load(root, cache_dir=cache).cache["hit"] is True


def test_thread_pool_matches_in_process_decoding(tmp_path, monkeypatch):
    tree = {f"{c}/{i:03d}.jpg": _image(7 * i % 256, "JPEG", shape=(30, 20, 3))
            for c in ("x", "y") for i in range(24)}
    tree["x/broken.jpg"] = b"GIF89a garbage"
    root = _write(tree, tmp_path / "pool", "dir")
    serial = _load(root, workers=1)
    monkeypatch.setattr(data.decode, "_CHUNK", 5)  # 10 chunks over 2 threads
    calls = []
    real = data.decode_image
    monkeypatch.setattr(data.decode, "decode_image", lambda *a: calls.append(
        threading.current_thread().name) or real(*a))
    pooled = _load(root, workers=2, progress=True)
    assert len(calls) == 49 and all(name.startswith("decode") for name in calls)
    for k in ("train", "val", "test"):
        np.testing.assert_array_equal(pooled.splits[k].images, serial.splits[k].images)
        np.testing.assert_array_equal(pooled.splits[k].labels, serial.splits[k].labels)
    assert pooled.skipped == serial.skipped and len(pooled.skipped) == 1


def test_import_is_light():
    """The CLI's --help imports bench.data: nothing heavy may load with it."""
    code = "import sys, bench.data; print(sorted(m for m in ('jax', 'sklearn', 'scipy', " \
           "'tensorflow_datasets') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------------------------
# tensorflow-datasets


def _tiny_builder():
    """A GeneratorBasedBuilder with Tensor features: prepares as ArrayRecord without TF."""
    tfds = pytest.importorskip("tensorflow_datasets")
    pytest.importorskip("array_record")
    if "bench_tiny_shapes" in tfds.list_builders(with_community_datasets=False):
        return tfds.builder_cls("bench_tiny_shapes")

    class BenchTinyShapes(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(10, 12, 3), dtype=np.uint8),
                "label": tfds.features.ClassLabel(names=["circle", "square", "star"]),
            }), supervised_keys=("image", "label"))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(30, 0),
                    "test": self._generate_examples(9, 100)}

        def _generate_examples(self, n, offset):
            for i in range(n):
                yield i, {"image": np.full((10, 12, 3), offset + i, np.uint8), "label": i % 3}

    return BenchTinyShapes


def test_tfds_prepared_array_record(tmp_path):
    builder_cls = _tiny_builder()
    builder_cls(data_dir=str(tmp_path / "tfds"), file_format="array_record").download_and_prepare()
    ds = _load("tfds:bench_tiny_shapes", data_dir=tmp_path / "tfds", image_size=4,
               cache_dir=tmp_path / "cache")
    _check_arrays(ds, (4, 4))
    assert ds.name == "tfds:bench_tiny_shapes"
    assert ds.classes == ["circle", "square", "star"]
    assert ds.split_info["method"].startswith("given train/test; val carved")
    assert len(ds.splits["test"]) == 9 and len(ds.splits["train"]) + len(ds.splits["val"]) == 30
    test_values = ds.splits["test"].images[:, 0, 0, 0]
    assert sorted(test_values.tolist()) == list(range(100, 109))
    # Label follows the example: value % 3 for the test examples written with offset 100.
    np.testing.assert_array_equal(ds.splits["test"].labels, (test_values - 100) % 3)
    assert _load("tfds:bench_tiny_shapes", data_dir=tmp_path / "tfds", image_size=4,
                 cache_dir=tmp_path / "cache").cache["hit"] is True

    sliced = _load("tfds:bench_tiny_shapes:1.0.0:train[:50%]:train[50%:]",
                   data_dir=tmp_path / "tfds")
    assert len(sliced.splits["test"]) == 15
    one = _load("tfds:bench_tiny_shapes:test", data_dir=tmp_path / "tfds")
    assert one.split_info["method"] == "stratified" and sum(map(len, one.splits.values())) == 9


def test_tfds_not_prepared_says_how_to_download(tmp_path):
    _tiny_builder()
    with pytest.raises(ValueError, match=r"not prepared in .*download=True \(CLI: --download\)"):
        _load("tfds:bench_tiny_shapes", data_dir=tmp_path / "empty")
    with pytest.raises(ValueError, match="no tensorflow-datasets builder"):
        _load("tfds:no_such_dataset_xyz", data_dir=tmp_path / "empty")


def test_tfds_builder_needing_tensorflow_names_the_extra(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    try:
        import tensorflow  # noqa: F401
        pytest.skip("TensorFlow is installed, so the builder does not need the [tf] extra")
    except ImportError:
        pass
    if "bench_tiny_encoded" not in tfds.list_builders(with_community_datasets=False):
        class BenchTinyEncoded(tfds.core.GeneratorBasedBuilder):
            """Image features are PNG-encoded with TensorFlow when prepared."""

            VERSION = tfds.core.Version("1.0.0")

            def _info(self):
                return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(shape=(4, 4, 3)),
                    "label": tfds.features.ClassLabel(names=["a", "b"])}))

            def _split_generators(self, dl_manager):
                return {"train": self._generate_examples()}

            def _generate_examples(self):
                for i in range(4):
                    yield i, {"image": np.zeros((4, 4, 3), np.uint8), "label": i % 2}

    with pytest.raises(ImportError, match=re.escape("pip install 'jax-image-bench[tf]'")):
        _load("tfds:bench_tiny_encoded", data_dir=tmp_path / "tfds", download=True)


# --------------------------------------------------------------------------------------------
# The real data sets (../shared/assets; the conftest `assets` fixture skips when absent)


@pytest.mark.assets
def test_food101_three_classes(assets, tmp_path):
    ds = load_dataset(assets / "food101-3class" / "images", 32, max_per_class=40,
                      cache_dir=tmp_path, progress=False)
    _check_arrays(ds, (32, 32))
    assert ds.classes == ["french_fries", "omelette", "steak"]
    assert {k: len(s) for k, s in ds.splits.items()} == {"train": 84, "val": 12, "test": 24}
    assert ds.skipped == [] and ds.split_info["layout"] == "class folders"
    assert 40 < ds.splits["train"].images.mean() < 220  # real photos, not blank


@pytest.mark.assets
def test_cifar10_zip_and_dogs_vs_cats_layouts(assets):
    cifar = load_dataset(assets / "cifar10-jpeg" / "cifar10-jpeg.zip", 32, max_per_class=4,
                         cache_dir=False, progress=False)
    canonical = (assets / "cifar10-jpeg" / "classes.txt").read_text().split()
    assert cifar.classes == canonical and cifar.name == "cifar10-jpeg"
    assert cifar.split_info["layout"] == "split folders"
    assert cifar.split_info["counts"]["test"] == {c: 4 for c in canonical}
    dogs = load_dataset(assets / "dogs-vs-cats" / "train.zip", 24, max_per_class=5,
                        cache_dir=False, progress=False)
    assert dogs.classes == ["cat", "dog"] and sum(map(len, dogs.splits.values())) == 10
    assert dogs.split_info["layout"].startswith("flat files")
