"""The run record's one schema: its fields, the table columns built from them, the
formatters, and the migration of older records.

Every reader of run records goes through here: ``bench.report.tables`` (summary.csv and
summary.md), ``bench.report.html`` (report.html), ``bench.report.compare`` (which metrics
are compared, and which direction is better), the seeds suite's tables, ``bench ensemble``'s
and ``bench group``'s markdown. Renaming a metric, changing how it prints or adding a column
is one edit, here.

* ``FIELDS``: the record's fields (``Field``: name, type, unit, description).
* ``COLUMNS``: every table column by key (``Column``: key, header, formatter, better).
  A table is a tuple of columns (``SUMMARY_CSV``, ``SUMMARY_MD``, ``SUMMARY_HTML``,
  ``SPEED_HTML``, ``SEEDS_RUNS``, ``ENSEMBLE_MD``, ``SEEDS_ENSEMBLE``); ``column(key,
  header)`` relabels one for a table.
* ``fmt(column_or_key, value, grouped=False)``: the displayed text ("" for a missing value).
* ``migrate_record(rec)``: any record version -> the current one (``RECORD_VERSION``).
* ``summary_row(rec)``: a record -> the flat row the tables read (derived values included).
* ``best_by_dataset(rows, key)``: the best value of ``key`` per data set (tables mark it).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from typing import Callable

RECORD_VERSION = 2  # 2: config.json nested (bench.config), "precision" and "normalize" keys


# -- formatters ------------------------------------------------------------------------------

def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and not math.isfinite(v))


def _scaled(spec: str, *, times: float | None = None, over: float | None = None,
            suffix: str = "", doc: str = "") -> Callable:
    """A formatter: ``times * v`` then ``/ over`` (each when given), printed with ``spec``
    and ``suffix``; "" for a missing value."""
    def formatter(v, grouped: bool = False) -> str:
        if _missing(v):
            return ""
        if times is not None:
            v = times * v
        if over is not None:
            v = v / over
        return f"{v:{spec}}{suffix}"
    formatter.__doc__ = doc or None
    return formatter


pct = _scaled(".2f", times=100, suffix="%",
              doc="A fraction as a percentage, 2 decimals: 0.6817 -> ``68.17%``.")
pct1 = _scaled(".1f", times=100, suffix="%", doc="A percentage, 1 decimal: ``68.2%``.")
fixed4 = _scaled(".4f", doc="4 decimals: ``0.6817``.")
megabytes = _scaled(".2f", over=1e6, doc="Bytes as MB, 2 decimals: ``1.14``.")
millions = _scaled(".2f", over=1e6, suffix="M", doc="Millions, 2 decimals: ``1.14M``.")
thousands = _scaled(".0f", over=1e3, suffix="k", doc="Thousands: ``11k``.")
sig3 = _scaled(".3g", doc="3 significant digits.")
sig4 = _scaled(".4g", doc="4 significant digits.")


def number(v, grouped: bool = False) -> str:
    """Floats to one decimal (``31,924.5`` when ``grouped``), anything else as text."""
    if _missing(v):
        return ""
    if isinstance(v, float):
        return f"{v:,.1f}" if grouped else f"{v:.1f}"
    return str(v)


def params(v, grouped: bool = False) -> str:
    """A parameter count: ``1.14M`` from 100k up, else ``11,194``."""
    if _missing(v):
        return ""
    return f"{v / 1e6:.2f}M" if v >= 1e5 else f"{v:,}"


def text(v, grouped: bool = False) -> str:
    return "" if v is None else str(v)


def interval(v, grouped: bool = False) -> str:
    """A paired difference with its interval, ``{"diff", "lo", "hi"}``:
    ``+0.0170 [+0.0019, +0.0380]``."""
    if not v:
        return ""
    return f"{v['diff']:+.4f} [{v['lo']:+.4f}, {v['hi']:+.4f}]"


def best_mark(v, grouped: bool = False) -> str:
    return "**best**" if v else ""


# -- fields -----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Field:
    """One key of a run record."""

    name: str
    type: str
    unit: str = ""
    description: str = ""


FIELDS: tuple[Field, ...] = (
    Field("record_version", "int", "", "1: flat config; 2: nested config, precision, normalize"),
    Field("run_id", "str", "", "unique id: tag, data set, devices and a config hash"),
    Field("status", "str", "", "running, complete or diverged"),
    Field("model", "str", "", "registered model name"),
    Field("tag", "str", "", "row label (default: the model name)"),
    Field("family", "str", "", "model family"),
    Field("dataset", "dict", "", "the data set's summary: name, source, sizes, classes, ..."),
    Field("config", "dict", "", "the run's config tree (bench.config.to_dict)"),
    Field("precision", "str", "", "fp32 or bf16 (compute precision of the train step)"),
    Field("normalize", "str", "", "input normalisation: none, featurewise or zca"),
    Field("num_classes", "int", "classes", "number of classes"),
    Field("image_size", "list[int]", "px", "input height and width"),
    Field("params_trainable", "int", "parameters", "trainable parameters"),
    Field("params_total", "int", "parameters", "all parameters"),
    Field("device", "dict", "", "platform, kind, count, processes, host"),
    Field("versions", "dict", "", "python, jax, flax, ... versions"),
    Field("seed", "int", "", "random seed"),
    Field("global_batch", "int", "images", "training batch over all devices"),
    Field("steps_per_epoch", "int", "steps", "training steps per epoch"),
    Field("epochs_completed", "int", "epochs", "epochs trained"),
    Field("best_epoch", "int", "epoch", "epoch of the best validation loss (scored weights)"),
    Field("history", "list[dict]", "", "per epoch: train/val loss and accuracy, epoch_s, lr"),
    Field("accuracy", "float", "fraction", "test top-1 accuracy"),
    Field("top5_accuracy", "float", "fraction", "test top-5 accuracy (more than 5 classes)"),
    Field("log_loss", "float", "nats", "test mean negative log-likelihood"),
    Field("per_class", "dict", "", "test precision / recall / F1 per class"),
    Field("confusion", "list[list[int]]", "images", "test confusion matrix, rows = true class"),
    Field("classes", "list[str]", "", "class names"),
    Field("train_img_per_s", "float", "img/s", "median training step throughput"),
    Field("train_step_ms", "float", "ms", "median training step time"),
    Field("epoch_img_per_s", "float", "img/s", "median whole-epoch throughput"),
    Field("infer_img_per_s", "float", "img/s", "inference throughput"),
    Field("infer_batch", "int", "images", "inference batch"),
    Field("compile_s", "float", "s", "train step compile time"),
    Field("weights_bytes", "int", "bytes", "saved weights size"),
    Field("wall_s", "float", "s", "training wall time"),
    Field("finished", "str", "", "ISO time the run finished"),
    Field("error", "str", "", "why a run diverged"),
    Field("best_checkpoint_unreadable", "str", "", "why the last weights were scored"),
    # rows written by other tools (bench ensemble)
    Field("ece", "float", "fraction", "expected calibration error, 15 bins (ensemble rows)"),
    Field("best", "bool", "", "the lowest log-loss row of its ensemble table"),
    Field("log_loss_vs_best", "dict", "nats", "log-loss minus the best row's: diff, lo, hi"),
    Field("fit_s", "float", "s", "head fit time (ensemble rows)"),
    Field("log_loss_clip", "float", "", "probability clip of the log-loss (ensemble rows)"),
    Field("members", "list[str]", "", "ensemble members"),
    Field("feature_files", "list[str]", "", "feature files an ensemble row read"),
)
FIELD = {f.name: f for f in FIELDS}


# -- columns ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Column:
    """A table column: the row ``key`` it shows, its ``header``, its formatter and, for
    metrics, which direction is ``better`` ("higher" or "lower"; ``bench compare``)."""

    key: str
    header: str
    formatter: Callable = number
    better: str | None = None


# Every column: key | header | formatter | better (the direction `bench compare` reads).
_COLUMN_TABLE = """
run_id                | run id               | text
tag                   | run                  | text
model                 | model                | text
dataset               | data                 | text
precision             | prec                 | text
normalize             | normalize            | text
status                | status               | text
epochs                | epochs               | text
accuracy              | acc                  | pct       | higher
top5_accuracy         | top-5                | pct       | higher
log_loss              | log-loss             | fixed4    | lower
epoch_s               | s/epoch              | number
train_img_per_s       | train img/s          | number    | higher
epoch_img_per_s       | epoch img/s          | number
infer_img_per_s       | infer img/s          | number    | higher
params_total          | params               | params
params_trainable      | trainable            | params
weights_bytes         | size MB              | megabytes
compile_s             | compile s            | number
wall_s                | wall s               | number
device                | device               | text
reported              | report (their data)  | text
# ensemble rows
ece                   | ECE                  | fixed4
log_loss_vs_best      | vs best [95% CI]     | interval
best                  | best                 | best_mark
# bench speed rows (speed.json)
framework             | framework            | text
image_size            | size                 | text
batch                 | batch                | text
train_step_ms         | train ms             | number
infer_step_ms         | infer ms             | number
params                | params               | params
infer_gflops_per_img  | GFLOPs/img           | sig3
train_mfu             | train MFU            | pct1
infer_mfu             | infer MFU            | pct1
train_compile_s       | compile s            | number
note                  | note                 | text
# pytest-benchmark rows (--benchmark-json)
median_s              | median s             | sig4      | lower
"""
_FORMATTERS = {"text": text, "pct": pct, "pct1": pct1, "fixed4": fixed4, "number": number,
               "params": params, "megabytes": megabytes, "sig3": sig3, "sig4": sig4,
               "interval": interval, "best_mark": best_mark}


def _parse_columns(table: str) -> dict[str, Column]:
    """``_COLUMN_TABLE`` as ``{key: Column}``, in table order (``#`` lines are comments)."""
    out = {}
    for line in table.strip().splitlines():
        if not line.startswith("#"):
            key, header, formatter, *better = (c.strip() for c in line.split("|"))
            out[key] = Column(key, header, _FORMATTERS[formatter], better[0] if better else None)
    return out


COLUMNS: dict[str, Column] = _parse_columns(_COLUMN_TABLE)


def column(key: str, header: str | None = None, formatter: Callable | None = None) -> Column:
    """``COLUMNS[key]``, relabelled (``header``) or reformatted for one table."""
    c = COLUMNS[key]
    return dataclasses.replace(c, header=c.header if header is None else header,
                               formatter=c.formatter if formatter is None else formatter)


def columns(*specs) -> tuple[Column, ...]:
    """A table: each spec a key, ``(key, header)`` or ``(key, header, formatter)``."""
    return tuple(column(s) if isinstance(s, str) else column(*s) for s in specs)


# summary.csv: raw values, these keys in this order (precision appended last: readers
# index by name, and older files keep their column positions).
SUMMARY_CSV = columns(
    "run_id", "tag", "model", "dataset", "status", "epochs", "accuracy", "top5_accuracy",
    "log_loss", "train_img_per_s", "epoch_img_per_s", "infer_img_per_s", "params_total",
    ("params_trainable", "params_trainable"), "weights_bytes", "compile_s", "wall_s",
    "device", "precision")
SUMMARY_MD = columns(
    "tag", "dataset", "precision", "epochs", "accuracy", "top5_accuracy", "log_loss",
    "train_img_per_s", "infer_img_per_s", "params_total", "weights_bytes", "wall_s")
SUMMARY_HTML = columns(
    "tag", "model", "dataset", "precision", "status", "epochs", "accuracy", "top5_accuracy",
    "log_loss", "train_img_per_s", "infer_img_per_s", "params_total", "weights_bytes",
    "compile_s", "wall_s", "device")
SPEED_HTML = columns(
    "model", "framework", "precision", "image_size", "batch", "train_img_per_s",
    "infer_img_per_s", "train_step_ms", "infer_step_ms", "params", "infer_gflops_per_img",
    "train_mfu", "infer_mfu", "train_compile_s", "note")
# The seeds suite's per-section run tables (summary.md).
SEEDS_RUNS = columns(
    "tag", "reported", ("accuracy", "ours: test acc"), "top5_accuracy", "log_loss", "epochs",
    "epoch_s", "train_img_per_s", ("params_total", "params", millions), "weights_bytes")
ENSEMBLE_MD = columns(
    ("tag", "method"), ("accuracy", "accuracy"), "top5_accuracy", "log_loss",
    "log_loss_vs_best", "ece", ("infer_img_per_s", "img/s"), "best")
SEEDS_ENSEMBLE = columns(
    ("tag", "method"), ("accuracy", "test acc"), "log_loss", "log_loss_vs_best", "ece",
    ("infer_img_per_s", "img/s"), "best")
PYTEST_BENCHMARK = columns("median_s")
# Columns whose best value per data set a markdown table marks in bold.
BOLD_BEST = ("accuracy",)


def metrics(cols=None) -> dict[str, bool]:
    """``{key: higher is better}`` of the columns with a direction (``bench compare``)."""
    cols = SUMMARY_CSV if cols is None else cols
    return {c.key: c.better == "higher" for c in cols if c.better}


def fmt(col: Column | str, v, grouped: bool = False) -> str:
    """The displayed text of ``v`` in ``col``; "" for a missing value."""
    col = COLUMNS[col] if isinstance(col, str) else col
    if _missing(v):
        return ""
    return col.formatter(v, grouped)


def markdown_table(rows: list[dict], cols, *, bold_best: tuple[str, ...] = ()) -> list[str]:
    """Header, rule and one line per row; ``bold_best`` keys bold at their best value per
    data set (``best_by_dataset``)."""
    lines = ["| " + " | ".join(c.header for c in cols) + " |",
             "|" + "|".join("---" for _ in cols) + "|"]
    best = {k: best_by_dataset(rows, k) for k in bold_best}
    for r in rows:
        cells = []
        for c in cols:
            s = fmt(c, r.get(c.key))
            if c.key in best and s and r.get(c.key) == best[c.key].get(r.get("dataset")):
                s = f"**{s}**"
            cells.append(s)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def best_by_dataset(rows: list[dict], key: str) -> dict:
    """``{dataset: best value of key}`` over complete rows (higher or lower by the column's
    ``better``): a table of several data sets marks each one's best, not one overall."""
    lower = COLUMNS[key].better == "lower"
    best: dict = {}
    for r in rows:
        v = r.get(key)
        if r.get("status") not in (None, "complete") or _missing(v) or isinstance(v, bool):
            continue
        ds = r.get("dataset")
        if ds not in best or (v < best[ds] if lower else v > best[ds]):
            best[ds] = v
    return best


def ensemble_rows(rows: list[dict]) -> list[dict]:
    """``bench ensemble`` rows as ``ENSEMBLE_MD`` / ``SEEDS_ENSEMBLE`` show them: the best
    row's own "vs best" left blank."""
    return [dict(r, log_loss_vs_best=None) if r.get("best") else r for r in rows]


# -- records ------------------------------------------------------------------------------------

def migrate_record(rec: dict) -> dict:
    """A run record of any version as the current version (a new dict; the input is not
    changed). Version 1: ``config`` flat -> the nested tree (``bench.config.migrate``);
    ``precision`` and ``normalize`` from the config (defaults ``fp32``, ``none``). Rows
    written by other tools (no ``config``, e.g. ensembles) pass through unchanged."""
    rec = dict(rec)
    version = rec.get("record_version", 1)
    cfg = rec.get("config")
    if not isinstance(cfg, dict):
        return rec
    if version == 1:
        from bench.config import CONFIG_VERSION, migrate

        # as bench.config.to_dict writes it (version 2 records), so from_dict reads it again
        cfg = {**migrate(cfg), "config_version": CONFIG_VERSION}
        rec["config"] = cfg
        rec["record_version"] = RECORD_VERSION
    rec.setdefault("precision", cfg.get("precision") or "fp32")
    rec.setdefault("normalize", (cfg.get("data") or {}).get("normalize") or "none")
    return rec


def _epoch_s(rec: dict) -> float | None:
    times = [h["epoch_s"] for h in rec.get("history") or [] if "epoch_s" in h]
    return float(statistics.median(times)) if times else None


def summary_row(rec: dict) -> dict:
    """The flat row of a (migrated) record that every table reads: the record's own
    values plus ``epochs``, ``dataset`` (its name), ``device`` (``1x cpu``) and ``epoch_s``
    (median seconds per epoch). An older record is migrated first."""
    if rec.get("record_version", 1) < RECORD_VERSION or "precision" not in rec:
        try:
            rec = migrate_record(rec)
        except ValueError:  # an unreadable old config: its row still shows
            pass
    ds = rec.get("dataset")
    dev = rec.get("device") or {}
    row = {k: rec.get(k) for k in COLUMNS if k in rec}
    row.update({
        "run_id": rec.get("run_id"), "tag": rec.get("tag") or rec.get("model"),
        "model": rec.get("model"),
        "dataset": ds.get("name") if isinstance(ds, dict) else ds,
        "status": rec.get("status"), "epochs": rec.get("epochs_completed"),
        "epoch_s": _epoch_s(rec), "precision": rec.get("precision"),
        "device": (f"{dev.get('count', '')}x {dev.get('kind', '')}".strip()
                   if isinstance(dev, dict) and dev else ""),
    })
    return row
