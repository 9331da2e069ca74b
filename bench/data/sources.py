"""Sources: a spec (digits, a folder or zip with its layout detected, tfds:NAME) resolved to
keys and labels per group and a reader, before any decoding."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np

from .base import SPLIT_FOLDERS, Source, display_name  # noqa: F401  (re-exported)
from .cache import digest

IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff",
    ".ppm", ".pgm", ".pbm", ".pnm",
})
# ("cat.0.jpg" -> "cat", "great_dane_12.png" -> "great_dane").
_FLAT_NAME = re.compile(r"^(?P<label>.+?)[._-](?P<id>\d+)\.[^./]+$")


class _ArrayReader:
    def __init__(self, images: np.ndarray):
        self.images = images

    def read(self, i: int) -> np.ndarray:
        return self.images[i]

    def display(self, i: int) -> str:
        return f"#{i}"


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: (1797, 8, 8) values 0..16 and labels.

    Read straight from the file scikit-learn ships: importing ``sklearn.datasets`` (and so
    scipy) costs seconds, the file a few milliseconds.
    """
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    for base in (spec.submodule_search_locations or []) if spec else []:
        path = Path(base, "datasets", "data", "digits.csv.gz")
        if path.is_file():
            with gzip.open(path, "rt") as f:
                table = np.loadtxt(f, delimiter=",")
            return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int32)
    from sklearn.datasets import load_digits  # layout changed: the slow, public way

    d = load_digits()
    return d.images, d.target.astype(np.int32)


def digits_source() -> Source:
    raw, labels = _digits_arrays()
    images = np.round(raw * (255 / 16)).astype(np.uint8)   # 16 grey levels -> 0..255
    return Source(
        name="digits", source="sklearn.datasets.load_digits",
        fingerprint=digest({"digits": hashlib.sha256(images.tobytes() + labels.tobytes())
                             .hexdigest()}),
        classes=[str(i) for i in range(10)], groups={"all": (list(range(len(labels))), labels)},
        reader=_ArrayReader(images), layout="bundled")


# --------------------------------------------------------------------------------------------
# Sources: a folder or a zip of image files.


class _DirReader:
    def __init__(self, root: Path):
        self.root = root

    def read(self, key: str) -> bytes:
        return (self.root / key).read_bytes()

    def display(self, key: str) -> str:
        return str(self.root / key)


class _ZipReader:
    """Reads members of a zip, with one handle per decoding thread (no shared file offset)."""

    def __init__(self, path: Path):
        self.path = path
        self._local = threading.local()

    def read(self, key: str) -> bytes:
        zf = getattr(self._local, "zip", None)
        if zf is None:
            zf = self._local.zip = zipfile.ZipFile(self.path)
        return zf.read(key)

    def display(self, key: str) -> str:
        return f"{self.path}/{key}"


def is_ignored(path: str) -> bool:
    """Dotfiles, dot-folders and macOS resource forks (``__MACOSX/``)."""
    return "/." in f"/{path}" or "__MACOSX" in path.split("/")


def is_image_name(name: str) -> bool:
    _, dot, ext = name.rpartition(".")
    return bool(dot) and f".{ext.lower()}" in IMAGE_EXTENSIONS


def _list_zip(path: Path):
    """-> image member names, a digest of their central-directory entries, extra texts."""
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise ValueError(f"{path}: not a readable zip file ({e}); expected a directory, "
                         "a .zip of images, 'digits' or 'tfds:NAME'") from None
    with zf:
        keys, h, texts = [], hashlib.sha256(), {}
        for info in zf.infolist():
            name = info.filename
            if info.is_dir() or is_ignored(name):
                continue
            if is_image_name(name):
                keys.append(name)
                h.update(f"{name}\0{info.file_size}\0{info.CRC}\n".encode())
            elif name.rsplit("/", 1)[-1] == "classes.txt":
                texts[name] = zf.read(info).decode("utf-8", "replace")
            elif _is_table_name(name):
                texts.setdefault(TABLES, {})[name] = info.file_size
    keys.sort()
    return keys, h.hexdigest(), texts


