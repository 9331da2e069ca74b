"""CSV-labelled folders: a table (``labels.csv``, ``train.csv``, a Hugging Face ``imagefolder``
``metadata.csv``/``metadata.jsonl``) that names each image and its label.

Ids match an image with or without its extension, relative to the table's folder or to an
``images/``, ``train/`` or ``train_images/`` folder beside it (or by a file name that is
unique below those). Rows whose image is missing, images without a row, duplicate ids and
conflicting labels are counted, warned about and recorded, never fatal; a table with no id
or label column, a header without rows, or several labels in one cell is a one-line
ValueError naming the file and what was expected.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import re
from collections import Counter
from pathlib import PurePosixPath

ID_COLUMNS = ("id", "image_id", "image", "file", "filename", "file_name", "path")
LABEL_COLUMNS = ("label", "class", "category", "target", "breed", "species")
TABLE_NAMES = ("labels.csv", "train.csv", "train_labels.csv", "metadata.csv")
METADATA_NAMES = ("metadata.csv", "metadata.jsonl")   # Hugging Face imagefolder, per split
IMAGE_DIRS = ("images", "train", "train_images")       # where ids are looked up, beside it
MAX_TABLE_BYTES = 256 * 2**20                          # checked before a table is read
_MULTI_SEPARATORS = re.compile(r"[|;,]")
_EXAMPLES = 20                                         # per kind, kept in the record


@dataclasses.dataclass
class LabelTable:
    """One table read: its id and label columns and its rows ``(line, id, label)``."""

    where: str                 # the file, as shown in messages
    folder: str                # its folder relative to the data set root ('' = the root)
    id_column: str
    label_column: str
    rows: list[tuple[int, str, str]]
    digest: str                # sha256 of the file's bytes
    unlabelled_rows: int = 0   # rows with an empty label cell


def _columns(header: list[str], where: str, id_column, label_column):
    """-> (id column, label column) from the header; ValueError naming what was expected."""
    lower = {h.strip().lower(): h for h in header}

    def pick(given, names, what, flag):
        if given is not None:
            if given not in header and given.lower() not in lower:
                raise ValueError(f"{where}: no column {given!r} ({flag}); columns are "
                                 f"{header}")
            return given if given in header else lower[given.lower()]
        for n in names:
            if n in lower:
                return lower[n]
        raise ValueError(f"{where}: no {what} column; expected one of {', '.join(names)} "
                         f"(or name it with {flag}); columns are {header}")

    return (pick(id_column, ID_COLUMNS, "id/file", "--id-column"),
            pick(label_column, LABEL_COLUMNS, "label", "--label-column"))


def qualifies(data: bytes, where: str, id_column=None, label_column=None) -> bool:
    """Whether a table's header has an id and a label column (auto-detection)."""
    try:
        header = _header(data, where)
        _columns(header, where, id_column, label_column)
        return True
    except (ValueError, csv.Error):
        return False


def _text(data: bytes, where: str) -> str:
    if len(data) > MAX_TABLE_BYTES:
        raise ValueError(f"{where}: {len(data):,} bytes; expected a label table of at most "
                         f"{MAX_TABLE_BYTES:,} bytes")
    return data.decode("utf-8-sig", "replace")


def _is_jsonl(where: str) -> bool:
    return where.lower().endswith((".jsonl", ".json"))


def _header(data: bytes, where: str) -> list[str]:
    if _is_jsonl(where):
        for line in _text(data[:1 << 20], where).splitlines():
            if line.strip():
                try:
                    obj = json.loads(line)
                except ValueError:
                    return []
                return list(obj) if isinstance(obj, dict) else []
        return []
    first = _text(data[:1 << 16], where).splitlines()[:1]
    if not first:
        return []
    return next(csv.reader([first[0]], dialect=_dialect(first[0])), [])


def _dialect(line: str):
    """Comma, semicolon or tab: whichever the header line uses most."""
    delim = max(",;\t", key=line.count)

    class D(csv.excel):
        delimiter = delim if line.count(delim) else ","
    return D


