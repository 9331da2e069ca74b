"""``bench compare A B``: what changed between two result files, regressions flagged.

Three kinds of file, told apart by their content: ``speed.json`` from ``bench speed``
(img/s per model, framework and precision), pytest-benchmark ``--benchmark-json`` output
(median seconds per test) and ``summary.csv`` from ``bench report`` (accuracy, log-loss and
img/s per run). ``change`` is relative, ``(b - a) / |a|``; a change in the worse direction
(lower throughput or accuracy, higher time or loss) beyond ``threshold`` is a regression.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from runtime import io as bio

from . import schema

# metric -> True when higher is better: the schema's columns with a direction
# (``Column.better``).
SPEED_METRICS = schema.metrics(schema.SPEED_HTML)
PYTEST_BENCHMARK_METRICS = schema.metrics(schema.PYTEST_BENCHMARK)
SUMMARY_METRICS = schema.metrics(schema.SUMMARY_CSV)


def read_metrics(path: str | Path) -> tuple[str, dict[str, dict[str, float]], dict]:
    """``(kind, {key: {metric: value}}, higher_is_better)`` for a speed.json, a
    pytest-benchmark JSON or a summary.csv file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".csv":
        return "summary", _read_summary(path), SUMMARY_METRICS
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: neither a summary.csv nor valid JSON ({e})") from None
    if isinstance(data, dict) and isinstance(data.get("benchmarks"), list):
        out = {}
        for b in data["benchmarks"]:
            out[_unique(b.get("fullname") or b["name"], out)] = {
                "median_s": b["stats"]["median"]}
        return "pytest-benchmark", out, PYTEST_BENCHMARK_METRICS
    if isinstance(data, dict) and isinstance(data.get("rows"), list):
        out = {}
        for r in data["rows"]:
            key = f"{r['model']} [{r.get('framework', 'jax')}, {r.get('precision', 'fp32')}, " \
                  f"{r.get('image_size')}px]"
            out[_unique(key, out)] = {m: r.get(m) for m in SPEED_METRICS}
        return "speed", out, SPEED_METRICS
    raise ValueError(f"{path}: not a bench speed.json (a 'rows' list) nor a pytest-benchmark "
                     "JSON file (a 'benchmarks' list)")


def _read_summary(path: Path) -> dict[str, dict[str, float]]:
    """Rows keyed by ``tag [dataset] run_id`` (run ids are unique per config; two runs of
    one model on one data set stay two rows). A row without a run id, or a repeated key,
    gets a ``#2``, ``#3`` suffix: no row is dropped."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "accuracy" not in reader.fieldnames:
            raise ValueError(f"{path}: not a bench summary.csv (no 'accuracy' column); "
                             f"columns are {reader.fieldnames}")
        out = {}
        for r in reader:
            key = f"{r.get('tag') or r.get('model')} [{r.get('dataset')}]"
            if r.get("run_id"):
                key += f" {r['run_id']}"
            out[_unique(key, out)] = {m: _number(r.get(m)) for m in SUMMARY_METRICS}
    return out


def _unique(key: str, taken) -> str:
    """``key``, or ``key #2``, ``#3``... when taken: rows are never dropped silently."""
    base, n = key, 1
    while key in taken:
        n += 1
        key = f"{base} #{n}"
    return key


def _number(v) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def compare_files(a: str | Path, b: str | Path, threshold: float = 0.05) -> list[dict]:
    """Per key (model or run) and metric: ``a``, ``b``, relative ``change`` and ``status``
    (``regression``, ``improvement``, ``same``, ``only in a``, ``only in b``)."""
    kind_a, ma, better = read_metrics(a)
    kind_b, mb, _ = read_metrics(b)
    if kind_a != kind_b:
        raise ValueError(f"cannot compare a {kind_a} file ({a}) with a {kind_b} file ({b})")
    if threshold < 0:
        raise ValueError(f"threshold {threshold}: expected a fraction >= 0, e.g. 0.05")
    rows = []
    for key in list(ma) + [k for k in mb if k not in ma]:
        for metric, higher in better.items():
            va = (ma.get(key) or {}).get(metric)
            vb = (mb.get(key) or {}).get(metric)
            if va is None and vb is None:
                continue
            row = {"key": key, "metric": metric, "a": va, "b": vb, "change": None}
            if va is None or vb is None:
                row["status"] = "only in a" if vb is None else "only in b"
            else:
                change = (vb - va) / abs(va) if va else (0.0 if vb == va else math.inf)
                worse = -change if higher else change
                row["change"] = change
                row["status"] = ("regression" if worse > threshold else
                                 "improvement" if worse < -threshold else "same")
            rows.append(row)
    return rows


def regressions(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["status"] == "regression"]


def compare_table(rows: list[dict]) -> str:
    """A plain-text table of ``compare_files`` rows; regressions marked with ``!!``."""
    cells = [("", "key", "metric", "a", "b", "change", "status")]
    for r in rows:
        change = "" if r["change"] is None else f"{100 * r['change']:+.1f}%"
        cells.append(("!!" if r["status"] == "regression" else "", r["key"], r["metric"],
                      _fmt(r["metric"], r["a"]), _fmt(r["metric"], r["b"]), change,
                      r["status"]))
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "-" * len(lines[0]))
    n = len(regressions(rows))
    lines.append(f"\n{n} regression(s) among {len(rows)} comparisons")
    return "\n".join(lines)


def _fmt(metric: str, v) -> str:
    """The schema's formatter for a run or speed metric; otherwise 4 significant digits."""
    if v is None:
        return "-"
    if metric in schema.COLUMNS and not (isinstance(v, float) and math.isinf(v)):
        return schema.fmt(metric, v, grouped=True) or "-"
    if abs(v) >= 100:
        return f"{v:,.1f}"
    return f"{v:.4g}"


def write_compare(rows: list[dict], path: str | Path) -> None:
    """Save the rows as JSON (for CI artefacts)."""
    bio.write_json(path, {"rows": rows, "regressions": len(regressions(rows))})