def _list_dir(root: Path):
    """-> image paths relative to root, a digest of paths + sizes + mtimes, extra texts."""
    entries, texts, bad = [], {}, []
    seen = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink loop
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not is_ignored(d))
        rel_dir = os.path.relpath(dirpath, root)
        for f in filenames:
            if is_ignored(f):
                continue
            rel = f if rel_dir == "." else f"{rel_dir}/{f}".replace(os.sep, "/")
            if is_image_name(f):
                try:
                    st = os.stat(os.path.join(dirpath, f))  # follows links
                except OSError as e:  # a dangling or looping link, a vanished file
                    bad.append({"path": str(Path(root, rel)),
                                "reason": f"cannot be opened ({e.strerror or e})"})
                    continue
                entries.append((rel, st.st_size, st.st_mtime_ns))
            elif f == "classes.txt":
                texts[rel] = Path(dirpath, f).read_text("utf-8", "replace")
            elif _is_table_name(f) and rel.count("/") <= 2:
                with contextlib.suppress(OSError):
                    texts.setdefault(TABLES, {})[rel] = os.stat(os.path.join(dirpath, f)).st_size
    entries.sort()
    h = hashlib.sha256()
    for rel, size, mtime in entries:
        h.update(f"{rel}\0{size}\0{mtime}\n".encode())
    return [e[0] for e in entries], h.hexdigest(), texts, bad


def path_source(path: Path, *, labels=None, id_column: str | None = None,
                label_column: str | None = None) -> Source:
    """A folder or zip of images, its layout detected; a ``.csv``/``.jsonl`` label table
    (``path`` itself, or ``labels``) labels the images below the table's folder; a folder
    of Hugging Face parquet shards or ``save_to_disk`` files is read with pyarrow."""
    if not path.exists():
        raise ValueError(f"dataset path {str(path)!r} does not exist; expected a directory, "
                         "a .zip of images, a labels .csv, 'digits' or 'tfds:NAME'")
    path = Path(os.path.abspath(path))  # not resolve(): a symlink keeps its own name
    if path.is_file() and _is_table_name(path.name) and labels is None:
        labels, path = path, path.parent  # --dataset DIR/labels.csv
    bad: list[dict] = []
    if path.is_dir():
        keys, listing, texts, bad = _list_dir(path)
        reader, name = _DirReader(path), display_name(path)
        if not keys and labels is None:
            from .hf import hf_source

            found = hf_source(path, texts.get(TABLES, {}), label_column=label_column)
            if found is not None:
                return found
    elif zipfile.is_zipfile(path):
        keys, listing, texts = _list_zip(path)
        reader, name = _ZipReader(path), display_name(path)
    else:
        raise ValueError(f"{path}: not a directory or a zip file; expected a directory, "
                         "a .zip of images, a labels .csv, 'digits' or 'tfds:NAME'")
    if not keys:
        raise ValueError(f"{path}: no images found (looked for files ending in "
                         f"{', '.join(sorted(IMAGE_EXTENSIONS))})")
    tables = texts.pop(TABLES, {})
    labelled = _labelled(path, keys, tables, reader, labels, id_column, label_column)
    if labelled is not None:
        return _labelled_source(path, name, listing, labelled, reader, bad)
    try:
        layout, prefix, groups = _detect_layout(keys, path)
    except ValueError:  # a labels.csv that names no label column says more than the folder
        from .csv_labels import rejected

        why = rejected(keys, tables, reader.read, str(path), id_column, label_column)
        if why is None:
            raise
        raise why from None
    classes = sorted({c for items in groups.values() for _, c in items})
    warnings = _empty_class_folders(path, groups, set(classes)) if path.is_dir() else []
    classes = _class_order(classes, path, prefix, texts)
    index = {c: i for i, c in enumerate(classes)}
    src_groups = {g: ([k for k, _ in items], np.array([index[c] for _, c in items], np.int32))
                  for g, items in groups.items()}
    fingerprint = digest({"listing": listing, "classes": classes, "layout": layout,
                           "groups": {g: len(v[0]) for g, v in src_groups.items()}})
    return Source(name=name, source=str(path), fingerprint=fingerprint, classes=classes,
                   groups=src_groups, reader=reader, layout=layout, unlisted=bad,
                   warnings=warnings, files_readable=True)


