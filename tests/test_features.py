"""features: HDF5 feature cache (extract, reuse, load, atomic writes, data parallelism)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

import features
import features.extraction as fx
import models

REPO = Path(__file__).resolve().parents[1]
SPLITS = (("train", 20), ("val", 7), ("test", 9))


@dataclasses.dataclass
class Split:
    images: object
    labels: np.ndarray


@dataclasses.dataclass
class TinyDataset:
    """Stand-in for bench.data.Dataset: only the attributes features.extract reads."""

    name: str
    fingerprint: str
    classes: list
    image_size: tuple
    splits: dict


def make_dataset(seed=0, hw=24, fingerprint="fp-0123456789ab-0", sizes=SPLITS):
    rng = np.random.default_rng(seed)
    splits = {
        name: Split(rng.integers(0, 256, (n, hw, hw, 3), dtype=np.uint8),
                    rng.integers(0, 3, n).astype(np.int32))
        for name, n in sizes
    }
    return TinyDataset("tiny set", fingerprint, ["cat", "dog", "fox"], (hw, hw), splits)


def run_extract(dataset, out_dir, **kw):
    kw.setdefault("weights", None)
    kw.setdefault("batch_size", 8)
    kw.setdefault("progress", False)
    return features.extract("resnet20", dataset, out_dir, **kw)


@pytest.fixture(scope="module")
def dataset():
    return make_dataset()


@pytest.fixture(scope="module")
def extracted(tmp_path_factory, dataset):
    """resnet20, random init (seed 0), 24x24 images resized to its 32x32 input."""
    return run_extract(dataset, tmp_path_factory.mktemp("features"))


def copy_of(path: Path, tmp_path: Path, name="copy.h5") -> Path:
    dest = tmp_path / name
    shutil.copy(path, dest)
    return dest


def test_extract_writes_datasets_and_attrs(extracted, dataset):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    assert extracted == features.feature_path(
        extracted.parents[1], "resnet20", "tiny set", dataset.fingerprint, (32, 32))
    with h5py.File(extracted, "r") as f:
        assert sorted(f) == ["test", "test_labels", "train", "train_labels", "val",
                             "val_labels"]
        for name, n in SPLITS:
            assert f[name].shape == (n, 64) and f[name].dtype == np.float32
            assert f[f"{name}_labels"].dtype == np.int32
            np.testing.assert_array_equal(f[f"{name}_labels"][:], dataset.splits[name].labels)
        train = f["train"][:]
    attrs = features.read_attrs(extracted)
    assert attrs["backbone"] == "resnet20"
    assert attrs["weights"] == "none"
    assert attrs["weights_sha256"] == "random-init seed 0"
    assert attrs["input_size"] == (32, 32, 3)
    assert attrs["dataset"] == "tiny set"
    assert attrs["dataset_fingerprint"] == dataset.fingerprint
    assert json.loads(attrs["classes"]) == ["cat", "dog", "fox"]
    assert attrs["feature_dim"] == 64
    assert attrs["preprocessing"] == "unit"
    assert attrs["resize"].startswith("24x24 -> 32x32")
    assert json.loads(attrs["versions"])["jax"] == jax.__version__
    assert attrs["created"] and attrs["num_devices"] >= 1

    # The cached rows are what the documented pipeline gives: resize, preprocess, embed, with
    # the random init that "random-init seed 0" names.
    model = models.create_model("resnet20", num_classes=0, seed=0)
    model.eval()
    x = jnp.asarray(dataset.splits["train"].images, jnp.float32)
    x = jax.image.resize(x, (len(x), 32, 32, 3), "bilinear", antialias=True)
    embed = nnx.jit(lambda m, x: m.embed(x))  # one compile instead of many eager ops
    expected = np.asarray(embed(model, models.preprocess("resnet20", x)))
    np.testing.assert_allclose(train, expected, rtol=1e-4, atol=1e-5)
    assert np.abs(train).sum() > 0


def test_second_call_reuses_file(extracted, dataset, monkeypatch):
    before = extracted.stat().st_mtime_ns

    def forbidden(*args, **kwargs):
        raise AssertionError("the cached file should have been reused")

    monkeypatch.setattr(fx.models, "create_model", forbidden)
    monkeypatch.setattr(fx, "_compile_forward", forbidden)
    assert run_extract(dataset, extracted.parents[1]) == extracted
    assert extracted.stat().st_mtime_ns == before


def test_reuse_with_a_given_model_skips_the_forward(tmp_path, dataset, monkeypatch):
    model = models.create_model("resnet20", num_classes=0, seed=3)
    path = run_extract(dataset, tmp_path, model=model)
    assert features.read_attrs(path)["weights_sha256"].startswith("params-sha256:")
    monkeypatch.setattr(type(model), "embed", lambda self, x: 1 / 0)
    assert run_extract(dataset, tmp_path, model=model) == path


def test_changed_fingerprint_recomputes(extracted, dataset, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(extracted.parents[1], out)
    cached = out / extracted.relative_to(extracted.parents[1])
    # Same 12-character prefix, so the same file name: only the stored attribute differs.
    changed = dataclasses.replace(dataset, fingerprint=dataset.fingerprint + "-v2")
    with pytest.warns(UserWarning, match="dataset_fingerprint"):
        path = run_extract(changed, out)
    assert path == cached
    assert features.read_attrs(path)["dataset_fingerprint"] == changed.fingerprint
    # A different prefix is a different file next to the old one.
    other = dataclasses.replace(dataset, fingerprint="ffffffffffffffff")
    path2 = run_extract(other, out)
    assert path2 != path and path2.exists() and path.exists()


def test_other_weights_and_corrupt_file_recompute(extracted, dataset, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(extracted.parents[1], out)
    cached = out / extracted.relative_to(extracted.parents[1])
    model = models.create_model("resnet20", num_classes=0, seed=1)
    with pytest.warns(UserWarning, match="weights_sha256"):
        run_extract(dataset, out, model=model)
    new = features.load(cached)["train"][0]
    assert not np.allclose(new, features.load(extracted)["train"][0])

    cached.write_bytes(b"not an hdf5 file")
    with pytest.warns(UserWarning, match="unreadable"):
        run_extract(dataset, out, model=model)
    np.testing.assert_array_equal(features.load(cached)["train"][0], new)


def test_load_concatenates_row_aligned(extracted, dataset, tmp_path):
    other = run_extract(dataset, tmp_path, model=models.create_model(
        "resnet20", num_classes=0, seed=2))
    both = features.load([extracted, other])
    a, b = features.load(extracted), features.load(other)
    assert both.dims == [64, 64] and both.backbones == ["resnet20", "resnet20"]
    assert both.classes == ["cat", "dog", "fox"]
    assert set(both) == {"train", "val", "test"}  # the mapping holds splits only
    for name, n in SPLITS:
        x, y = both[name]
        assert x.shape == (n, 128) and x.dtype == np.float32
        np.testing.assert_array_equal(x[:, :64], a[name][0])
        np.testing.assert_array_equal(x[:, 64:], b[name][0])
        np.testing.assert_array_equal(y, dataset.splits[name].labels)
    only_test = features.load(other, splits=("test",))
    assert "test" in only_test and "train" not in only_test


def test_load_errors_name_the_files(extracted, tmp_path):
    shuffled = copy_of(extracted, tmp_path, "shuffled.h5")
    with h5py.File(shuffled, "r+") as f:
        f["val_labels"][...] = (f["val_labels"][:] + 1) % 3
    with pytest.raises(ValueError, match="shuffled.h5.*gap_resnet20.*'val'"):
        features.load([extracted, shuffled])

    foreign = copy_of(extracted, tmp_path, "foreign.h5")
    with h5py.File(foreign, "r+") as f:
        f.attrs["dataset_fingerprint"] = "another dataset"
    with pytest.raises(ValueError, match="foreign.h5.*gap_resnet20.*different datasets"):
        features.load([extracted, foreign])

    partial = copy_of(extracted, tmp_path, "partial.h5")
    with h5py.File(partial, "r+") as f:
        del f["val"]
    with pytest.raises(ValueError, match="partial.h5: no dataset 'val'"):
        features.load(partial)
    assert features.load(partial, splits=("train", "test"))["train"][0].shape == (20, 64)

    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"\0" * 64)
    with pytest.raises(ValueError, match="garbage.h5: not a readable HDF5"):
        features.load(garbage)


class FailingImages:
    """Images that fail once ``fail_at`` rows have been read, like a disk error mid-run."""

    def __init__(self, images, fail_at):
        self.images, self.fail_at = images, fail_at

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        if index.start >= self.fail_at:
            raise OSError("simulated read failure")
        return self.images[index]


def test_failed_extraction_leaves_no_file(dataset, extracted, tmp_path):
    test = dataset.splits["test"]
    failing = dataclasses.replace(
        dataset, splits={**dataset.splits, "test": Split(FailingImages(test.images, 8),
                                                          test.labels)})
    with pytest.raises(OSError, match="simulated"):
        run_extract(failing, tmp_path)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []

    # A failed forced recompute keeps the previous good file as it was.
    out = tmp_path / "out"
    shutil.copytree(extracted.parents[1], out)
    cached = out / extracted.relative_to(extracted.parents[1])
    good = cached.read_bytes()
    with pytest.raises(OSError, match="simulated"):
        run_extract(failing, out, force=True)
    assert cached.read_bytes() == good
    assert [p.name for p in cached.parent.iterdir()] == [cached.name]


def test_killed_writers_temp_files_are_cleaned(dataset, tmp_path):
    target = features.feature_path(tmp_path, "resnet20", dataset.name, dataset.fingerprint,
                                   (32, 32))
    target.parent.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = target.parent / f".{target.name}.{dead}.abc.tmp"
    live = target.parent / f".{target.name}.{os.getppid()}.abc.tmp"
    stale.write_bytes(b"half a file")
    live.write_bytes(b"someone else is writing")
    run_extract(dataset, tmp_path)
    assert target.exists() and not stale.exists() and live.exists()


def test_rejects_float_images(dataset, tmp_path):
    train = dataset.splits["train"]
    floats = dataclasses.replace(
        dataset, splits={"train": Split(train.images.astype(np.float32), train.labels)})
    with pytest.raises(ValueError, match="split 'train': images must be uint8"):
        run_extract(floats, tmp_path)


_SUBPROCESS = textwrap.dedent("""
    import sys, types
    import jax, numpy as np
    from flax import nnx
    import features, models
    assert jax.device_count() == 4, jax.devices()
    data = np.load(sys.argv[1])
    splits = {s: types.SimpleNamespace(images=data[s], labels=data[s + "_labels"])
              for s in ("train", "val", "test")}
    ds = types.SimpleNamespace(name="tiny", fingerprint="multi", classes=["a", "b", "c"],
                               image_size=(32, 32), splits=splits)
    # The parent's parameters, put into an abstract model (skips a second random init).
    graphdef, state = nnx.split(nnx.eval_shape(
        lambda: models.create_model("resnet20", num_classes=0)))
    leaves, treedef = jax.tree_util.tree_flatten(state)
    params = np.load(sys.argv[3])
    state = jax.tree_util.tree_unflatten(treedef, [params[f"p{i}"] for i in range(len(leaves))])
    model = nnx.merge(graphdef, state)
    print(features.extract("resnet20", ds, sys.argv[2], model=model, batch_size=8,
                           progress=False))
