"""The zoo's leaderboard as files: ``zoo.json`` (the board), ``leaderboard.md``, ``.csv``,
``.html`` and the accuracy-vs-cost Pareto plot, and the lookups ``bench predict`` makes in a
board (``load_board``, ``find_row``). The zoo suite builds the board; this module only reads
and writes it, so the suite and ``bench.predict`` both import it and neither imports the other
for it."""

from __future__ import annotations

import re
from pathlib import Path

from runtime import io as bio


def fmt_s(s: float | None) -> str:
    """Seconds as the leaderboard prints them: ``42 s``, ``3.5 min``."""
    if s is None:
        return ""
    s = max(0.0, float(s))
    return f"{s / 60:.1f} min" if s >= 90 else f"{s:.0f} s"


def slug(name: str) -> str:
    """A row name as a folder name: ``resnet20 (scratch)`` -> ``resnet20-scratch``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


COLUMNS = ("rank", "method", "kind", "val log-loss", "val rows", "test acc", "top-5",
           "test log-loss", "vs recommended [95% CI]", "ECE", "fit time", "img/s", "ms/img",
           "params", "size MB")
CSV_COLUMNS = ("rank", "recommended", "method", "kind", "val_log_loss", "val_rows",
               "val_source", "test_accuracy", "top5_accuracy", "log_loss",
               "log_loss_vs_recommended", "vs_recommended_lo", "vs_recommended_hi", "ece",
               "fit_s", "img_per_s", "ms_per_image", "params", "size_mb", "note")


def _vs(r: dict) -> dict | None:
    """A row's paired test log-loss difference to the recommended row (None: it is it)."""
    return r.get("vs_recommended", r.get("vs_best"))  # vs_best: boards before val ranking


def _cells(r: dict) -> list[str]:
    vb = _vs(r)
    val = r.get("val_log_loss")
    return [str(r["rank"]) + (" ★" if r.get("recommended") else ""),
            r["name"] + (f" ({r['note']})" if r.get("note") else ""), r["kind"],
            "" if val is None else f"{val:.4f}",
            "" if val is None else f"{r['val_rows']} {_SOURCE.get(r['val_source'], '')}".strip(),
            f"{100 * r['accuracy']:.2f}%",
            "" if r["top5_accuracy"] is None else f"{100 * r['top5_accuracy']:.2f}%",
            f"{r['log_loss']:.4f}",
            "recommended" if vb is None else
            f"{vb['diff']:+.4f} [{vb['lo']:+.4f}, {vb['hi']:+.4f}]",
            f"{r['ece']:.4f}", fmt_s(r["fit_s"]),
            "" if r["img_per_s"] is None else f"{r['img_per_s']:.1f}",
            "" if r["ms_per_image"] is None else f"{r['ms_per_image']:.2f}",
            "" if r["params"] is None else f"{r['params'] / 1e6:.2f}M",
            "" if r["size_mb"] is None else f"{r['size_mb']:.1f}"]


_SOURCE = {"out-of-fold": "oof", "validation": "val",
           "cross-fit on out-of-fold rows": "oof, cross-fit",
           "cross-fit on validation rows": "val, cross-fit"}


def _intro(board: dict) -> str:
    s = board["sizes"]
    nd = board["near_duplicates"]
    return (f"Data `{board['dataset']}`: {len(board['classes'])} classes, train/val/test "
            f"{s['train']}/{s['val']}/{s['test']} (one split for every row). Preset "
            f"{board['preset']}, budget {fmt_s(board['budget_s'])}, wall time "
            f"{fmt_s(board.get('wall_s'))}. Chosen on validation, reported on test: rows are "
            f"ranked by validation log-loss (heads: out-of-fold over train+val; networks: the "
            f"validation split; ensembles: their combiner's own out-of-fold predictions over "
            f"the rows it was fit on); ★ marks the recommended row (the lowest), which best/ "
            f"exports. The test columns are the unbiased report; vs recommended: test "
            f"log-loss minus the recommended row's, with a 95% paired bootstrap interval over "
            f"the test images (an interval containing 0 is within the split's noise). "
            f"Ensembles are fit only on predictions their members made for rows they were not "
            f"trained on (docs/zoo.md). ECE: 15 bins. img/s and ms/img: measured inference "
            f"(networks: test batches; frozen heads: feature extraction; ensembles: the "
            f"pipelines they run, one after the other). Size: weights (heads: fp32 backbone + "
            f"head). Near-duplicate pairs (pHash) between test and train: "
            f"{nd.get('train-test', 0)} (val-train {nd.get('train-val', 0)}, val-test "
            f"{nd.get('val-test', 0)}).")


