"""What an inspection writes: the ``inspect.json`` result, ``inspect.md``, the HTML section
for ``report.html``, and the exclusion list (written and read back)."""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path

import numpy as np

from runtime import io as bio

from .duplicates import Duplicates
from .files import Findings, Rows
from .options import KINDS, SPLIT_ORDER
from .stats import COLOUR_STATS

_MAX_PAIRS_LISTED = 5000       # pairs written to inspect.json (all are counted)


def flagged_and_excluded(rows: Rows, found: Findings, exclude) -> tuple[list, list]:
    """Flagged files in split then file order, and those of the ``exclude`` kinds (with the
    loader's unreadable files)."""
    split_of = rows.split_of
    flagged = []
    for k in sorted(found, key=lambda k: (SPLIT_ORDER.index(split_of[k]), k)):
        flagged.append({**rows.row(k), "kinds": sorted({f["kind"] for f in found[k]},
                                                       key=KINDS.index),
                        "reasons": [f["reason"] for f in found[k]]})
    exclusions = [f for f in flagged if set(f["kinds"]) & set(exclude)]
    exclusions += [{"path": s["path"], "split": None, "label": None, "kinds": ["unreadable"],
                    "reasons": [s["reason"]]} for s in rows.skipped if "unreadable" in exclude]
    return flagged, exclusions


def build_result(rows: Rows, dups: Duplicates, found: Findings, *, settings: dict,
                 seed: int, val_fraction: float, test_fraction: float, fences: dict,
                 low_res: dict, sizes: dict) -> dict:
    """The content of ``inspect.json`` (timing and outputs filled in afterwards)."""
    from .stats import class_counts

    ds = rows.ds
    counts, per_class, balance = class_counts(rows)
    flagged, exclusions = flagged_and_excluded(rows, found, settings["exclude"])
    return {
        "dataset": {
            "spec": rows.spec, "name": ds.name, "source": ds.source, "classes": ds.classes,
            "fingerprint": ds.fingerprint, "source_fingerprint": ds.source_fingerprint,
            "layout": ds.split_info.get("layout", ""),
            "split_method": ds.split_info.get("method", ""), "seed": seed,
            "val_fraction": val_fraction, "test_fraction": test_fraction,
            "image_size": list(ds.image_size), "cache": ds.cache,
            "files_available": rows.is_files,
        },
        "settings": settings,
        "counts": {"images": len(rows), "per_split": counts,
                   "per_class": {c: int(v) for c, v in zip(ds.classes, per_class)},
                   "balance": balance, "skipped": len(rows.skipped),
                   "ignored": len(rows.ignored), "flagged": len(flagged),
                   "excluded": len(exclusions)},
        "sizes": sizes,
        "skipped": rows.skipped,
        "ignored": [{"path": p, "reason": "not an image file extension"} for p in rows.ignored],
        **_duplicate_sections(rows, dups, settings["near_threshold"]),
        "colour": {"stats": list(COLOUR_STATS), "fences": fences,
                   "outliers": sum("colour-outlier" in f["kinds"] for f in flagged)},
        "low_resolution": low_res,
        "flagged": flagged,
        "exclusions": [{"path": f["path"], "split": f["split"], "reasons": f["reasons"]}
                       for f in exclusions],
        "timing": {},
        "outputs": {},
    }


def _duplicate_sections(rows: Rows, dups: Duplicates, threshold: int) -> dict:
    """inspect.json's ``exact_duplicates``, ``near_duplicates`` and ``duplicate_groups``."""
    split_of, labels, groups = rows.split_of, rows.labels, dups.exact_groups
    pair_rows = dups.pair_rows
    return {
        "exact_duplicates": {
            "groups": len(groups), "extra_files": sum(len(g) - 1 for g in groups),
            "cross_split_groups": sum(len({split_of[k] for k in g}) > 1 for g in groups),
            "label_conflicts": sum(len({int(labels[k]) for k in g}) > 1 for g in groups),
        },
        "near_duplicates": {
            "threshold": threshold, "pairs": len(pair_rows),
            "pairs_exact_bytes": int(dups.same_bytes.sum()),
            "cross_split_pairs": sum(1 for p in pair_rows if p["cross_split"]),
            "by_splits": dict(sorted(dups.by_splits.items())),
            "label_conflict_pairs": sum(p["label_conflict"] for p in pair_rows),
            "distance_hist": {str(d): int(c) for d, c in zip(*np.unique(dups.pd,
                                                                        return_counts=True))},
            "search": {**dups.search, "images": len(rows)},
            "listed": [{k: v for k, v in p.items() if k != "_rows"}
                       for p in pair_rows[:_MAX_PAIRS_LISTED]],
        },
        "duplicate_groups": dups.groups,
    }


