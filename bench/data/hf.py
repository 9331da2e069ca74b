"""Hugging Face image data sets on disk, read with pyarrow (no ``datasets``, no hub).

Two layouts: parquet shards as the hub stores them (``data/train-00000-of-00001.parquet``,
or ``<config>/train/0000.parquet`` from the hub's parquet conversion), and a folder written
by ``datasets``' ``save_to_disk`` (``dataset_info.json`` + ``state.json`` + ``data-*.arrow``
in Arrow IPC stream format; a ``DatasetDict`` has one such folder per split beside
``dataset_dict.json``). The image column holds ``{bytes, path}`` structs (or raw bytes); the
label column's class names come from the ``huggingface`` schema metadata (``ClassLabel``
``names``) or ``dataset_info.json``; string labels are sorted. Images are decoded like
files, under the same pixel budget; a row that cannot be read is skipped with its reason.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import re
import threading
from pathlib import Path

import numpy as np

from .cache import digest

IMAGE_COLUMNS = ("image", "img", "image_file", "picture", "photo")
LABEL_COLUMNS = ("label", "labels", "class", "category", "target", "breed", "species",
                 "fine_label")
MAX_ROW_GROUP_BYTES = 1 << 30    # a row group is read whole: checked from the footer first
MAX_JSON_BYTES = 16 << 20
MAX_ROWS = 50_000_000           # per shard, from the footer, before its labels are read
_SHARD = re.compile(r"^(?P<split>[A-Za-z0-9_.]+?)-\d{5}-of-\d{5}\.parquet$")


def hf_source(root: Path, tables: dict[str, int], *, label_column: str | None = None):
    """A :class:`~bench.data.sources.Source` for a Hugging Face folder, or None if ``root``
    is neither layout. ``tables``: the listing's table files (relative path -> size)."""
    if "dataset_dict.json" in tables or {"dataset_info.json", "state.json"} <= set(tables):
        return _arrow_source(root, label_column)
    shards = sorted(t for t in tables if t.lower().endswith(".parquet"))
    if shards:
        return _parquet_source(root, shards, label_column)
    return None


def _split_of(rel: str) -> str | None:
    """The split a shard belongs to: its file-name prefix, or its folder's name."""
    parts = rel.split("/")
    m = _SHARD.match(parts[-1])
    if m:
        return m["split"]
    return parts[-2] if len(parts) >= 2 else None


def _hf_features(metadata: dict | None) -> dict:
    """The ``features`` of a schema's ``huggingface`` metadata (old and new forms)."""
    if not metadata or b"huggingface" not in metadata:
        return {}
    try:
        meta = json.loads(metadata[b"huggingface"])
    except ValueError:
        return {}
    return (meta.get("info") or meta).get("features") or {}


def _columns(schema, features: dict, where: str, label_column: str | None):
    """-> (image column, label column, class names or None)."""
    import pyarrow as pa

    names = schema.names

    def is_image(name):
        t = schema.field(name).type
        return (pa.types.is_struct(t) and t.get_field_index("bytes") >= 0) or \
            pa.types.is_binary(t) or pa.types.is_large_binary(t)

    image = next((c for c in IMAGE_COLUMNS if c in names and is_image(c)), None) or next(
        (c for c in names if is_image(c)), None)
    if image is None:
        raise ValueError(f"{where}: no image column (a {{bytes, path}} struct or binary "
                         f"column); columns are {names}")
    if label_column is not None and label_column not in names:
        raise ValueError(f"{where}: no column {label_column!r} (--label-column); columns "
                         f"are {names}")
    label = label_column or next((c for c in LABEL_COLUMNS if c in names), None)
    if label is None:
        raise ValueError(f"{where}: no label column; expected one of "
                         f"{', '.join(LABEL_COLUMNS)} (or --label-column); columns are {names}")
    t = schema.field(label).type
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        raise ValueError(f"{where}: {label} is a list (multi-label); expected one class "
                         "per image")
    feature = features.get(label) or {}
    if feature.get("_type") == "Sequence" or isinstance(feature.get("feature"), dict):
        raise ValueError(f"{where}: {label} is a sequence (multi-label); expected one class "
                         "per image")
    names_ = feature.get("names") if isinstance(feature, dict) else None
    return image, label, list(names_) if names_ else None


