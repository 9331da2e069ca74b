"""Result tables and plots from run records: ``summary.csv``, ``summary.md``, per-run
confusion matrices and training curves."""

from __future__ import annotations

import csv
import io
import re
import sys
import textwrap
from pathlib import Path

from runtime import io as bio

from . import schema
from .schema import migrate_record, summary_row  # noqa: F401  (re-exported)

# The column keys of summary.csv (the schema's SUMMARY_CSV), for callers that index by name.
SUMMARY_KEYS = tuple(c.key for c in schema.SUMMARY_CSV)


def load_records(out_dir: str | Path) -> list[dict]:
    """All run records under ``out_dir`` (``runs/*/record.json`` and ``rows/*.json`` rows
    added by other tools such as ensembles), migrated to the current record version
    (``schema.migrate_record``), oldest first."""
    out_dir = Path(out_dir)
    if not out_dir.exists():
        raise FileNotFoundError(f"{out_dir}: no such results directory")
    paths = sorted(out_dir.glob("runs/*/record.json")) + sorted(out_dir.glob("rows/*.json"))
    records = []
    for p in paths:
        try:
            rec = bio.read_json(p)
        except ValueError as e:
            print(f"warning: skipping {e}")
            continue
        try:
            rec = migrate_record(rec)
        except ValueError as e:  # an unreadable config: keep the row, say so
            print(f"warning: {p}: config not migrated ({e})")
        records.append(rec)
    records.sort(key=lambda r: r.get("finished") or "")
    return records


def summary_markdown(rows: list[dict], title: str | None = None) -> str:
    """The summary table; each data set's best accuracy in bold."""
    lines = [f"# {title}", ""] if title else []
    table = schema.markdown_table(rows, schema.SUMMARY_MD, bold_best=schema.BOLD_BEST)
    for i, r in enumerate(rows):
        if r.get("status") not in (None, "complete"):
            head, rest = table[2 + i][2:].split(" | ", 1)
            table[2 + i] = f"| {head} ({r.get('status')}) | {rest}"
    return "\n".join(lines + table) + "\n"


def summary_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SUMMARY_KEYS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in SUMMARY_KEYS})
    return buf.getvalue()


def table_rows(path: Path) -> int | None:
    """Data rows in an existing summary.csv (records) or markdown table (``| `` lines past
    the header and rule); None when there is no such file."""
    path = Path(path)
    if not path.is_file():
        return None
    text = path.read_text()
    if path.suffix == ".html":
        m = re.search(r'data-runs="(\d+)"', text)
        return int(m.group(1)) if m else None
    if path.suffix == ".csv":
        return max(0, sum(1 for _ in csv.reader(io.StringIO(text))) - 1)
    return max(0, sum(1 for line in text.splitlines() if line.startswith("|")) - 2)


def keep_larger(path: Path, new_rows: int, force: bool) -> bool:
    """True when ``path`` may be (re)written with a table of ``new_rows`` rows: always with
    ``force``, else unless it already holds more rows (then a one-line warning)."""
    old = table_rows(path)
    if force or old is None or new_rows >= old:
        return True
    print(f"warning: kept {path}: it has {old} rows, the new table {new_rows} (are its run "
          f"records missing?); rerun with --force to replace it", file=sys.stderr)
    return False


def write_summary(out_dir: str | Path, title: str | None = None,
                  md_name: str = "summary.md", *, force: bool = False) -> list[dict]:
    """Regenerate ``summary.csv`` and ``summary.md`` (``md_name``) in ``out_dir`` from its
    records. A file holding more rows than the new table is kept (with a warning) unless
    ``force``: a folder whose run records are absent (a fresh clone of committed results)
    does not lose its tables."""
    out_dir = Path(out_dir)
    rows = [summary_row(r) for r in load_records(out_dir)]
    if keep_larger(out_dir / "summary.csv", len(rows), force):
        bio.write_text(out_dir / "summary.csv", summary_csv(rows))
    if keep_larger(out_dir / md_name, len(rows), force):
        bio.write_text(out_dir / md_name, summary_markdown(rows, title))
    return rows


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_confusion(run_dir: Path, rec: dict) -> None:
    cm = rec.get("confusion")
    if not cm:
        return
    write_confusion_files(run_dir, "confusion", cm, rec.get("classes") or [],
                          f"{rec.get('tag')}: accuracy {100 * rec.get('accuracy', 0):.2f}%")


def wrap_title(title: str, width_in: float, fontsize: float = 12) -> str:
    """``title`` broken into lines that fit ``width_in`` inches at ``fontsize`` points
    (about 0.6 em per character, a margin kept)."""
    chars = max(8, int(0.9 * width_in * 72 / (0.6 * fontsize)))
    return "\n".join(textwrap.fill(part, chars) for part in str(title).split("\n"))


def confusion_figure(cm, labels: list[str], title: str):
    """The confusion matrix plot (rows = true class), its title wrapped to the figure."""
    plt = _plt()
    n = len(labels)
    size = min(12, 2 + 0.35 * n)
    fig, ax = plt.subplots(figsize=(max(size, 3.5), size), layout="constrained")
    ax.imshow(cm, cmap="Blues")
    if n <= 30:
        ax.set_xticks(range(n), labels, rotation=90, fontsize=8)
        ax.set_yticks(range(n), labels, fontsize=8)
        if n <= 15:
            for i in range(n):
                for j in range(n):
                    ax.text(j, i, cm[i][j], ha="center", va="center", fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fontsize = 10
    ax.set_title(wrap_title(title, fig.get_figwidth(), fontsize), fontsize=fontsize)
    return fig


def write_confusion_files(out_dir: Path, stem: str, cm, labels: list[str], title: str) -> None:
    """``out_dir/<stem>.csv`` and ``.png`` of a confusion matrix (rows = true class)."""
    cm = [[int(v) for v in row] for row in cm]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["true\\pred"] + list(labels))
    for c, row in zip(labels, cm):
        w.writerow([c] + row)
    bio.write_text(Path(out_dir) / f"{stem}.csv", buf.getvalue())
    plt = _plt()
    fig = confusion_figure(cm, labels, title)
    with bio.atomic_path(Path(out_dir) / f"{stem}.png", suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def write_history(run_dir: Path, rec: dict) -> None:
    hist = rec.get("history") or []
    if not hist:
        return
    keys = sorted({k for row in hist for k in row}, key=lambda k: (k != "epoch", k))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(hist)
    bio.write_text(run_dir / "history.csv", buf.getvalue())
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ep = [r["epoch"] for r in hist]
    for ax, metric in ((a1, "loss"), (a2, "accuracy")):
        ax.plot(ep, [r[f"train_{metric}"] for r in hist], label="train")
        if f"val_{metric}" in hist[0]:
            ax.plot(ep, [r.get(f"val_{metric}") for r in hist], label="val")
        ax.set_title(metric)
        ax.set_xlabel("epoch")
        ax.legend()
    fig.suptitle(wrap_title(rec.get("tag") or "", fig.get_figwidth()))
    fig.tight_layout()
    with bio.atomic_path(run_dir / "curves.png", suffix=".png") as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