def write_exclusions(out: Path, result: dict) -> None:
    """Write ``exclusions.txt`` and ``exclusions.json`` (the format: the package docstring)."""
    ds = result["dataset"]
    lines = ["# bench inspect exclusion list: one source-relative path a line",
             f"# source: {ds['source']}",
             f"# source_fingerprint: {ds['source_fingerprint']}",
             f"# kinds: {','.join(result['settings']['exclude'])}; "
             f"near_threshold {result['settings']['near_threshold']}"]
    lines += [e["path"] for e in result["exclusions"]]
    bio.write_text(out / "exclusions.txt", "\n".join(lines) + "\n")
    bio.write_json(out / "exclusions.json", {
        "source": ds["source"], "source_fingerprint": ds["source_fingerprint"],
        "settings": result["settings"], "files": result["exclusions"]})


def read_exclusions(path: str | os.PathLike) -> list[str]:
    """Source-relative paths of an ``exclusions.txt`` (one a line, ``#`` comments) or an
    ``exclusions.json`` (``{"files": [{"path": ...}]}``), in file order, without repeats."""
    path = Path(path)
    try:
        text = path.read_text("utf-8")
    except OSError as e:
        raise ValueError(f"exclusion list {str(path)!r}: cannot read it ({e.strerror})") \
            from None
    if path.suffix == ".json":
        try:
            files = json.loads(text)["files"]
            paths = [f["path"] if isinstance(f, dict) else f for f in files]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"exclusion list {str(path)!r}: expected JSON "
                             f"{{\"files\": [{{\"path\": ...}}]}} ({type(e).__name__}: {e})") \
                from None
        if not all(isinstance(p, str) and p for p in paths):
            raise ValueError(f"exclusion list {str(path)!r}: every file needs a non-empty "
                             "'path' string")
    else:
        paths = [ln.rstrip("\r") for ln in text.split("\n")]
        paths = [p for p in paths if p.strip() and not p.startswith("#")]
    return list(dict.fromkeys(paths))