def leaderboard_markdown(board: dict) -> str:
    L = ["# Zoo leaderboard", "", _intro(board), "",
         "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    L += ["| " + " | ".join(_cells(r)) + " |" for r in board["rows"]]
    rec = next((r for r in board["rows"] if r.get("recommended")), None)
    if rec is not None:
        L += ["", f"Recommended (lowest validation log-loss, exported to `best/`): "
                  f"**{rec['name']}**, validation {rec['val_log_loss']:.4f}, test "
                  f"{rec['log_loss']:.4f}."]
    if board["skipped"]:
        L += ["", "Skipped:", ""] + [f"- {s['name']} ({s['kind']}): {s['reason']}"
                                     for s in board["skipped"]]
    if board.get("stages"):
        L += ["", "Stages (planned vs actual):", "", "| stage | planned | actual |",
              "|---|---|---|"]
        L += [f"| {k} | {fmt_s(v.get('planned_s'))} | {fmt_s(v.get('actual_s'))} |"
              for k, v in board["stages"].items()]
    L += ["", "![accuracy vs inference cost](leaderboard_pareto.png)", ""]
    return "\n".join(L)


def leaderboard_html(rows: list[dict], board: dict | None = None) -> str:
    """The leaderboard as an HTML fragment (a ``<section>``) for ``report.html``."""
    import html

    e = html.escape
    head = "".join(f"<th>{e(c)}</th>" for c in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in _cells(r)) + "</tr>"
                   for r in rows)
    parts = ['<section id="zoo-leaderboard"><h2>Zoo leaderboard</h2>']
    if board:
        parts.append(f"<p>{e(_intro(board))}</p>")
    parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    if board and board.get("skipped"):
        parts.append("<p>Skipped:</p><ul>" + "".join(
            f"<li>{e(s['name'])} ({e(s['kind'])}): {e(s['reason'])}</li>"
            for s in board["skipped"]) + "</ul>")
    parts.append('<img src="leaderboard_pareto.png" alt="accuracy vs inference cost"></section>')
    return "\n".join(parts) + "\n"


def pareto_front(rows: list[dict]) -> list[int]:
    """Indices of the rows no other row beats on both accuracy and ms per image."""
    pts = [(r["ms_per_image"], r["accuracy"]) for r in rows]
    front = []
    for i, (c, a) in enumerate(pts):
        if c is None:
            continue
        if not any(c2 is not None and c2 <= c and a2 >= a and (c2 < c or a2 > a)
                   for j, (c2, a2) in enumerate(pts) if j != i):
            front.append(i)
    return front


def write_pareto(rows: list[dict], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [r for r in rows if r["ms_per_image"]]
    if not pts:
        return None
    colors = {"scratch": "tab:blue", "frozen": "tab:green", "fine-tuned": "tab:orange",
              "ensemble": "tab:red"}
    fig, ax = plt.subplots(figsize=(8, 5))
    for kind, c in colors.items():
        sub = [r for r in pts if r["kind"] == kind]
        if sub:
            ax.scatter([r["ms_per_image"] for r in sub], [100 * r["accuracy"] for r in sub],
                       c=c, label=kind, s=40, zorder=3)
    front = sorted((pts[i] for i in pareto_front(pts)), key=lambda r: r["ms_per_image"])
    ax.plot([r["ms_per_image"] for r in front], [100 * r["accuracy"] for r in front], "k--",
            lw=1, label="Pareto frontier", zorder=2)
    for r in front:
        ax.annotate(r["name"][:28], (r["ms_per_image"], 100 * r["accuracy"]), fontsize=7,
                    xytext=(4, -10), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("inference ms per image (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with bio.atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def write_leaderboard(out: Path, board: dict) -> Path:
    import csv
    import io

    out = Path(out)
    write_pareto(board["rows"], out / "leaderboard_pareto.png")
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_COLUMNS)
    for r in board["rows"]:
        vb = _vs(r) or {}
        w.writerow([r["rank"], int(bool(r.get("recommended"))), r["name"], r["kind"],
                    r.get("val_log_loss"), r.get("val_rows"), r.get("val_source"),
                    r["accuracy"], r["top5_accuracy"], r["log_loss"], vb.get("diff", 0.0),
                    vb.get("lo", ""), vb.get("hi", ""), r["ece"], r["fit_s"], r["img_per_s"],
                    r["ms_per_image"], r["params"], r["size_mb"], r["note"]])
    bio.write_text(out / "leaderboard.csv", buf.getvalue())
    bio.write_text(out / "leaderboard.html", leaderboard_html(board["rows"], board))
    bio.write_json(out / "zoo.json", board)
    md = out / "leaderboard.md"
    bio.write_text(md, leaderboard_markdown(board))
    return md


def load_board(out) -> dict:
    path = Path(out) / "zoo.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found; expected the output folder of "
                                f"`bench run --suite zoo`")
    return bio.read_json(path)


def find_row(board: dict, name: str) -> dict:
    """The leaderboard row called ``name`` (or its slug, or 'best': the recommended row, the
    lowest validation log-loss)."""
    rows = board["rows"]
    if name == "best":
        return next((r for r in rows if r.get("recommended")), rows[0])
    for r in rows:
        if r["name"] == name or slug(r["name"]) == slug(name):
            return r
    raise ValueError(f"--model {name!r}: no such leaderboard row; rows are: "
                     + "; ".join(r["name"] for r in rows))