def read_table(data: bytes, where: str, folder: str, id_column=None,
               label_column=None) -> LabelTable:
    """Parse a CSV (or JSON-lines) label table; ValueError for what no run can use."""
    try:
        return _read_table(data, where, folder, id_column, label_column)
    except csv.Error as e:  # a malformed line, or a field over csv's size limit
        raise ValueError(f"{where}: not a readable CSV ({e}); expected a header with an id "
                         "and a label column, then one row per image") from None


def _read_table(data: bytes, where: str, folder: str, id_column, label_column) -> LabelTable:
    """read_table's work, csv.Error left to it."""
    text = _text(data, where)
    if _is_jsonl(where):
        header, records = _jsonl_records(text, where)
    else:
        lines = text.splitlines()
        if not lines or not lines[0].strip():
            raise ValueError(f"{where}: empty; expected a header line with an id and a label "
                             "column, then one row per image")
        reader = csv.reader(io.StringIO(text), dialect=_dialect(lines[0]))
        header = [h.strip() for h in next(reader)]
        records = ((reader.line_num, row) for row in reader)
    idc, labc = _columns(header, where, id_column, label_column)
    i, j = header.index(idc), header.index(labc)
    rows, blank = [], 0
    for line, row in records:
        if not any(str(c).strip() for c in row):
            continue
        key = str(row[i]).strip() if i < len(row) else ""
        label = row[j] if j < len(row) else ""
        if isinstance(label, (list, tuple)):
            raise _multi(where, labc, line, label)
        label = str(label).strip()
        if not label:
            blank += 1
            continue
        rows.append((line, key, label))
    if not rows and not blank:
        raise ValueError(f"{where}: a header ({', '.join(header)}) but no rows; expected one "
                         f"row per image ({idc}, {labc})")
    _check_single_label(rows, where, labc)
    return LabelTable(where=where, folder=folder, id_column=idc, label_column=labc, rows=rows,
                      digest=hashlib.sha256(data).hexdigest(), unlabelled_rows=blank)


def _jsonl_records(text: str, where: str):
    """-> (columns in first-seen order, [(line, row values in that order)])."""
    objs = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise ValueError(f"{where}: line {n} is not JSON ({e}); expected one object a "
                             "line") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: line {n} is not a JSON object")
        objs.append((n, obj))
    if not objs:
        raise ValueError(f"{where}: no rows; expected one JSON object per image")
    header = list(dict.fromkeys(k for _, o in objs for k in o))
    return header, [(n, [o.get(k, "") for k in header]) for n, o in objs]


def _multi(where, column, line, cell):
    return ValueError(f"{where}: line {line}: {column} {cell!r} holds several labels; "
                      "expected one class per image (multi-label data is not supported)")


def _check_single_label(rows, where: str, column: str) -> None:
    """Several labels in one cell ('a|b', 'a;b', 'a,b', or space-separated tags that are
    labels elsewhere) is multi-label data."""
    values = Counter(label for _, _, label in rows)
    for line, _, label in rows:
        if _MULTI_SEPARATORS.search(label) and len(
                [p for p in _MULTI_SEPARATORS.split(label) if p.strip()]) > 1:
            raise _multi(where, column, line, label)
    spaced = [(line, label) for line, _, label in rows if " " in label]
    if not spaced:
        return
    tokens = {t for _, label in spaced for t in label.split()}
    for line, label in spaced:
        parts = label.split()
        if all(p in values for p in parts):
            raise _multi(where, column, line, label)
    distinct = {label for _, label in spaced}
    if len(distinct) > 2 and len(tokens) < len(distinct):  # few tags in many combinations
        line, label = spaced[0]
        raise _multi(where, column, line, label)


# --------------------------------------------------------------------------------------------
# Matching ids to image files.


def _stem(path: str) -> str:
    p = PurePosixPath(path)
    return str(p.with_suffix("")) if p.suffix else path