def _table_md(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return out


def _hist_rows(hist: dict, fmt: str) -> list[list]:
    e, c = hist["edges"], hist["counts"]
    return [[f"{fmt.format(e[i])} to {fmt.format(e[i + 1])}", c[i]] for i in range(len(c))
            if c[i]]


def inspect_markdown(result: dict, max_rows: int = 40) -> str:
    """``inspect.md``: the findings of :func:`inspect_dataset` for a reader."""
    ds, c = result["dataset"], result["counts"]
    L = [f"# Inspection of {ds['name']}", "",
         f"Source `{ds['source']}` ({ds['layout']}; splits: {ds['split_method']}, seed "
         f"{ds['seed']}, val {ds['val_fraction']}, test {ds['test_fraction']}). "
         f"{c['images']} decoded images, {c['skipped']} unreadable, {c['ignored']} ignored "
         f"(not an image extension). {c['flagged']} flagged, {c['excluded']} in "
         "`exclusions.txt`.", ""]
    L += _md_classes_and_sizes(result)
    L += _md_files_and_duplicates(result, max_rows)
    L += _md_colour_and_flagged(result, max_rows)
    t = result["timing"]
    L += ["", "Timing (s): " + ", ".join(f"{k[:-2]} {v}" for k, v in t.items()), ""]
    return "\n".join(L)


def _md_classes_and_sizes(result: dict) -> list[str]:
    """inspect.md's class table and balance, and the original sizes."""
    ds, c = result["dataset"], result["counts"]
    L = ["## Classes", ""]
    splits = [s for s in SPLIT_ORDER if sum(c["per_split"][s].values())]
    L += _table_md(["class"] + splits + ["all"],
                   [[k] + [c["per_split"][s][k] for s in splits] + [c["per_class"][k]]
                    for k in ds["classes"]])
    b = c["balance"]
    L += ["", f"Balance: largest {b['max_class']} ({b['max']}), smallest {b['min_class']} "
          f"({b['min']}), ratio {b['max_over_min']}; normalised entropy "
          f"{b['normalised_entropy']} (1 = balanced).", ""]
    s = result["sizes"]
    if s:
        L += ["## Original image sizes", "",
              f"{s['distinct_sizes']} distinct sizes; most common: "
              + ", ".join(f"{m['w']}x{m['h']} ({m['count']})" for m in s["most_common"])
              + ". Shorter side: " + ", ".join(f"{k} {v:g}" for k, v in s["shorter_side"].items())
              + "; aspect w/h: " + ", ".join(f"{k} {v:g}" for k, v in
                                             s["aspect_w_over_h"].items()) + ".", ""]
        L += _table_md(["shorter side (px)", "images"], _hist_rows(s["shorter_side_hist"],
                                                                    "{:g}"))
        L += [""] + _table_md(["aspect w/h", "images"], _hist_rows(s["aspect_hist"], "{:.2f}"))
        L += [""]
    return L


def _md_files_and_duplicates(result: dict, max_rows: int) -> list[str]:
    """inspect.md's unreadable and ignored files, and the duplicates."""
    nd, ex = result["near_duplicates"], result["exact_duplicates"]
    L = ["## Unreadable and ignored files", ""]
    if result["skipped"] or result["ignored"]:
        L += _table_md(["file", "reason"], [[f"`{x['path']}`", x["reason"]] for x in
                                            (result["skipped"] + result["ignored"])[:max_rows]])
    else:
        L += ["None."]
    L += ["", "## Duplicates", "",
          f"Exact (same SHA-256 of the file): {ex['groups']} group(s), {ex['extra_files']} "
          f"extra file(s), {ex['cross_split_groups']} across splits, {ex['label_conflicts']} "
          "with conflicting labels.", "",
          f"Near (pHash Hamming distance <= {nd['threshold']} and grey correlation >= "
          f"{result['settings']['near_min_corr']}; {nd['search']['rejected_by_correlation']} "
          f"hash pair(s) rejected by the correlation): {nd['pairs']} pair(s) "
          f"({nd['pairs_exact_bytes']} of them byte-identical), {nd['cross_split_pairs']} "
          f"across splits; by splits: "
          + (", ".join(f"{k} {v}" for k, v in nd["by_splits"].items()) or "none")
          + f"; {nd['label_conflict_pairs']} with different labels. Distances: "
          + (", ".join(f"{k}: {v}" for k, v in nd["distance_hist"].items()) or "none")
          + f". Search: {nd['search']['bands']} bands, {nd['search']['candidates_verified']} "
          f"candidate pairs verified for {nd['search']['images']} images.", ""]
    if nd["listed"]:
        L += _table_md(["d", "splits", "a", "b", "labels"],
                       [[p["distance"], f"{p['a']['split']}/{p['b']['split']}",
                         f"`{p['a']['path']}`", f"`{p['b']['path']}`",
                         p["a"]["label"] if not p["label_conflict"]
                         else f"**{p['a']['label']} / {p['b']['label']}**"]
                        for p in nd["listed"][:max_rows]])
        if nd["pairs"] > max_rows:
            L += ["", f"({nd['pairs'] - max_rows} more in inspect.json.)"]
    return L


def _md_colour_and_flagged(result: dict, max_rows: int) -> list[str]:
    """inspect.md's colour fences, the resolution rule, the flagged files and the sheet."""
    col, lr = result["colour"], result["low_resolution"]
    L = ["", "## Colour statistics (IQR) and resolution", "",
         f"{col['outliers']} image(s) outside [Q1 - {result['settings']['iqr_k']} IQR, Q3 + "
         f"{result['settings']['iqr_k']} IQR] on a per-image colour statistic:", ""]
    L += _table_md(["statistic", "Q1", "Q3", "low fence", "high fence"],
                   [[k, v["q1"], v["q3"], v["low"], v["high"]] for k, v in col["fences"].items()])
    if lr:
        L += ["", f"Low resolution ({lr['rule']}): {lr['count']} image(s)."]
    L += ["", "## Flagged files", ""]
    if result["flagged"]:
        L += _table_md(["file", "split", "label", "reasons"],
                       [[f"`{f['path']}`", f["split"], f["label"], "; ".join(f["reasons"])]
                        for f in result["flagged"][:max_rows]])
        if len(result["flagged"]) > max_rows:
            L += ["", f"({len(result['flagged']) - max_rows} more in inspect.json.)"]
    else:
        L += ["None."]
    if result["outputs"].get("contact_sheet"):
        L += ["", f"![flagged images]({result['outputs']['contact_sheet']})"]
    return L


def inspect_html_section(result: dict, out_dir: str | os.PathLike | None = None) -> str:
    """An HTML fragment (``<section>``) for ``report.html``: the headline figures, class
    counts, cross-split duplicates and the contact sheet inlined as base64 PNG (read from
    ``out_dir``/contact.png when given and present). Self-contained: no external files."""
    e = html.escape
    ds, c, nd = result["dataset"], result["counts"], result["near_duplicates"]
    ex = result["exact_duplicates"]
    out = [f'<section class="inspect"><h2>Data inspection: {e(ds["name"])}</h2>',
           f'<p class="meta"><code>{e(ds["source"])}</code>, {e(ds["layout"])}; splits '
           f'{e(ds["split_method"])} (seed {ds["seed"]})</p>', "<ul>",
           f"<li>{c['images']} images, {len(ds['classes'])} classes; balance ratio "
           f"{c['balance']['max_over_min']} (largest/smallest)</li>",
           f"<li>{c['skipped']} unreadable, {c['ignored']} ignored</li>",
           f"<li>exact duplicates: {ex['groups']} groups ({ex['cross_split_groups']} across "
           "splits)</li>",
           f"<li>near duplicates (pHash d &le; {nd['threshold']}): {nd['pairs']} pairs, "
           f"<strong>{nd['cross_split_pairs']} across splits</strong> "
           f"({e(', '.join(f'{k} {v}' for k, v in nd['by_splits'].items()) or 'none')})</li>",
           f"<li>colour outliers (IQR): {result['colour']['outliers']}; low resolution: "
           f"{result['low_resolution'].get('count', 'n/a')}</li>",
           f"<li>{c['flagged']} flagged, {c['excluded']} in the exclusion list</li></ul>"]
    splits = [s for s in SPLIT_ORDER if sum(c["per_split"][s].values())]
    out.append("<table><thead><tr><th>class</th>" + "".join(f"<th>{s}</th>" for s in splits)
               + "</tr></thead><tbody>")
    for k in ds["classes"]:
        out.append(f"<tr><td>{e(k)}</td>" + "".join(
            f"<td>{c['per_split'][s][k]}</td>" for s in splits) + "</tr>")
    out.append("</tbody></table>")
    cross = [p for p in nd["listed"] if p["cross_split"]][:20]
    if cross:
        out.append("<table><thead><tr><th>d</th><th>splits</th><th>a</th><th>b</th></tr>"
                   "</thead><tbody>")
        out += [f"<tr><td>{p['distance']}</td><td>{e(p['a']['split'])}/{e(p['b']['split'])}"
                f"</td><td><code>{e(p['a']['path'])}</code></td><td><code>"
                f"{e(p['b']['path'])}</code></td></tr>" for p in cross]
        out.append("</tbody></table>")
    sheet = result["outputs"].get("contact_sheet")
    if sheet and out_dir is not None and (Path(out_dir) / sheet).is_file():
        data = base64.b64encode((Path(out_dir) / sheet).read_bytes()).decode("ascii")
        out.append(f'<img alt="flagged images" src="data:image/png;base64,{data}">')
    out.append("</section>")
    return "\n".join(out)
