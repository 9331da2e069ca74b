"""The contact sheet: a PNG of the flagged images, each captioned with its reason, duplicate
pairs side by side, interleaved by kind so every kind shows on a capped sheet."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from runtime import io as bio

from .files import SourceFiles
from .options import KINDS


def _file_thumb(files: SourceFiles) -> Callable[[str, int], "object"]:
    def load(path: str, side: int):
        from PIL import Image, ImageOps

        im = Image.open(io.BytesIO(files.read(path)))
        if im.format == "JPEG":
            im.draft("RGB", (side, side))
        im = ImageOps.exif_transpose(im).convert("RGB")
        im.thumbnail((side, side), Image.BILINEAR)
        if max(im.size) < side:  # small originals (CIFAR): enlarge, pixels kept visible
            f = side / max(im.size)
            im = im.resize((max(1, round(im.width * f)), max(1, round(im.height * f))),
                           Image.NEAREST)
        return im
    return load


def _array_thumb(images: np.ndarray, paths: list[str]):
    index = {p: k for k, p in enumerate(paths)}

    def load(path: str, side: int):
        from PIL import Image

        return Image.fromarray(images[index[path]]).resize((side, side), Image.NEAREST)
    return load


def _sheet_items(result, pair_rows, findings, paths, kinds, cross_only) -> list[dict]:
    """Tiles: duplicate pairs (cross-split first) and single flagged images, interleaved by
    kind so every kind shows up on a capped sheet."""
    per_kind: dict[str, list[dict]] = {k: [] for k in KINDS}
    if "unreadable" in kinds and not cross_only:
        for s in result["skipped"]:
            per_kind["unreadable"].append({"paths": [], "caption": [s["path"], s["reason"]],
                                           "kind": "unreadable"})
    if cross_only:  # pairs that reach into the test split first: those inflate accuracy
        pair_rows = sorted(pair_rows, key=lambda p: "test" not in (p["a"]["split"],
                                                                   p["b"]["split"]))
    for p in pair_rows:
        kind = "exact-duplicate" if p["exact"] else "near-duplicate"
        if kind in kinds and (p["cross_split"] or not cross_only):
            a, b = p["a"], p["b"]
            where = f"{a['split']}/{b['split']}" if p["cross_split"] else a["split"]
            per_kind[kind].append({
                "paths": [a["path"], b["path"]], "kind": kind,
                "caption": [f"{kind} d={p['distance']} {where}"
                            + (" LABEL CONFLICT" if p["label_conflict"] else ""),
                            _short(a["path"]), _short(b["path"])]})
    if not cross_only:
        for k in sorted(findings):
            for f in findings[k]:
                if f["kind"] in ("low-resolution", "colour-outlier", "unreadable") \
                        and f["kind"] in kinds:
                    per_kind[f["kind"]].append({"paths": [paths[k]], "kind": f["kind"],
                                                "caption": [_short(paths[k]), f["reason"]]})
    items, queues = [], [q for q in per_kind.values() if q]
    while queues:
        for q in list(queues):
            items.append(q.pop(0))
            if not q:
                queues.remove(q)
    return items


def _short(path: str, n: int = 34) -> str:
    return path if len(path) <= n else "..." + path[-(n - 3):]


def _wrap(text: str, n: int) -> list[str]:
    out = []
    while len(text) > n:
        cut = text.rfind(" ", 0, n)
        cut = cut if cut > n // 2 else n
        out.append(text[:cut])
        text = text[cut:].lstrip()
    return out + [text]


def _draw_sheet(items: list[dict], load, path: Path, *, title: str, side: int = 112,
                cols: int | None = None) -> None:
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.load_default(size=11)
    except TypeError:  # Pillow without FreeType sizes
        font = ImageFont.load_default()
    cell_w, text_h, pad = 2 * side + 6, 5 * 13, 6
    cols = cols or max(1, min(5, len(items)))
    rows = math.ceil(len(items) / cols)
    sheet = Image.new("RGB", (cols * (cell_w + pad) + pad,
                              rows * (side + text_h + pad) + pad + 20), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 4), title, fill="black", font=font)
    for n, item in enumerate(items):
        x0 = pad + (n % cols) * (cell_w + pad)
        y0 = 20 + pad + (n // cols) * (side + text_h + pad)
        if not item["paths"]:
            draw.rectangle([x0, y0, x0 + side, y0 + side], fill=(200, 200, 200))
            draw.text((x0 + 6, y0 + side // 2 - 6), "unreadable", fill="black", font=font)
        for m, p in enumerate(item["paths"]):
            try:
                im = load(p, side)
            except Exception as e:  # the caption says what went wrong
                im = Image.new("RGB", (side, side), (200, 200, 200))
                item["caption"].append(f"thumbnail: {type(e).__name__}")
            sheet.paste(im, (x0 + m * (side + 6), y0))
        lines = [ln for c in item["caption"] for ln in _wrap(c, 44)][:5]
        colour = (170, 0, 0) if "LABEL CONFLICT" in item["caption"][0] else (0, 0, 0)
        for k, ln in enumerate(lines):
            draw.text((x0, y0 + side + 2 + 13 * k), ln, fill=colour if k == 0 else "black",
                      font=font)
    with bio.atomic_path(path, suffix=".png") as tmp:
        sheet.save(tmp, format="PNG", optimize=True)


def draw_inspection_sheet(result: dict, rows, pair_rows: list[dict], findings: dict,
                          path: Path, *, max_items: int, kinds: Sequence[str],
                          cross_only: bool) -> bool:
    """Draw ``inspect_dataset``'s contact sheet at ``path``; False when no tile qualifies."""
    loader = (_file_thumb(rows.files) if rows.files is not None
              else _array_thumb(rows.images, rows.paths))
    items = _sheet_items(result, pair_rows, findings, rows.paths, kinds, cross_only)
    if not items:
        return False
    _draw_sheet(items[:max_items], loader, path,
                title=f"{rows.ds.name}: {min(len(items), max_items)} of {len(items)} "
                      "flagged tiles")
    return True