def _norm_id(value: str) -> str:
    v = value.strip().replace("\\", "/")
    while v.startswith("./"):
        v = v[2:]
    return v.lstrip("/")


class _Index:
    """Image keys by path relative to each base folder, with and without the extension,
    and by unique file name below them."""

    def __init__(self, keys: list[str], bases: list[str]):
        self.exact: dict[str, str] = {}
        stems: dict[str, set] = {}
        names: dict[str, set] = {}
        for base in bases:
            pre = f"{base}/" if base else ""
            for k in keys:
                if not k.startswith(pre):
                    continue
                rel = k[len(pre):]
                self.exact.setdefault(rel, k)
                stems.setdefault(_stem(rel), set()).add(k)
                name = rel.rsplit("/", 1)[-1]
                names.setdefault(name, set()).add(k)
                names.setdefault(_stem(name), set()).add(k)
        self.stems = {s: ks for s, ks in stems.items()}
        self.names = names

    def find(self, value: str) -> tuple[str | None, str | None]:
        """-> (key, None) or (None, why not)."""
        v = _norm_id(value)
        if v in self.exact:
            return self.exact[v], None
        for cand in (v, _stem(v)):
            ks = self.stems.get(cand)
            if ks:
                return (next(iter(ks)), None) if len(ks) == 1 else (
                    None, f"ambiguous: {sorted(ks)[:3]}")
        ks = self.names.get(v) or self.names.get(_stem(v))
        if ks:
            return (next(iter(ks)), None) if len(ks) == 1 else (
                None, f"ambiguous: {sorted(ks)[:3]}")
        return None, None


def match(table: LabelTable, keys: list[str], *, beside: bool = True):
    """Rows -> image keys. Returns ``(items, report, warnings, conflicts)``: ``items``
    [(key, label)] sorted by key; ``report`` the counts and examples for the record;
    ``conflicts`` skipped-image records (an id given two labels: the image is left out)."""
    base = table.folder
    bases = [base] + ([f"{base}/{d}" if base else d for d in IMAGE_DIRS] if beside else [])
    index = _Index(keys, bases)
    labels: dict[str, set] = {}
    first_row: dict[str, tuple[int, str]] = {}
    missing, duplicates = [], 0
    for line, value, label in table.rows:
        key, why = index.find(value)
        if key is None:
            missing.append({"line": line, "id": value, **({"why": why} if why else {})})
            continue
        if key in labels:
            duplicates += label in labels[key]
        labels.setdefault(key, set()).add(label)
        first_row.setdefault(key, (line, value))
    conflicts = {k: sorted(v) for k, v in labels.items() if len(v) > 1}
    items = sorted((k, next(iter(v))) for k, v in labels.items() if len(v) == 1)
    used_dirs = {k.rsplit("/", 1)[0] if "/" in k else "" for k in labels}
    unlabelled = sorted(k for k in keys if k not in labels
                        and (k.rsplit("/", 1)[0] if "/" in k else "") in used_dirs)
    elsewhere = len(keys) - len(labels) - len(unlabelled)
    report = {
        "table": table.where, "id_column": table.id_column,
        "label_column": table.label_column, "rows": len(table.rows),
        "matched_images": len(items),
        "missing_images": len(missing), "missing_examples": missing[:_EXAMPLES],
        "unlabelled_images": len(unlabelled), "unlabelled_examples": unlabelled[:_EXAMPLES],
        "duplicate_rows": duplicates, "conflicting_ids": len(conflicts),
        "conflict_examples": [{"path": k, "labels": v} for k, v in
                              list(sorted(conflicts.items()))[:_EXAMPLES]],
        "rows_without_label": table.unlabelled_rows, "images_elsewhere": elsewhere,
    }
    warnings = _warnings(report, table, elsewhere)
    skipped = [{"path": k, "reason": f"conflicting labels {v} in {table.where} "
                f"(line {first_row[k][0]}, id {first_row[k][1]!r}): left out"}
               for k, v in sorted(conflicts.items())]
    return items, report, warnings, skipped


