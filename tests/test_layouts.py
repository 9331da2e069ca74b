"""Data layouts beyond class folders: CSV-labelled folders, Hugging Face imagefolder,
parquet shards and save_to_disk folders; each built here from the bundled digits."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.data import load_dataset
from bench.data.sources import _digits_arrays

CLASSES = ("0", "1", "2")
N_PER_CLASS = 12


def digit_images(n_per_class: int = N_PER_CLASS, classes=CLASSES):
    """[(name, class, uint8 8x8x3)] from the bundled digits, in a fixed order."""
    raw, labels = _digits_arrays()
    out = []
    for c in classes:
        for j, i in enumerate(np.flatnonzero(labels == int(c))[:n_per_class]):
            a = np.round(raw[i] * (255 / 16)).astype(np.uint8)
            out.append((f"d{c}_{j:03d}", c, np.stack([a] * 3, -1)))
    return out


def png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def write_class_folders(root: Path, items) -> Path:
    for name, c, a in items:
        (root / c).mkdir(parents=True, exist_ok=True)
        (root / c / f"{name}.png").write_bytes(png(a))
    return root


def write_csv_folder(root: Path, items, *, table="labels.csv", folder="images",
                     header="id,label", ext=False, extra_rows=()) -> Path:
    (root / folder).mkdir(parents=True, exist_ok=True)
    rows = [header]
    for name, c, a in items:
        (root / folder / f"{name}.png").write_bytes(png(a))
        rows.append(f"{name}{'.png' if ext else ''},{c}")
    (root / table).write_text("\n".join(rows + list(extra_rows)) + "\n")
    return root


def write_imagefolder(root: Path, items, test_every: int = 4) -> Path:
    """Hugging Face imagefolder: train/ and test/, each with metadata.csv."""
    tables = {"train": ["file_name,label"], "test": ["file_name,label"]}
    for k, (name, c, a) in enumerate(items):
        split = "test" if k % test_every == 0 else "train"
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / split / f"{name}.png").write_bytes(png(a))
        tables[split].append(f"{name}.png,{c}")
    for split, rows in tables.items():
        (root / split / "metadata.csv").write_text("\n".join(rows) + "\n")
    return root


def _hf_table(items, names, bad_rows=()):
    import pyarrow as pa

    images = [{"bytes": (b"not an image" if k in bad_rows else png(a)), "path": f"{n}.png"}
              for k, (n, _, a) in enumerate(items)]
    labels = [names.index(f"c{c}") for _, c, _ in items]
    meta = {"info": {"features": {"image": {"_type": "Image"}, "label": {
        "names": names, "_type": "ClassLabel"}}}}
    schema = pa.schema([("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                        ("label", pa.int64())], metadata={"huggingface": json.dumps(meta)})
    return pa.table({"image": images, "label": labels}, schema=schema)


HF_NAMES = ["c2", "c0", "c1"]  # not sorted: the schema's order must be kept


def write_parquet(root: Path, items, bad_rows=()) -> Path:
    import pyarrow.parquet as pq

    (root / "data").mkdir(parents=True)
    train = [it for k, it in enumerate(items) if k % 4]
    test = [it for k, it in enumerate(items) if not k % 4]
    pq.write_table(_hf_table(train, HF_NAMES, bad_rows), root / "data" /
                   "train-00000-of-00001.parquet", row_group_size=7)
    pq.write_table(_hf_table(test, HF_NAMES), root / "data" / "test-00000-of-00001.parquet")
    (root / "README.md").write_text("---\nlicense: mit\n---\n")
    return root


def write_save_to_disk(root: Path, items) -> Path:
    import pyarrow as pa

    splits = {"train": [it for k, it in enumerate(items) if k % 4],
              "test": [it for k, it in enumerate(items) if not k % 4]}
    (root).mkdir(parents=True, exist_ok=True)
    (root / "dataset_dict.json").write_text(json.dumps({"splits": list(splits)}))
    for split, part in splits.items():
        d = root / split
        d.mkdir()
        table = _hf_table(part, HF_NAMES)
        with pa.OSFile(str(d / "data-00000-of-00001.arrow"), "wb") as f, \
                pa.ipc.new_stream(f, table.schema) as w:
            w.write_table(table)
        (d / "state.json").write_text(json.dumps({
            "_data_files": [{"filename": "data-00000-of-00001.arrow"}], "_split": split}))
        (d / "dataset_info.json").write_text(json.dumps({"features": {
            "image": {"_type": "Image"}, "label": {"names": HF_NAMES, "_type": "ClassLabel"}}}))
    return root


def load(spec, **kw):
    return load_dataset(spec, 8, cache_dir=False, progress=False, workers=1, **kw)


def by_file(ds) -> dict[str, str]:
    """{file stem: class name} over every split."""
    out = {}
    for s in ds.splits.values():
        for f, y in zip(s.files, s.labels):
            out[Path(str(f).split("#")[0]).stem] = ds.classes[y]
    return out


# --------------------------------------------------------------------------------------------


def test_csv_folder_matches_class_folders(tmp_path):
    items = digit_images()
    folders = load(write_class_folders(tmp_path / "folders", items))
    csv = load(write_csv_folder(tmp_path / "csv", items))
    assert csv.layout == "CSV labels (labels.csv: id -> label)"
    assert csv.classes == folders.classes == list(CLASSES)
    assert csv.split_info["counts"] == folders.split_info["counts"]
    assert by_file(csv) == by_file(folders) == {n: c for n, c, _ in items}
    assert csv.split_info["labels"]["labels.csv"]["matched_images"] == len(items)
    assert csv.files_readable and csv.fingerprint != folders.fingerprint


def test_csv_ids_with_extension_paths_and_named_file(tmp_path):
    items = digit_images(6)
    root = write_csv_folder(tmp_path / "a", items, table="train.csv", folder="train_images",
                            header="image_id,species", ext=True)
    ds = load(root)
    assert ds.layout == "CSV labels (train.csv: image_id -> species)"
    assert sum(ds.split_info["sizes"].values()) == len(items)
    # --dataset DIR/labels.csv and --labels FILE with other column names
    (root / "other.csv").write_text("name,kind\n" + "\n".join(
        f"train_images/{n}.png,{c}" for n, c, _ in items) + "\n")
    ds2 = load(root / "other.csv", id_column="name", label_column="kind")
    ds3 = load(root, labels=root / "other.csv", id_column="name", label_column="kind")
    assert by_file(ds2) == by_file(ds3) == by_file(ds)
    with pytest.raises(ValueError, match=r"other.csv: no id/file column.*--id-column"):
        load(root / "other.csv")


def test_csv_problems_are_counted_never_fatal(tmp_path):
    items = digit_images(6)
    root = write_csv_folder(tmp_path / "p", items[1:], extra_rows=(
        f"{items[1][0]},{items[1][1]}",            # duplicate, same label
        f"{items[2][0]},9",                        # conflicting label
        "ghost_001,1", "ghost_002,2",              # no such image
    ))
    (root / "images" / f"{items[0][0]}.png").write_bytes(png(items[0][2]))  # no row
    ds = load(root)
    rep = ds.split_info["labels"]["labels.csv"]
    assert (rep["missing_images"], rep["unlabelled_images"], rep["duplicate_rows"],
            rep["conflicting_ids"]) == (2, 1, 1, 1)
    assert rep["missing_examples"][0]["id"] == "ghost_001"
    assert sum(ds.split_info["sizes"].values()) == len(items) - 2  # no row; conflict
    assert any("conflicting labels" in s["reason"] for s in ds.skipped)
    assert len([w for w in ds.split_info["warnings"] if "labels.csv" in w]) == 4


@pytest.mark.parametrize("text, expected", [
    ("id,width\na,1\nb,2\n", r"bad.csv: no label column; expected one of label, class"),
    ("id,label\n", r"bad.csv: a header \(id, label\) but no rows"),
    ("id,label\nd0_000,0|1\nd0_001,1\n", r"bad.csv: line 2: label '0\|1' holds several"),
    ("id,label\nd0_000,0 1\nd0_001,1\nd0_002,0\n", r"line 2: label '0 1' holds several"),
])
def test_bad_tables_are_one_line_errors(tmp_path, text, expected):
    root = write_csv_folder(tmp_path / "b", digit_images(3))
    (root / "labels.csv").unlink()
    (root / "bad.csv").write_text(text)
    with pytest.raises(ValueError, match=expected) as e:
        load(root, labels=root / "bad.csv")
    assert "\n" not in str(e.value)


def test_bad_csv_cli_exit_2(tmp_path, capsys):
    from bench.cli import main

    for i, text in enumerate(("id,size\na,1\nb,2\n", "id,label\n")):
        root = write_csv_folder(tmp_path / f"c{i}", digit_images(3))
        (root / "labels.csv").write_text(text)
        spec = root if i == 0 else root / "labels.csv"   # detected, and named
        assert main(["inspect", "--dataset", str(spec), "--out", str(tmp_path / "o"),
                     "-q"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "labels.csv" in err


def test_imagefolder_metadata(tmp_path):
    items = digit_images()
    ds = load(write_imagefolder(tmp_path / "hf", items))
    assert ds.layout == "Hugging Face imagefolder (test/metadata.csv, train/metadata.csv)"
    assert ds.classes == list(CLASSES)
    assert ds.split_info["sizes"]["test"] == len(items[::4])
    assert by_file(ds) == {n: c for n, c, _ in items}
    assert ds.split_info["method"].startswith("given train/test")


def test_parquet_shards(tmp_path, monkeypatch):
    items = digit_images()
    root = write_parquet(tmp_path / "pq", items, bad_rows=(3,))
    ds = load(root)
    assert ds.layout.startswith("Hugging Face parquet (2 shard(s), image -> label)")
    assert ds.classes == HF_NAMES and not ds.files_readable
    rows = {str(f): ds.classes[y] for s in ds.splits.values() for f, y in zip(s.files, s.labels)}
    train = [c for k, (_, c, _) in enumerate(items) if k % 4]
    want = {f"data/train-00000-of-00001.parquet#{j}": f"c{c}" for j, c in enumerate(train)
            if j != 3}
    want.update({f"data/test-00000-of-00001.parquet#{j}": f"c{c}"
                 for j, (_, c, _) in enumerate(items[::4])})
    assert rows == want
    assert ds.split_info["sizes"]["test"] == len(items[::4])
    assert [s["reason"] for s in ds.skipped] == [
        "not an image (Pillow cannot identify the format)"]
    assert sum(ds.split_info["sizes"].values()) == len(items) - 1
    # The same pixel budget as files: every 8x8 row is over a 50-pixel budget.
    monkeypatch.setenv("BENCH_MAX_PIXELS", "50")
    with pytest.raises(ValueError, match="exceed the budget"):
        load(root)


def test_parquet_matches_class_folders(tmp_path):
    items = digit_images()
    pq = load(write_parquet(tmp_path / "pq", items))
    sd = load(write_save_to_disk(tmp_path / "sd", items))
    assert sd.layout.startswith("Hugging Face save_to_disk (2 arrow file(s)")
    for ds in (pq, sd):
        per_class = {c: sum(v[c] for v in ds.split_info["counts"].values()) for c in HF_NAMES}
        assert per_class == {f"c{c}": N_PER_CLASS for c in CLASSES}
        test = ds.splits["test"]
        want = np.stack([a for k, (_, _, a) in enumerate(items) if not k % 4])
        assert np.array_equal(test.images, want)  # decoded pixels, in shard order


def test_fingerprint_covers_the_table(tmp_path):
    items = digit_images(4)
    root = write_csv_folder(tmp_path / "f", items)
    a = load(root).fingerprint
    text = (root / "labels.csv").read_text().replace("d0_000,0", "d0_000,1")
    (root / "labels.csv").write_text(text)
    assert load(root).fingerprint != a


def test_csv_in_zip(tmp_path):
    items = digit_images(5)
    root = write_csv_folder(tmp_path / "z", items)
    with zipfile.ZipFile(tmp_path / "z.zip", "w") as zf:
        for p in sorted(root.rglob("*")):
            zf.write(p, "kaggle/" + p.relative_to(root).as_posix())
    ds = load(tmp_path / "z.zip")
    assert ds.layout.startswith("CSV labels") and by_file(ds) == {n: c for n, c, _ in items}


@pytest.mark.assets
def test_dogs_vs_cats_as_csv(tmp_path, assets):
    """The Kaggle zip rewritten as images/ + labels.csv (ids without extension) loads with
    the classes, counts and labels of the zip's own file-name layout."""
    src = assets / "dogs-vs-cats" / "train.zip"
    names = [f"train/{c}.{i}.jpg" for c in ("cat", "dog") for i in range(10)]
    flat = tmp_path / "flat"
    csv_root = tmp_path / "csv"
    (flat / "train").mkdir(parents=True)
    (csv_root / "images").mkdir(parents=True)
    rows = ["id,label"]
    with zipfile.ZipFile(src) as zf:
        for k, n in enumerate(names):
            data = zf.read(n)
            (flat / n).write_bytes(data)
            (csv_root / "images" / f"{k + 1:03d}.jpg").write_bytes(data)
            rows.append(f"{k + 1:03d},{n.split('/')[1].split('.')[0]}")
    (csv_root / "labels.csv").write_text("\n".join(rows) + "\n")
    a, b = load(flat), load(csv_root)
    assert a.classes == b.classes == ["cat", "dog"]
    assert a.split_info["counts"] == b.split_info["counts"]
    for split in ("train", "val", "test"):
        assert np.array_equal(a.splits[split].images, b.splits[split].images)


