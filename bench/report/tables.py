"""Result tables and plots from run records: ``summary.csv``, ``summary.md``, per-run
confusion matrices and training curves."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from runtime import io as bio

SUMMARY_COLUMNS = (
    "run_id", "tag", "model", "dataset", "status", "epochs", "accuracy", "top5_accuracy",
    "log_loss", "train_img_per_s", "epoch_img_per_s", "infer_img_per_s", "params_total",
    "params_trainable", "weights_bytes", "compile_s", "wall_s", "device",
)
_MD_COLUMNS = (
    ("tag", "run"), ("dataset", "data"), ("epochs", "epochs"), ("accuracy", "acc"),
    ("top5_accuracy", "top-5"), ("log_loss", "log-loss"), ("train_img_per_s", "train img/s"),
    ("infer_img_per_s", "infer img/s"), ("params_total", "params"),
    ("weights_bytes", "size MB"), ("wall_s", "wall s"),
)


def load_records(out_dir: str | Path) -> list[dict]:
    """All run records under ``out_dir`` (``runs/*/record.json`` and ``*.record.json`` rows
    added by other tools such as ensembles), oldest first."""
    out_dir = Path(out_dir)
    if not out_dir.exists():
        raise FileNotFoundError(f"{out_dir}: no such results directory")
    paths = sorted(out_dir.glob("runs/*/record.json")) + sorted(out_dir.glob("rows/*.json"))
    records = []
    for p in paths:
        try:
            records.append(bio.read_json(p))
        except ValueError as e:
            print(f"warning: skipping {e}")
    records.sort(key=lambda r: r.get("finished") or "")
    return records


def summary_row(rec: dict) -> dict:
    ds = rec.get("dataset")
    dev = rec.get("device") or {}
    return {
        "run_id": rec.get("run_id"), "tag": rec.get("tag") or rec.get("model"),
        "model": rec.get("model"),
        "dataset": ds.get("name") if isinstance(ds, dict) else ds,
        "status": rec.get("status"), "epochs": rec.get("epochs_completed"),
        "accuracy": rec.get("accuracy"), "top5_accuracy": rec.get("top5_accuracy"),
        "log_loss": rec.get("log_loss"), "train_img_per_s": rec.get("train_img_per_s"),
        "epoch_img_per_s": rec.get("epoch_img_per_s"),
        "infer_img_per_s": rec.get("infer_img_per_s"), "params_total": rec.get("params_total"),
        "params_trainable": rec.get("params_trainable"),
        "weights_bytes": rec.get("weights_bytes"), "compile_s": rec.get("compile_s"),
        "wall_s": rec.get("wall_s"),
        "device": f"{dev.get('count', '')}x {dev.get('kind', '')}".strip() if dev else "",
    }


def _fmt(key: str, v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if key in ("accuracy", "top5_accuracy"):
        return f"{100 * v:.2f}%"
    if key == "log_loss":
        return f"{v:.4f}"
    if key == "weights_bytes":
        return f"{v / 1e6:.2f}"
    if key == "params_total":
        return f"{v / 1e6:.2f}M" if v >= 1e5 else f"{v:,}"
    if isinstance(v, float):
        return f"{v:.1f}"
    return str(v)


def summary_markdown(rows: list[dict], title: str | None = None) -> str:
    lines = [f"# {title}", ""] if title else []
    lines.append("| " + " | ".join(h for _, h in _MD_COLUMNS) + " |")
    lines.append("|" + "|".join("---" for _ in _MD_COLUMNS) + "|")
    best = {}
    done = [r for r in rows if r.get("status") == "complete" and r.get("accuracy") is not None]
    for key in ("accuracy",):
        if done:
            best[key] = max(r[key] for r in done)
    for r in rows:
        cells = []
        for key, _ in _MD_COLUMNS:
            s = _fmt(key, r.get(key))
            if key in best and r.get(key) == best[key] and s:
                s = f"**{s}**"
            cells.append(s)
        if r.get("status") not in (None, "complete"):
            cells[0] = f"{cells[0]} ({r.get('status')})"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_summary(out_dir: str | Path, title: str | None = None,
                  md_name: str = "summary.md") -> list[dict]:
    """Regenerate ``summary.csv`` and ``summary.md`` (``md_name``) in ``out_dir`` from its
    records."""
    out_dir = Path(out_dir)
    rows = [summary_row(r) for r in load_records(out_dir)]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in SUMMARY_COLUMNS})
    bio.write_text(out_dir / "summary.csv", buf.getvalue())
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
    n = len(labels)
    size = min(12, 2 + 0.35 * n)
    fig, ax = plt.subplots(figsize=(size, size))
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
    ax.set_title(title)
    fig.tight_layout()
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
    fig.suptitle(rec.get("tag") or "")
    fig.tight_layout()
    with bio.atomic_path(run_dir / "curves.png", suffix=".png") as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