def _warnings(r: dict, table: LabelTable, elsewhere: int) -> list[str]:
    w, t = [], table.where
    if r["missing_images"]:
        ex = r["missing_examples"][0]
        w.append(f"{t}: {r['missing_images']} row(s) name no image (e.g. line {ex['line']}, "
                 f"{table.id_column} {ex['id']!r}{'; ' + ex['why'] if 'why' in ex else ''})")
    if r["unlabelled_images"]:
        w.append(f"{t}: {r['unlabelled_images']} image(s) have no row, not used (e.g. "
                 f"{r['unlabelled_examples'][0]!r})")
    if r["duplicate_rows"]:
        w.append(f"{t}: {r['duplicate_rows']} duplicate row(s) (same id, same label), "
                 "counted once")
    if r["conflicting_ids"]:
        ex = r["conflict_examples"][0]
        w.append(f"{t}: {r['conflicting_ids']} image(s) given different labels, left out "
                 f"(e.g. {ex['path']!r}: {ex['labels']})")
    if r["rows_without_label"]:
        w.append(f"{t}: {r['rows_without_label']} row(s) with an empty {table.label_column}, "
                 "not used")
    if elsewhere:
        w.append(f"{t}: {elsewhere} image(s) outside the labelled folders, not used")
    return w


# --------------------------------------------------------------------------------------------
# Detection: which table labels a listing, and the groups it gives.


@dataclasses.dataclass
class Labelled:
    """A listing labelled by one or more tables."""

    layout: str
    groups: dict[str, list[tuple[str, str]]]   # 'all' or train/val/test -> [(key, label)]
    report: dict                               # per table: counts and examples
    warnings: list[str]
    skipped: list[dict]                        # images left out (conflicting labels)
    digests: dict[str, str]                    # table -> sha256, for the fingerprint


def _wrapping(keys: list[str]) -> str:
    """The single folder every image is inside, or ''."""
    tops = {k.split("/", 1)[0] for k in keys}
    return tops.pop() if len(tops) == 1 and all("/" in k for k in keys) else ""


def _root_tables(tables, folder: str) -> list[str]:
    pre = f"{folder}/" if folder else ""
    return sorted(t for t in tables if t.startswith(pre) and "/" not in t[len(pre):]
                  and t[len(pre):].lower() in TABLE_NAMES)


def detect(keys: list[str], tables: dict[str, int], read, where: str, *, labels=None,
           id_column=None, label_column=None) -> Labelled | None:
    """The labelling of ``keys`` (image paths below ``where``) by a table, or None.

    ``tables``: table files found in the listing (relative path -> size); ``read(rel)`` ->
    bytes. ``labels``: an explicit table as ``(folder relative to where, shown name, bytes)``.
    """
    if labels is not None:
        folder, shown, data = labels
        table = read_table(data, shown, folder, id_column, label_column)
        return _one_table(table, keys)
    for folder in dict.fromkeys(("", _wrapping(keys))):
        found = [t for t in _root_tables(tables, folder)
                 if _size_ok(t, tables, where) and _is_label_table(read(t), f"{where}/{t}",
                                                                   id_column, label_column)]
        if len(found) > 1:
            raise ValueError(f"{where}: several label tables qualify ({', '.join(found)}); "
                             "name one with --labels FILE")
        if found:
            table = read_table(read(found[0]), f"{where}/{found[0]}", folder, id_column,
                               label_column)
            return _one_table(table, keys)
        split = _imagefolder(keys, tables, read, where, folder, id_column, label_column)
        if split is not None:
            return split
    return None


# A table by one of these names that names images (an id column) but has no label column is
# an error, not a table to ignore: it was meant to label them. A metadata.csv without labels
# leaves the folder's own layout in force (as Hugging Face's imagefolder does).
_MEANT_AS_LABELS = ("labels.csv", "train.csv", "train_labels.csv")


