"""Decoding: Pillow, once per image, in a thread pool; unreadable files are skipped with a reason."""

from __future__ import annotations

import contextlib
import io
import logging
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np

if TYPE_CHECKING:
    from .options import Options
    from .sources import Source

log = logging.getLogger('bench.data')

RESIZE_METHOD = ("PIL bilinear (antialiased), aspect not preserved; JPEG reduced by "
                 "Image.draft to no less than the target first; EXIF orientation applied; "
                 "alpha composited on white")

_CHUNK = 256               # images per decode task: small enough for a smooth progress bar


DEFAULT_MAX_PIXELS = 40_000_000  # about 160 MB of RGBA at decode; Pillow warns at 89 M


def max_pixels() -> int:
    """The decode budget: ``$BENCH_MAX_PIXELS``, else ``DEFAULT_MAX_PIXELS``. Checked from the
    header before any pixel is decoded; a larger image is skipped with the reason."""
    import os

    try:
        return max(1, int(os.environ.get("BENCH_MAX_PIXELS") or DEFAULT_MAX_PIXELS))
    except ValueError:
        raise ValueError(f"$BENCH_MAX_PIXELS {os.environ['BENCH_MAX_PIXELS']!r}: expected a "
                         f"positive integer") from None


def decode_image(data: bytes | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Encoded image bytes (or a (H, W[, C]) uint8 array) -> uint8 RGB array of ``size``.

    Raises whatever Pillow raises for unreadable data; :func:`_decode_chunk` turns that into
    a skip reason.
    """
    from PIL import Image, ImageOps

    h, w = size
    if isinstance(data, np.ndarray):
        im = Image.fromarray(data[..., 0] if data.ndim == 3 and data.shape[-1] == 1 else data)
    else:
        if len(data) == 0:
            raise _Unreadable("empty file (0 bytes)")
        im = Image.open(io.BytesIO(data))
        if im.format == "JPEG":
            # DCT-domain downscale by up to 8x, never below the target (square bound: the
            # EXIF rotation below may swap the sides).
            im.draft("RGB", (max(h, w), max(h, w)))
        budget = max_pixels()
        pixels = im.size[0] * im.size[1]  # what decoding allocates (after the JPEG draft)
        if pixels > budget:
            raise _Unreadable(f"{im.size[0]}x{im.size[1]} pixels to decode exceed the budget "
                              f"of {budget:,} ($BENCH_MAX_PIXELS)")
        if "exif" in im.info or im.format == "TIFF":
            im = ImageOps.exif_transpose(im)
    im = _to_rgb(im)
    if im.size != (w, h):
        im = im.resize((w, h), Image.BILINEAR)
    return np.asarray(im, dtype=np.uint8)


class _Unreadable(Exception):
    """A file that is not a decodable image, with the reason to report."""


def _to_rgb(im):
    """Any Pillow mode -> RGB; transparent pixels are composited onto white."""
    from PIL import Image

    if im.mode == "RGB" and "transparency" not in im.info:
        im.load()
        return im
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        a = np.asarray(im)
        if im.mode.startswith("I;16") or (im.mode == "I" and a.max(initial=0) > 255):
            a = np.clip(a, 0, 65535) // 257        # 16-bit range -> 8-bit
        im = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        im = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, im)
    return im.convert("RGB")


def _skip_reason(e: Exception) -> str:
    from PIL import UnidentifiedImageError

    if isinstance(e, _Unreadable):
        return str(e)
    if isinstance(e, UnidentifiedImageError):
        return "not an image (Pillow cannot identify the format)"
    msg = str(e)
    if isinstance(e, OSError) and "truncated" in msg.lower():
        return f"truncated image ({msg})"
    return f"{type(e).__name__}: {msg}"


def _decode_into(out: np.ndarray, keys: Sequence, reader):
    """Decode ``keys`` into ``out`` (their slice of the result) -> (ok mask, [(key, reason)])."""
    ok = np.zeros(len(keys), bool)
    bad = []
    for i, key in enumerate(keys):
        try:
            out[i] = decode_image(reader.read(key), out.shape[1:3])
            ok[i] = True
        except Exception as e:  # any failure of one file is that file's problem, reported
            bad.append((key, _skip_reason(e)))
    return ok, bad


def decode_all(src: Source, keys: list, opts: Options, desc: str):
    """Decode every key, in a thread pool; returns images, ok mask, skipped."""
    n = len(keys)
    images = np.empty((n, *opts.size, 3), np.uint8)
    ok = np.zeros(n, bool)
    bad: list = []
    starts = range(0, n, _CHUNK)

    def chunk(start):  # threads write disjoint slices of ``images``
        stop = min(start + _CHUNK, n)
        return _decode_into(images[start:stop], keys[start:stop], src.reader)

    with progress_bar(opts.progress, desc, n) as advance, contextlib.ExitStack() as stack:
        if opts.workers <= 1 or n <= _CHUNK or not src.parallel:
            results = map(chunk, starts)
        else:
            from concurrent.futures import ThreadPoolExecutor

            pool = stack.enter_context(ThreadPoolExecutor(opts.workers,
                                                          thread_name_prefix="decode"))
            results = pool.map(chunk, starts)
        for start, (mask, chunk_bad) in zip(starts, results):
            ok[start:start + len(mask)] = mask
            bad.extend(chunk_bad)
            advance(len(mask))
    skipped = [{"path": src.reader.display(k), "reason": r} for k, r in bad]
    skipped.sort(key=lambda d: d["path"])
    return (images if ok.all() else images[ok]), ok, skipped




@contextlib.contextmanager
def progress_bar(enabled: bool, desc: str, total: int) -> Iterator[Callable[[int], None]]:
    if not enabled or total == 0:
        yield lambda k: None
        return
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    with Progress(TextColumn("decoding {task.description}"), BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True)) as bar:
        task = bar.add_task(desc, total=total)
        yield lambda k: bar.advance(task, k)


# --------------------------------------------------------------------------------------------
# Cache: one folder of .npy files per (source, image size), renamed into place when complete.