""")


def test_data_parallel_matches_single_device(tmp_path):
    import jax
    from flax import nnx

    # Split sizes that are not multiples of the batch or the device count: padding is used.
    ds = make_dataset(seed=5, hw=32, fingerprint="multi", sizes=(("train", 22), ("val", 5),
                                                                   ("test", 11)))
    ds.classes = ["a", "b", "c"]
    arrays = {}
    for name, split in ds.splits.items():
        arrays[name], arrays[f"{name}_labels"] = split.images, split.labels
    np.savez(tmp_path / "data.npz", **arrays)
    model = models.create_model("resnet20", num_classes=0, seed=4)
    leaves = jax.tree_util.tree_leaves(nnx.split(model)[1])
    np.savez(tmp_path / "params.npz", **{f"p{i}": np.asarray(x) for i, x in enumerate(leaves)})
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO),
                                                        os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-c", _SUBPROCESS, str(tmp_path / "data.npz"),
                           str(tmp_path / "multi"), str(tmp_path / "params.npz")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    multi = Path(proc.stdout.strip().splitlines()[-1])
    single = run_extract(ds, tmp_path / "single", devices=1, model=model)
    multi_attrs, single_attrs = features.read_attrs(multi), features.read_attrs(single)
    assert (multi_attrs["num_devices"], single_attrs["num_devices"]) == (4, 1)
    assert multi_attrs["weights_sha256"] == single_attrs["weights_sha256"]
    a, b = features.load(multi), features.load(single)
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(a[name][1], b[name][1])
        np.testing.assert_allclose(a[name][0], b[name][0], rtol=1e-5, atol=1e-5)
