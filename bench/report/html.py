"""A self-contained HTML report of a results directory, and the same plots as PNG files.

``write_html(out_dir)`` writes ``out_dir/report.html``: the summary table (click a header to
sort), accuracy against training throughput and against size, training curves and confusion
matrices, plus the ``bench speed`` table when ``out_dir/speed.json`` exists. Plots are
inlined as base64 PNG and the sorting script is inline, so the file works offline and can be
mailed on its own. ``write_plots(out_dir)`` writes the plots to ``out_dir/plots/`` for a
README.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import time
from pathlib import Path

from runtime import io as bio
from . import schema
from .tables import keep_larger, load_records, summary_row, wrap_title

PLOT_NAMES = ("accuracy_vs_throughput", "accuracy_vs_size", "training_curves", "confusion")
MAX_CURVES = 8  # runs with training curves (the most accurate ones)
MAX_CONFUSIONS = 4  # runs with a confusion matrix

_SORT_SCRIPT = """
document.querySelectorAll('table.sortable th').forEach(function (th, col) {
  th.addEventListener('click', function () {
    var table = th.closest('table'), body = table.tBodies[0];
    var asc = th.getAttribute('data-dir') !== 'asc';
    table.querySelectorAll('th').forEach(function (h) { h.removeAttribute('data-dir'); });
    th.setAttribute('data-dir', asc ? 'asc' : 'desc');
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[col].getAttribute('data-v'), y = b.cells[col].getAttribute('data-v');
      if (x === '' || y === '') { return (x === '') - (y === ''); }  /* blanks last */
      var nx = Number(x), ny = Number(y);
      var r = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return asc ? r : -r;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { padding: 3px 8px; border-bottom: 1px solid #ddd; text-align: right; }
th { cursor: pointer; background: #f4f4f4; position: sticky; top: 0; }
th[data-dir=asc]::after { content: ' \\25B2'; } th[data-dir=desc]::after { content: ' \\25BC'; }
td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; margin: 0.5em 0; }
.meta { color: #666; }
"""


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _complete(records: list[dict]) -> list[dict]:
    return [r for r in records if r.get("status") in (None, "complete")
            and isinstance(r.get("accuracy"), (int, float))]


def _label(rec: dict) -> str:
    return str(rec.get("tag") or rec.get("model") or rec.get("run_id"))


def _dataset(rec: dict) -> str:
    ds = rec.get("dataset")
    return str(ds.get("name") if isinstance(ds, dict) else ds)


def _scatter(records: list[dict], x_key: str, xlabel: str, title: str):
    """Accuracy against ``x_key`` (log x), marker area ~ parameters, one colour per data
    set; None when no record has both values."""
    pts = [r for r in _complete(records)
           if isinstance(r.get(x_key), (int, float)) and r[x_key] > 0]
    if not pts:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sizes = [r.get("params_total") or 0 for r in pts]
    biggest = max(sizes) or 1
    for ds in sorted({_dataset(r) for r in pts}):
        sub = [r for r in pts if _dataset(r) == ds]
        area = [20 + 400 * math.sqrt((r.get("params_total") or 0) / biggest) for r in sub]
        ax.scatter([r[x_key] for r in sub], [100 * r["accuracy"] for r in sub], s=area,
                   alpha=0.6, label=ds)
        for r in sub:
            ax.annotate(_label(r), (r[x_key], 100 * r["accuracy"]), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, title="data set (marker area ~ parameters)", title_fontsize=8)
    fig.tight_layout()
    return fig


def plot_accuracy_vs_throughput(records: list[dict]):
    return _scatter(records, "train_img_per_s", "training throughput (img/s, log scale)",
                    "Accuracy vs training speed")


def plot_accuracy_vs_size(records: list[dict]):
    return _scatter(records, "params_total", "parameters (log scale)", "Accuracy vs size")


def _top(records: list[dict], key: str, n: int) -> list[dict]:
    rows = [r for r in _complete(records) if r.get(key)]
    return sorted(rows, key=lambda r: -r["accuracy"])[:n]


def plot_training_curves(records: list[dict], top: int = MAX_CURVES):
    """Loss and accuracy per epoch (train solid, validation dashed) of the ``top`` most
    accurate runs that have a history, one row of two panels per run."""
    runs = _top(records, "history", top)
    if not runs:
        return None
    plt = _plt()
    fig, axes = plt.subplots(len(runs), 2, figsize=(9, 2.2 * len(runs)), squeeze=False)
    for (a1, a2), rec in zip(axes, runs):
        hist = rec["history"]
        ep = [h.get("epoch") for h in hist]
        for ax, metric in ((a1, "loss"), (a2, "accuracy")):
            for prefix, style in (("train_", "-"), ("val_", "--")):
                ys = [h.get(prefix + metric) for h in hist]
                if any(v is not None for v in ys):
                    ax.plot(ep, ys, style, label=prefix.rstrip("_"))
            ax.set_ylabel(metric)
            ax.grid(True, alpha=0.3)
        a1.set_title(wrap_title(_label(rec), 4, 9), fontsize=9, loc="left")
        a2.legend(fontsize=7)
    from matplotlib.ticker import MaxNLocator

    for ax in axes.flat:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    fig.tight_layout()
    return fig


def plot_confusions(records: list[dict], top: int = MAX_CONFUSIONS):
    """Row-normalised confusion matrices of the ``top`` most accurate runs, side by side."""
    runs = _top(records, "confusion", top)
    if not runs:
        return None
    import numpy as np

    plt = _plt()
    fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs), 4.2), squeeze=False)
    for ax, rec in zip(axes[0], runs):
        cm = np.asarray(rec["confusion"], float)
        norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        classes = rec.get("classes") or []
        n = len(cm)
        if classes and n <= 20:
            ax.set_xticks(range(n), classes, rotation=90, fontsize=7)
            ax.set_yticks(range(n), classes, fontsize=7)
        if n <= 10:
            for i in range(n):
                for j in range(n):
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
        ax.set_title(wrap_title(f"{_label(rec)}\n{100 * rec['accuracy']:.2f}%", 4, 9),
                     fontsize=9)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
    fig.tight_layout()
    return fig


_PLOTS = {
    "accuracy_vs_throughput": plot_accuracy_vs_throughput,
    "accuracy_vs_size": plot_accuracy_vs_size,
    "training_curves": plot_training_curves,
    "confusion": plot_confusions,
}


def _figures(records: list[dict]):
    """``(name, figure)`` for each plot there is data for."""
    for name in PLOT_NAMES:
        fig = _PLOTS[name](records)
        if fig is not None:
            yield name, fig


def write_plots(out_dir: str | Path, records: list[dict] | None = None) -> list[Path]:
    """Write ``out_dir/plots/<name>.png`` for each of ``PLOT_NAMES`` there is data for."""
    out_dir = Path(out_dir)
    records = load_records(out_dir) if records is None else records
    plt = _plt()
    paths = []
    for name, fig in _figures(records):
        path = out_dir / "plots" / f"{name}.png"
        with bio.atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)
        paths.append(path)
    return paths


def _png_base64(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, dpi=100, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _cell(col: schema.Column, v) -> tuple[str, str]:
    """``(sort value, displayed text)`` of a table cell (the schema's formatter, floats
    with thousands separators)."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "", ""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v), str(v)
    return repr(v), schema.fmt(col, v, grouped=True)


def _table(rows: list[dict], columns) -> str:
    out = ['<table class="sortable"><thead><tr>']
    out += [f"<th>{html.escape(c.header)}</th>" for c in columns]
    out.append("</tr></thead><tbody>")
    for r in rows:
        out.append("<tr>")
        for c in columns:
            sort, text = _cell(c, r.get(c.key))
            out.append(f'<td data-v="{html.escape(sort, quote=True)}">{html.escape(text)}</td>')
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def default_title(out_dir: str | Path) -> str:
    """``bench report: <parent>/<folder>`` (the seeds suite named as such): the folder's
    last two path parts, so that ``results`` reads ``bench report: repo/results``."""
    p = Path(out_dir).resolve()
    where = "/".join(p.parts[-2:]) if len(p.parts) > 1 else str(p)
    if (p / "seeds.json").is_file():
        return f"bench report: seeds suite ({where})"
    return f"bench report: {where}"


def write_html(out_dir: str | Path, records: list[dict] | None = None,
               title: str | None = None, *, force: bool = False) -> Path:
    """Write ``out_dir/report.html`` from ``records`` (default: the run records under
    ``out_dir``, as ``bench.report.load_records`` finds them) and return its path. An
    existing report with more runs is kept (with a warning) unless ``force``."""
    out_dir = Path(out_dir)
    records = load_records(out_dir) if records is None else records
    path = out_dir / "report.html"
    if not keep_larger(path, len(records), force):
        return path
    title = title or default_title(out_dir)
    rows = [summary_row(r) for r in records]
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="meta" data-runs="{len(records)}">{len(records)} runs; generated '
        f'{time.strftime("%Y-%m-%d %H:%M")} by <code>bench report</code>. Click a column '
        "header to sort.</p>",
        "<h2>Runs</h2>", _table(rows, schema.SUMMARY_HTML),
    ]
    speed_path = out_dir / "speed.json"
    if speed_path.is_file():
        try:
            speed = json.loads(speed_path.read_text())
            parts += ["<h2>Throughput (<code>bench speed</code>)</h2>",
                      f'<p class="meta">{html.escape(str(speed.get("device", "")))}; '
                      f'{html.escape(str(speed.get("date", "")))}; '
                      f'<code>{html.escape(str(speed.get("command", "")))}</code></p>',
                      _table(speed.get("rows") or [], schema.SPEED_HTML)]
        except (json.JSONDecodeError, AttributeError) as e:
            parts.append(f"<p>{html.escape(str(speed_path))}: unreadable ({e})</p>")
    plt = _plt()
    headings = {"accuracy_vs_throughput": "Accuracy vs training throughput",
                "accuracy_vs_size": "Accuracy vs size",
                "training_curves": f"Training curves (the {MAX_CURVES} most accurate runs)",
                "confusion": f"Confusion matrices (the {MAX_CONFUSIONS} most accurate runs)"}
    for name, fig in _figures(records):
        parts += [f"<h2>{headings[name]}</h2>",
                  f'<img alt="{name}" src="data:image/png;base64,{_png_base64(fig)}">']
        plt.close(fig)
    parts += [f"<script>{_SORT_SCRIPT}</script>", "</body></html>"]
    bio.write_text(path, "\n".join(parts) + "\n")
    return path