def test_kaggle_train_and_test_folders_and_unlabelled_metadata(tmp_path):
    items = digit_images(4)
    root = write_csv_folder(tmp_path / "k", items, table="train.csv", folder="train")
    (root / "test").mkdir()
    for k in range(3):
        (root / "test" / f"t{k}.png").write_bytes(png(items[0][2]))
    ds = load(root)
    rep = ds.split_info["labels"]["train.csv"]
    assert rep["images_elsewhere"] == 3 and rep["matched_images"] == len(items)
    assert any("3 image(s) outside the labelled folders" in w
               for w in ds.split_info["warnings"])
    # A metadata.csv without a label column leaves class folders in force (as in HF).
    folders = write_class_folders(tmp_path / "f", items)
    (folders / "metadata.csv").write_text("file_name,width\n0/d0_000.png,8\n")
    assert load(folders).layout == "class folders"


def test_jsonl_metadata_hub_conversion_layout_and_single_save_to_disk(tmp_path):
    import pyarrow.parquet as pq

    items = digit_images(4)
    root = write_imagefolder(tmp_path / "j", items)
    for split in ("train", "test"):
        rows = (root / split / "metadata.csv").read_text().splitlines()[1:]
        (root / split / "metadata.csv").unlink()
        (root / split / "metadata.jsonl").write_text("".join(
            json.dumps({"file_name": r.split(",")[0], "label": r.split(",")[1]}) + "\n"
            for r in rows))
    assert load(root).layout.startswith("Hugging Face imagefolder (test/metadata.jsonl")
    # The hub's parquet conversion: <config>/<split>/0000.parquet
    conv = tmp_path / "conv" / "default"
    for split, part in (("train", items[1::2]), ("validation", items[::2])):
        (conv / split).mkdir(parents=True)
        pq.write_table(_hf_table(part, HF_NAMES), conv / split / "0000.parquet")
    ds = load(tmp_path / "conv")
    assert ds.split_info["sizes"]["test"] == len(items[::2])  # validation is the test split
    # save_to_disk of one Dataset (no dataset_dict.json)
    one = write_save_to_disk(tmp_path / "sd", items) / "train"
    ds = load(one)
    assert ds.layout.startswith("Hugging Face save_to_disk (1 arrow file(s)")
    assert sum(ds.split_info["sizes"].values()) == len([k for k in range(len(items)) if k % 4])