def _labels_to_groups(per_split: dict[str, list], where: str, names, warnings: list):
    """``{split: [(key, raw label)]}`` -> (classes, {group: (keys, int labels)})."""
    from .base import SPLIT_FOLDERS

    roles: dict[str, list] = {}
    for split, items in per_split.items():
        role = SPLIT_FOLDERS.get(split.lower())
        if role is None:
            warnings.append(f"{where}: split {split!r} ({len(items)} rows) is not train, "
                            "validation or test: not used")
            continue
        kept = [(k, v) for k, v in items if v is not None and v != -1]
        if not kept:
            warnings.append(f"{where}: the {split} split has no labels (-1 or empty): its "
                            f"{len(items)} image(s) not used")
            continue
        if len(kept) < len(items):
            warnings.append(f"{where}: {len(items) - len(kept)} row(s) of {split} have no "
                            "label, not used")
        if role in roles:
            raise ValueError(f"{where}: two splits for {role} ({split}); expected one folder "
                             "of one configuration")
        roles[role] = kept
    if "train" not in roles:
        raise ValueError(f"{where}: no labelled train split (splits: {sorted(per_split)})")
    values = {v for items in roles.values() for _, v in items}
    if names is None:
        if all(isinstance(v, (int, np.integer)) for v in values):
            names = [str(i) for i in range(max(values) + 1)]
        else:
            names = sorted(str(v) for v in values)
    index = {n: i for i, n in enumerate(names)}

    def to_int(v):
        if isinstance(v, (int, np.integer)):
            if not 0 <= v < len(names):
                raise ValueError(f"{where}: label {v} outside the {len(names)} class names")
            return int(v)
        return index[str(v)]

    if set(roles) == {"train"}:
        roles = {"all": roles["train"]}
    elif "test" not in roles:
        roles = {"train": roles["train"], "test": roles["val"]}
    groups = {g: ([k for k, _ in items], np.array([to_int(v) for _, v in items], np.int32))
              for g, items in roles.items()}
    return list(names), groups


def _image_value(cell, root: Path, where: str) -> bytes:
    """A ``{bytes, path}`` struct (or raw bytes) -> the encoded image."""
    if isinstance(cell, (bytes, bytearray)):
        return bytes(cell)
    if not isinstance(cell, dict):
        raise ValueError(f"no image in {where} (got {type(cell).__name__})")
    if cell.get("bytes"):
        return cell["bytes"]
    path = cell.get("path")
    if path:
        p = Path(os.path.abspath(root / path))
        if p.is_relative_to(root) and p.is_file():  # never a file outside the data set
            return p.read_bytes()
        raise ValueError(f"no image bytes in {where}, and its path {path!r} is not a file "
                         "below the data set")
    raise ValueError(f"no image bytes or path in {where}")


# --------------------------------------------------------------------------------------------
# Parquet shards.


class _ParquetReader:
    """Reads ``shard#row`` keys, one row group at a time, cached per decoding thread."""

    def __init__(self, root: Path, image_column: str):
        self.root, self.column = root, image_column
        self._local = threading.local()
        self._starts: dict[str, list[int]] = {}
        self._lock = threading.Lock()

    def _group(self, shard: str, row: int):
        import pyarrow.parquet as pq

        cache = getattr(self._local, "cache", None)
        if cache is not None and cache[0] == shard and cache[1] <= row < cache[2]:
            return cache
        pf = pq.ParquetFile(self.root / shard)
        with self._lock:
            starts = self._starts.get(shard)
            if starts is None:
                md, acc, starts = pf.metadata, 0, []
                for i in range(md.num_row_groups):
                    starts.append(acc)
                    acc += md.row_group(i).num_rows
                starts.append(acc)
                self._starts[shard] = starts
        i = bisect.bisect_right(starts, row) - 1
        size = pf.metadata.row_group(i).total_byte_size
        if size > MAX_ROW_GROUP_BYTES:
            raise ValueError(f"row group {i} of {shard} is {size:,} bytes uncompressed; "
                             f"rows are read a group at a time, at most "
                             f"{MAX_ROW_GROUP_BYTES:,} bytes")
        col = pf.read_row_group(i, columns=[self.column]).column(0).combine_chunks()
        self._local.cache = cache = (shard, starts[i], starts[i + 1], col)
        return cache

    def read(self, key: str) -> bytes:
        shard, row = key.rsplit("#", 1)
        _, lo, _, col = self._group(shard, int(row))
        return _image_value(col[int(row) - lo].as_py(), self.root, key)

    def display(self, key: str) -> str:
        return f"{self.root}/{key}"


def _parquet_source(root: Path, shards: list[str], label_column):
    import pyarrow.parquet as pq

    from .base import Source, display_name

    per_split: dict[str, list] = {}
    dirs: dict[str, set] = {}
    image = label = names = None
    h = hashlib.sha256()
    for rel in shards:
        split = _split_of(rel)
        if split is None:
            continue
        path = root / rel
        try:
            pf = pq.ParquetFile(path)
        except Exception as e:  # not a parquet file: say which
            raise ValueError(f"{path}: not a readable parquet file ({e})") from None
        if pf.metadata.num_rows > MAX_ROWS:
            raise ValueError(f"{path}: {pf.metadata.num_rows:,} rows; expected at most "
                             f"{MAX_ROWS:,} per shard")
        schema = pf.schema_arrow
        img, lab, nm = _columns(schema, _hf_features(schema.metadata), str(path), label_column)
        if image is None:
            image, label, names = img, lab, nm
        elif (img, lab) != (image, label):
            raise ValueError(f"{path}: columns {img}/{lab} differ from the other shards' "
                             f"{image}/{label}")
        values = pf.read(columns=[label]).column(0).to_pylist()
        per_split.setdefault(split, []).extend((f"{rel}#{i}", v) for i, v in enumerate(values))
        dirs.setdefault(split, set()).add(rel.rsplit("/", 1)[0] if "/" in rel else "")
        st = path.stat()
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    if not per_split:
        raise ValueError(f"{root}: parquet files, but none named like the hub's shards "
                         "('train-00000-of-00001.parquet') or in a split folder")
    many = {s: sorted(d) for s, d in dirs.items() if len(d) > 1}
    if many:
        s, d = next(iter(many.items()))
        raise ValueError(f"{root}: {s} shards in several folders ({', '.join(d)}): several "
                         "configurations; pass the folder of one")
    warnings: list[str] = []
    classes, groups = _labels_to_groups(per_split, str(root), names, warnings)
    layout = f"Hugging Face parquet ({len(shards)} shard(s), {image} -> {label})"
    fingerprint = digest({"hf_parquet": h.hexdigest(), "classes": classes, "columns":
                          [image, label], "groups": {g: len(v[0]) for g, v in groups.items()}})
    return Source(name=display_name(root), source=str(root), fingerprint=fingerprint,
                  classes=classes, groups=groups, reader=_ParquetReader(root, image),
                  layout=layout, warnings=warnings,
                  labels={"rows": {s: len(v) for s, v in per_split.items()}})


