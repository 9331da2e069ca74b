"""Submissions in a competition's own format: ``bench predict --template sample_submission.csv``.

The template's header, id column and row order are kept; its other columns are filled:

* one column per class (the header names the classes; exact, case-insensitive, or with
  spaces, ``-`` and ``_`` alike): the class probabilities, for log-loss competitions
  (Dog Breed: ``id,affenpinscher,...``);
* one column named like a class: that class's probability;
* one other column of a two-class model whose template values are numbers (Dogs vs. Cats'
  ``id,label``, Histopathologic Cancer's ``id,label``): the second class's probability, as
  ``--format kaggle`` writes it;
* otherwise one column: the predicted class name (Cassava's ``image_id,label``).

Ids match test images by file name with or without the extension, or by path relative to the
folder given. An id with no image is an error that names it; an image that cannot be read
keeps the template's own values for its row, and is said on stderr.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import re
from pathlib import Path

from .data.csv_labels import ID_COLUMNS, MAX_TABLE_BYTES


@dataclasses.dataclass
class Template:
    path: Path
    header: list[str]
    id_index: int
    rows: list[list[str]]
    lines: list[int]
    dialect: type

    @property
    def id_column(self) -> str:
        return self.header[self.id_index]

    @property
    def value_columns(self) -> list[int]:
        return [i for i in range(len(self.header)) if i != self.id_index]


def read_template(path) -> Template:
    """The template's header, id column and rows; ValueError naming what was expected."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--template {path}: no such file")
    size = path.stat().st_size
    if size > MAX_TABLE_BYTES:
        raise ValueError(f"--template {path}: {size:,} bytes; expected a CSV of at most "
                         f"{MAX_TABLE_BYTES:,} bytes")
    text = path.read_bytes().decode("utf-8-sig", "replace")
    first = text.splitlines()[:1]
    if not first or not first[0].strip():
        raise ValueError(f"--template {path}: empty; expected a header (an id column and "
                         "the columns to fill) and one row per test image")
    delim = max(",;\t", key=first[0].count)

    class Dialect(csv.excel):
        delimiter = delim if first[0].count(delim) else ","

    reader = csv.reader(io.StringIO(text), dialect=Dialect)
    header = next(reader)
    rows, lines = [], []
    for row in reader:
        if any(c.strip() for c in row):
            rows.append(row + [""] * (len(header) - len(row)))
            lines.append(reader.line_num)
    if len(header) < 2:
        raise ValueError(f"--template {path}: columns {header}; expected an id column and at "
                         "least one column to fill")
    if not rows:
        raise ValueError(f"--template {path}: a header ({', '.join(header)}) but no rows; "
                         "expected one row per test image")
    lower = [h.strip().lower() for h in header]
    id_index = next((lower.index(n) for n in ID_COLUMNS if n in lower), 0)
    return Template(path, header, id_index, rows, lines, Dialect)


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


def plan_columns(t: Template, classes: list[str]) -> tuple[str, dict[int, int]]:
    """-> (how, {template column: class index}); how is 'proba' or 'label'."""
    cols = t.value_columns
    exact = {c: i for i, c in enumerate(classes)}
    folded = {c.lower(): i for i, c in enumerate(classes)}
    normed = {_norm(c): i for i, c in enumerate(classes)}

    def find(name):
        n = name.strip()
        return exact.get(n, folded.get(n.lower(), normed.get(_norm(n))))

    if len(cols) == 1:
        (c,) = cols
        k = find(t.header[c])
        if k is not None and len(classes) > 1:
            return "proba", {c: k}
        if len(classes) == 2 and all(_is_number(r[c]) for r in t.rows if r[c].strip()) \
                and any(r[c].strip() for r in t.rows):
            return "proba", {c: 1}   # --format kaggle: the positive (second) class
        return "label", {c: -1}
    mapping = {c: find(t.header[c]) for c in cols}
    unknown = [t.header[c] for c, k in mapping.items() if k is None]
    missing = sorted(set(classes) - {classes[k] for k in mapping.values() if k is not None})
    if unknown or missing:
        raise ValueError(f"--template {t.path}: columns {unknown[:5]} name no class of this "
                         f"model and classes {missing[:5]} have no column; expected one "
                         f"column per class ({', '.join(classes[:5])}"
                         f"{', ...' if len(classes) > 5 else ''})")
    return "proba", mapping


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def match_ids(t: Template, files: list[Path], inputs) -> list[Path]:
    """The test image of every template row, in template order; ValueError naming the first
    id without one."""
    roots = [Path(p) for p in inputs if Path(p).is_dir()]
    index: dict[str, set] = {}
    for f in files:
        names = {f.name, f.stem}
        for r in roots:
            if f.is_relative_to(r):
                rel = f.relative_to(r).as_posix()
                names |= {rel, str(Path(rel).with_suffix(""))}
        for n in names:
            index.setdefault(n, set()).add(f)
    out, missing = [], []
    for row, line in zip(t.rows, t.lines):
        value = row[t.id_index].strip().replace("\\", "/")
        found = index.get(value) or index.get(str(Path(value).with_suffix("")))
        if not found or len(found) > 1:
            missing.append((line, value, sorted(found or ())))
            continue
        out.append(next(iter(found)))
    if missing:
        line, value, many = missing[0]
        why = (f"matches several images ({', '.join(map(str, many[:2]))})" if many
               else "has no image")
        raise ValueError(f"--template {t.path}: {t.id_column} {value!r} (line {line}) {why} "
                         f"in {', '.join(map(str, inputs))}"
                         + (f" (and {len(missing) - 1} more ids)" if len(missing) > 1 else ""))
    return out


def render(t: Template, how: str, mapping: dict[int, int], proba_by_row: list, classes) -> str:
    """The submission text: the template's rows, filled where a row has probabilities."""
    buf = io.StringIO()
    w = csv.writer(buf, dialect=t.dialect, lineterminator="\n")
    w.writerow(t.header)
    for row, p in zip(t.rows, proba_by_row):
        row = list(row[:len(t.header)])
        if p is not None:
            for c, k in mapping.items():
                row[c] = classes[int(p.argmax())] if how == "label" else f"{float(p[k]):.6g}"
        w.writerow(row)
    return buf.getvalue()