# Label tables (bench.data.csv_labels) and Hugging Face files found while listing.
TABLES = "\0tables"
_TABLE_SUFFIXES = (".csv", ".jsonl", ".parquet", ".arrow")
_HF_FILES = ("dataset_info.json", "state.json", "dataset_dict.json")


def _is_table_name(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return not is_ignored(name) and (base.lower().endswith(_TABLE_SUFFIXES)
                                      or base in _HF_FILES)


def _labelled(path: Path, keys, tables, reader, labels, id_column, label_column):
    """The images labelled by a table (explicit or detected), or None."""
    from . import csv_labels

    explicit = None
    if labels is not None:
        table = Path(labels).expanduser()
        if not table.is_file() and path.is_dir() and (path / table).is_file():
            table = path / table
        if not table.is_file():
            raise ValueError(f"--labels {str(labels)!r}: no such file; expected a .csv (or "
                             ".jsonl) naming each image and its label")
        size = table.stat().st_size
        if size > csv_labels.MAX_TABLE_BYTES:
            raise ValueError(f"--labels {table}: {size:,} bytes; expected a label table of at "
                             f"most {csv_labels.MAX_TABLE_BYTES:,} bytes")
        table = Path(os.path.abspath(table))
        try:
            folder = table.parent.relative_to(path).as_posix() if path.is_dir() else ""
        except ValueError:  # a table outside the folder: ids relative to the folder
            folder = ""
        explicit = ("" if folder == "." else folder, str(table), table.read_bytes())
    return csv_labels.detect(keys, tables, reader.read, str(path), labels=explicit,
                             id_column=id_column, label_column=label_column)


def _labelled_source(path: Path, name: str, listing: str, lab, reader, bad) -> Source:
    classes = sorted({c for items in lab.groups.values() for _, c in items})
    if len(classes) < 2:
        where = ", ".join(lab.report)
        raise ValueError(f"{path}: {where} gives {len(classes)} class(es) "
                         f"{classes[:1]} to its matched images; expected at least two")
    index = {c: i for i, c in enumerate(classes)}
    groups = {g: ([k for k, _ in items], np.array([index[c] for _, c in items], np.int32))
              for g, items in lab.groups.items()}
    fingerprint = digest({"listing": listing, "classes": classes, "layout": lab.layout,
                          "tables": lab.digests,
                          "groups": {g: len(v[0]) for g, v in groups.items()}})
    return Source(name=name, source=str(path), fingerprint=fingerprint, classes=classes,
                  groups=groups, reader=reader, layout=lab.layout,
                  unlisted=list(bad) + lab.skipped, warnings=lab.warnings, labels=lab.report,
                  files_readable=True)


def _empty_class_folders(root: Path, groups, classes: set[str]) -> list[str]:
    """Folders beside the class folders that hold no image: classes dropped, said so."""
    parents = {Path(k).parent.parent for items in groups.values() for k, _ in items
               if len(Path(k).parts) >= 2}
    out = []
    for rel in sorted(parents):
        try:
            subdirs = [d for d in os.scandir(root / rel) if d.is_dir()]
        except OSError:
            continue
        for d in sorted(subdirs, key=lambda d: d.name):
            if d.name not in classes and not is_ignored(d.name):
                where = (rel / d.name).as_posix()
                out.append(f"folder {where!r} holds no images: not a class")
    return out


# Last path parts that say nothing about the data set: the folder above is named with them.
def peek_image_size(spec: str, n: int = 16) -> int | None:
    """The median shorter side of the first ``n`` images of ``spec`` (headers only), or None
    where it cannot be told cheaply (tfds)."""
    import io

    from PIL import Image

    if spec == "digits":
        return 8
    if spec.startswith("tfds:"):
        return None
    try:
        src = path_source(Path(spec).expanduser())
    except ValueError:
        return None
    keys = [k for ks, _ in src.groups.values() for k in ks[:n]][:n]
    sides = []
    for k in keys:
        try:
            with Image.open(io.BytesIO(src.reader.read(k))) as im:
                sides.append(min(im.size))
        except Exception:  # an unreadable file says nothing about the size
            continue
    return int(np.median(sides)) if sides else None


def _detect_layout(keys: list[str], where: Path):
    """-> (layout, wrapping prefix, {group: [(key, class name)]}); ValueError if unknown.

    Tries the root first, then looks through single wrapping folders; the first level that
    is a known layout with two or more classes wins.
    """
    parts = [tuple(k.split("/")) for k in keys]
    prefix: tuple[str, ...] = ()
    one_class = None
    first_problem = None
    while True:
        rel = [p[len(prefix):] for p in parts]
        found = _layout_at(rel)
        if isinstance(found, str):
            first_problem = first_problem or found
        else:
            layout, groups = found
            names = {c for items in groups.values() for _, c in items}
            if len(names) >= 2:
                full = {g: [(keys[i], c) for i, c in items] for g, items in groups.items()}
                return layout, prefix, full
            one_class = (layout, prefix, names.pop())  # the innermost one is reported
        tops = {p[0] for p in rel}
        if len(tops) == 1 and all(len(p) > 1 for p in rel):
            prefix += (tops.pop(),)
            continue
        break
    if one_class is not None:
        layout, pre, name = one_class
        at = f" (inside {'/'.join(pre)}/)" if pre else ""
        raise ValueError(f"{where}: only one class, {name!r}{at}, as {layout}; expected at "
                         "least two classes (one folder per class, or files named "
                         "'<class>.<n>.jpg')")
    raise ValueError(f"{where}: unknown layout: {first_problem}. Expected train/ and test/ "
                     "folders (optionally val/) of class folders, one folder per class, or "
                     "flat files named '<class>.<n>.<ext>'")


def _layout_at(rel: list[tuple[str, ...]]):
    """Layout of paths relative to one level: (layout, {group: [(index, class)]}) or why not."""
    depths = Counter(len(p) for p in rel)
    if len(depths) > 1:
        examples = {}
        for p in rel:
            examples.setdefault(len(p), "/".join(p))
        shown = ", ".join(f"{examples[d]!r} (depth {d})" for d in sorted(examples))
        return f"images at mixed depths, e.g. {shown}"
    depth = next(iter(depths))
    tops = {p[0] for p in rel}
    if depth == 3:
        if not tops <= set(SPLIT_FOLDERS):
            return (f"images three folders deep under {sorted(tops)[:5]}, which are not "
                    f"split folders ({', '.join(SPLIT_FOLDERS)})")
        named = {SPLIT_FOLDERS[t] for t in tops}
        if len(named) != len(tops):
            return f"two folders for the same split: {sorted(tops)}"
        if "train" not in named or named == {"train"}:
            return f"split folders {sorted(tops)} without both train/ and a test/ or val/"
        layout = "split folders"
        if "test" not in named:  # train + val only: the given val is the held-out test set
            named_as = {t: ("test" if SPLIT_FOLDERS[t] == "val" else "train") for t in tops}
            layout = "split folders (no test/: the given validation folder is the test split)"
        else:
            named_as = {t: SPLIT_FOLDERS[t] for t in tops}
        groups: dict[str, list] = {}
        for i, p in enumerate(rel):
            groups.setdefault(named_as[p[0]], []).append((i, p[1]))
        train_classes = {c for _, c in groups["train"]}
        for g, items in groups.items():
            extra = {c for _, c in items} - train_classes
            if extra:
                return f"{g} split has classes missing from train: {sorted(extra)[:5]}"
        return layout, groups
    if depth == 2:
        if tops <= set(SPLIT_FOLDERS) and len(tops) > 1:
            return (f"split folders {sorted(tops)} hold image files directly; expected one "
                    "folder per class inside each")
        return "class folders", {"all": [(i, p[0]) for i, p in enumerate(rel)]}
    if depth == 1:
        items = []
        for i, (name,) in enumerate(rel):
            m = _FLAT_NAME.match(name)
            if m is None:
                return (f"flat files, but {name!r} is not named '<class>.<n>.<ext>' "
                        "(label prefix, separator, number)")
            items.append((i, m["label"]))
        return "flat files, label from file-name prefix", {"all": items}
    return f"images {depth} folders deep, e.g. {'/'.join(rel[0])!r}"


def _class_order(classes: list[str], path: Path, prefix: tuple[str, ...],
                 texts: dict[str, str]) -> list[str]:
    """Sorted class names, or the order of a classes.txt at the (wrapped) root."""
    def parse(text: str) -> list[str]:
        return [line.strip() for line in text.splitlines() if line.strip()]

    for where in ("/".join(prefix + ("classes.txt",)), "classes.txt"):
        if where in texts:
            names = parse(texts[where])
            if sorted(names) != classes:
                missing = sorted(set(classes) - set(names))
                unknown = sorted(set(names) - set(classes))
                raise ValueError(f"{path}/{where}: class names do not match the class "
                                 f"folders (missing: {missing[:5]}, not found: {unknown[:5]})")
            return names
    sibling = path.parent / "classes.txt"
    if path.is_file() and sibling.is_file():
        names = parse(sibling.read_text("utf-8", "replace"))
        if sorted(names) == classes:  # only when it is clearly this zip's list
            return names
    return classes


# --------------------------------------------------------------------------------------------
# Sources: tensorflow-datasets.


class _TfdsReader:
    def __init__(self, sources: dict, image_key: str):
        self.sources = sources
        self.image_key = image_key

    def read(self, key: tuple[str, int]) -> np.ndarray:
        split, i = key
        return np.asarray(self.sources[split][i][self.image_key])

    def display(self, key: tuple[str, int]) -> str:
        return f"{key[0]}[{key[1]}]"


_TF_EXTRA = "pip install 'jax-image-bench[tf]'"


def _split_spec(text: str) -> list[str]:
    """Split on ':' outside brackets, so 'train[:80%]' stays one part."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == ":" and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return parts + [cur]


def tfds_source(spec: str, *, data_dir, download: bool) -> Source:
    parts = _split_spec(spec[len("tfds:"):])
    name, splits = parts[0], [s for s in parts[1:] if s]
    if splits and re.fullmatch(r"\d+\.\d+\.\d+", splits[0]):
        name, splits = f"{name}:{splits[0]}", splits[1:]
    if not name or len(splits) > 3:
        raise ValueError(f"{spec!r}: expected 'tfds:NAME[:VERSION][:SPLIT...]' with at most "
                         "three splits (train, val, test)")
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError(f"{spec!r} needs tensorflow-datasets ({e}): "
                          "pip install tensorflow-datasets array_record") from None
    data_dir = os.fspath(data_dir) if data_dir is not None else None
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        if not builder.is_prepared():
            if not download:
                raise ValueError(_not_prepared_message(spec, builder))
            builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
            builder.download_and_prepare()
    except tfds.core.registered.DatasetNotFoundError as e:
        raise ValueError(f"{spec!r}: no tensorflow-datasets builder {name!r} "
                         f"({str(e).splitlines()[0]})") from None
    except ModuleNotFoundError as e:
        if _needs_tensorflow(e):
            raise ImportError(f"{spec!r}: the {name!r} builder needs TensorFlow to prepare "
                              f"the data set; install the [tf] extra: {_TF_EXTRA}") from None
        raise
    file_format = str(getattr(builder.info, "file_format", "") or "")
    if "array_record" not in file_format.lower():
        raise ValueError(
            f"{spec!r} is prepared in {builder.data_dir} as {file_format or 'tfrecord'}, "
            "which needs TensorFlow to read; prepare it as ArrayRecord instead "
            f"(`tfds build {name} --file_format=array_record`, or delete it and pass "
            "download=True / --download)")
    available = list(builder.info.splits)
    if not splits:
        by_role = {SPLIT_FOLDERS.get(s): s for s in available if s in SPLIT_FOLDERS}
        if "train" not in by_role:
            raise ValueError(f"{spec!r}: no 'train' split (has {available}); name the splits "
                             f"to use, e.g. 'tfds:{name}:{available[0] if available else 'all'}'")
        roles = [r for r in ("train", "val", "test") if r in by_role]
        if roles == ["train", "val"]:
            roles = ["train", "test"]  # the given validation split is the held-out set
            by_role = {"train": by_role["train"], "test": by_role["val"]}
        chosen = {r: by_role[r] for r in roles}
    else:
        roles = {1: ["all"], 2: ["train", "test"], 3: ["train", "val", "test"]}[len(splits)]
        chosen = dict(zip(roles, splits))
    if list(chosen) == ["train"]:
        chosen = {"all": chosen["train"]}
    image_key, label_key = _supervised_keys(builder)
    label_feature = builder.info.features[label_key]
    try:
        sources = {g: builder.as_data_source(split=s) for g, s in chosen.items()}
    except ModuleNotFoundError as e:
        if _needs_tensorflow(e):
            raise ImportError(f"{spec!r}: reading it needs TensorFlow; install the [tf] "
                              f"extra: {_TF_EXTRA}") from None
        raise
    groups = {}
    for g, split in chosen.items():
        # Labels first, without decoding the images (those are decoded once, below).
        ds = builder.as_data_source(split=split, decoders={image_key: tfds.decode.SkipDecoding()})
        n = len(ds)
        labels = np.empty(n, np.int32)
        for start in range(0, n, 4096):
            batch = ds.__getitems__(list(range(start, min(start + 4096, n))))
            labels[start:start + len(batch)] = [int(r[label_key]) for r in batch]
        groups[g] = ([(g, i) for i in range(n)], labels)
    names = getattr(label_feature, "names", None)
    if not names:
        top = max((int(v[1].max(initial=-1)) for v in groups.values()), default=-1)
        names = [str(i) for i in range(top + 1)]
    fingerprint = digest({
        "tfds": builder.info.full_name, "splits": chosen,
        "sizes": {g: len(v[1]) for g, v in groups.items()},
        "files": _dir_listing_digest(Path(os.fspath(builder.data_dir))),
    })
    return Source(name=f"tfds:{name}", source=f"{spec} ({builder.data_dir})",
                   fingerprint=fingerprint, classes=list(names),
                   groups={g: (v[0], v[1]) for g, v in groups.items()},
                   reader=_TfdsReader(sources, image_key), layout="tfds",
                   parallel=False)


def _needs_tensorflow(e: ModuleNotFoundError) -> bool:
    # tfds re-raises with its own prefix and drops ``e.name``, so read the message too.
    return (e.name or "").split(".")[0] in ("tensorflow", "tensorflow_io") or bool(
        re.search(r"No module named '?tensorflow", str(e)))


def _supervised_keys(builder) -> tuple[str, str]:
    keys = builder.info.supervised_keys
    if isinstance(keys, tuple) and len(keys) == 2 and all(isinstance(k, str) for k in keys):
        return keys
    features = builder.info.features
    if "image" in features and "label" in features:
        return "image", "label"
    raise ValueError(f"tfds {builder.info.full_name!r}: no (image, label) supervised keys; "
                     f"features are {list(features)}")


def _not_prepared_message(spec: str, builder) -> str:
    try:
        infos = dict(builder.url_infos or {})
    except Exception:  # builders without a checksums file
        infos = {}
    urls = list(infos)
    sizes = [getattr(u, "size", None) for u in infos.values()]
    total = sum(sizes) if urls and all(sizes) else None
    what = (f"{len(urls)} file(s)" + (f", {total / 1e6:.0f} MB" if total else "")
            + (f" from {urls[0].split('/')[2]}" if urls else "")) if urls else "its source files"
    return (f"{spec!r} is not prepared in {builder.data_dir}. Preparing it downloads {what} "
            f"(see {builder.info.homepage or 'the tensorflow-datasets catalog'}) and writes "
            "ArrayRecord files there; allow it with download=True (CLI: --download), or pass "
            "the data_dir where it is already prepared")


def _dir_listing_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Small helpers.