def _is_label_table(data: bytes, where: str, id_column, label_column) -> bool:
    """Whether a table found by name labels the images; ValueError where it was meant to
    and cannot."""
    if qualifies(data, where, id_column, label_column):
        return True
    name = where.replace("\\", "/").rsplit("/", 1)[-1].lower()
    try:
        header = _header(data, where)
    except csv.Error:
        header = []
    has_id = header and (id_column in header if id_column else any(
        h.strip().lower() in ID_COLUMNS for h in header))
    if name in _MEANT_AS_LABELS and has_id:
        read_table(data, where, "", id_column, label_column)  # raises: no label column
    return False


def rejected(keys: list[str], tables: dict[str, int], read, where: str, id_column=None,
             label_column=None) -> ValueError | None:
    """Why a label table by name (``labels.csv``, ...) beside the images does not label them:
    the error to give when the folder is no other layout either."""
    for folder in dict.fromkeys(("", _wrapping(keys))):
        for t in _root_tables(tables, folder):
            try:
                _size_ok(t, tables, where)
                read_table(read(t), f"{where}/{t}", folder, id_column, label_column)
            except ValueError as e:
                return e
    return None


def _size_ok(rel: str, tables: dict[str, int], where: str) -> bool:
    if tables[rel] > MAX_TABLE_BYTES:
        raise ValueError(f"{where}/{rel}: {tables[rel]:,} bytes; expected a label table of "
                         f"at most {MAX_TABLE_BYTES:,} bytes")
    return True


def _one_table(table: LabelTable, keys: list[str]) -> Labelled:
    items, report, warnings, skipped = match(table, keys)
    name = table.where.replace("\\", "/").rsplit("/", 1)[-1]
    layout = f"CSV labels ({name}: {table.id_column} -> {table.label_column})"
    return Labelled(layout=layout, groups={"all": items}, report={name: report},
                    warnings=warnings, skipped=skipped, digests={table.where: table.digest})


def _imagefolder(keys, tables, read, where, folder, id_column, label_column):
    """Hugging Face ``imagefolder``: a metadata.csv/.jsonl in each split folder."""
    from .base import SPLIT_FOLDERS

    pre = f"{folder}/" if folder else ""
    per_split: dict[str, str] = {}
    for t in sorted(tables):
        parts = t[len(pre):].split("/") if t.startswith(pre) else []
        if len(parts) == 2 and parts[0].lower() in SPLIT_FOLDERS and \
                parts[1].lower() in METADATA_NAMES:
            per_split.setdefault(parts[0], t)  # metadata.csv before metadata.jsonl
    if not any(SPLIT_FOLDERS[s.lower()] == "train" for s in per_split):
        return None
    groups, report, warnings, skipped, digests = {}, {}, [], [], {}
    for split, rel in per_split.items():
        _size_ok(rel, tables, where)
        data, role = read(rel), SPLIT_FOLDERS[split.lower()]
        if role in groups:
            raise ValueError(f"{where}: two folders for the {role} split ({rel})")
        if not qualifies(data, rel, id_column, label_column):
            n = sum(k.startswith(f"{pre}{split}/") for k in keys)
            warnings.append(f"{where}/{rel}: no label column; its {n} image(s) not used")
            continue
        table = read_table(data, f"{where}/{rel}", f"{pre}{split}", id_column, label_column)
        own = [k for k in keys if k.startswith(f"{pre}{split}/")]
        items, rep, warn, skip = match(table, own, beside=False)
        groups[role], report[rel], digests[rel] = items, rep, table.digest
        warnings += warn
        skipped += skip
    if set(groups) == {"train"}:
        groups = {"all": groups["train"]}
    elif "test" not in groups:   # train + validation: the given validation is the test set
        groups = {"train": groups["train"], "test": groups["val"]}
    layout = f"Hugging Face imagefolder ({', '.join(sorted(report))})"
    return Labelled(layout=layout, groups=groups, report=report, warnings=warnings,
                    skipped=skipped, digests=digests)