# --------------------------------------------------------------------------------------------
# save_to_disk folders (Arrow IPC streams).


def _read_json(path: Path) -> dict:
    size = path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise ValueError(f"{path}: {size:,} bytes; expected at most {MAX_JSON_BYTES:,}")
    try:
        return json.loads(path.read_text("utf-8"))
    except ValueError as e:
        raise ValueError(f"{path}: not JSON ({e})") from None


def _arrow_table(path: Path):
    """An Arrow IPC stream (or file) memory-mapped: no copy of the images is made."""
    import pyarrow as pa

    try:
        return pa.ipc.open_stream(pa.memory_map(str(path))).read_all()
    except pa.ArrowInvalid:
        try:
            return pa.ipc.open_file(pa.memory_map(str(path))).read_all()
        except pa.ArrowInvalid as e:
            raise ValueError(f"{path}: not an Arrow IPC stream or file ({e})") from None


class _ArrowReader:
    """Reads ``split/data-....arrow#row`` keys from memory-mapped tables (thread-safe)."""

    def __init__(self, root: Path, tables: dict, image_column: str):
        self.root, self.tables, self.column = root, tables, image_column

    def read(self, key: str) -> bytes:
        shard, row = key.rsplit("#", 1)
        cell = self.tables[shard].column(self.column)[int(row)].as_py()
        return _image_value(cell, self.root / shard.rsplit("/", 1)[0]
                            if "/" in shard else self.root, key)

    def display(self, key: str) -> str:
        return f"{self.root}/{key}"


def _arrow_split_dirs(root: Path) -> dict[str, str]:
    """``{split: folder relative to root}`` of a save_to_disk folder."""
    if (root / "dataset_dict.json").is_file():
        splits = _read_json(root / "dataset_dict.json").get("splits") or []
        return {str(s): str(s) for s in splits if (root / str(s) / "state.json").is_file()}
    state = _read_json(root / "state.json")
    return {str(state.get("_split") or "train"): ""}


def _arrow_source(root: Path, label_column):
    from .base import Source, display_name

    per_split, tables = {}, {}
    image = label = names = None
    h = hashlib.sha256()
    for split, folder in _arrow_split_dirs(root).items():
        base = root / folder if folder else root
        state = _read_json(base / "state.json")
        features = (_read_json(base / "dataset_info.json").get("features") or {}) if (
            base / "dataset_info.json").is_file() else {}
        values = []
        for f in state.get("_data_files") or []:
            fname = str(f.get("filename", ""))
            if "/" in fname or "\\" in fname or not fname.endswith(".arrow"):
                raise ValueError(f"{base / 'state.json'}: data file {fname!r}; expected a "
                                 "data-*.arrow file name beside it")
            rel = f"{folder}/{fname}" if folder else fname
            table = _arrow_table(root / rel)
            img, lab, nm = _columns(table.schema, features or _hf_features(
                table.schema.metadata), str(root / rel), label_column)
            if image is None:
                image, label, names = img, lab, nm
            tables[rel] = table
            values += [(f"{rel}#{i}", v) for i, v in
                       enumerate(table.column(lab).to_pylist())]
            st = (root / rel).stat()
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        per_split[split] = values
    if not tables:
        raise ValueError(f"{root}: a save_to_disk folder without data-*.arrow files")
    warnings: list[str] = []
    classes, groups = _labels_to_groups(per_split, str(root), names, warnings)
    layout = f"Hugging Face save_to_disk ({len(tables)} arrow file(s), {image} -> {label})"
    fingerprint = digest({"hf_arrow": h.hexdigest(), "classes": classes,
                          "columns": [image, label],
                          "groups": {g: len(v[0]) for g, v in groups.items()}})
    return Source(name=display_name(root), source=str(root), fingerprint=fingerprint,
                  classes=classes, groups=groups, reader=_ArrowReader(root, tables, image),
                  layout=layout, warnings=warnings,
                  labels={"rows": {s: len(v) for s, v in per_split.items()}})