def write_contact_sheet(result: dict, path: str | os.PathLike, *, max_items: int = 60,
                        kinds: Sequence[str] = KINDS, cross_split_only: bool = False) -> Path:
    """A PNG of the flagged images of an inspect ``result`` (as returned or read back from
    ``inspect.json``), each captioned with its reason; duplicate pairs side by side. Reads
    the thumbnails from the source files (folder or zip) named in the result."""
    if not result["dataset"].get("files_available"):
        raise ValueError(f"{result['dataset']['spec']}: no source files to draw from; the "
                         "contact sheet of a digits/tfds data set is written by "
                         "inspect_dataset(out_dir=...)")
    files = SourceFiles(Path(result["dataset"]["source"]))
    pairs = [{**p, "_rows": None} for p in result["near_duplicates"]["listed"]]
    findings = {}
    paths = []
    for k, f in enumerate(result["flagged"]):
        paths.append(f["path"])
        findings[k] = [{"kind": kind, "reason": r} for kind, r in zip(
            _kinds_of_reasons(f["reasons"]), f["reasons"])]
    items = _sheet_items(result, pairs, findings, paths, tuple(kinds), cross_split_only)
    path = Path(path)
    _draw_sheet(items[:max_items], _file_thumb(files), path,
                title=f"{result['dataset']['name']}: {min(len(items), max_items)} of "
                      f"{len(items)} flagged")
    return path


def _kinds_of_reasons(reasons: list[str]) -> list[str]:
    out = []
    for r in reasons:
        out.append(next((k for k in KINDS if r.startswith(k.replace("-", " "))),
                        "unreadable" if "unreadable" in r else "colour-outlier"))
    return out
