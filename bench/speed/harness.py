"""``bench speed``: model throughput in the manner of timm's ``benchmark.py``.

For each model, one jitted SGD train step and one inference step at a fixed batch and input
size, compiled ahead of time (compile time reported apart), then ``warmup`` untimed steps and
the median of ``repeats`` timed steps, each ended by ``block_until_ready``. FLOPs come from
XLA's cost analysis of the compiled steps (a multiply-add counts as 2), which gives achieved
TFLOP/s and, where the device's dense peak is in ``PEAK_TFLOPS``, model FLOPs utilisation.

The steps timed are ``engine.build_steps``' -- the ones ``bench train`` runs -- on random uint8
images already on the device: the on-device gather, augmentation and preprocessing are in
the step, the host-side data pipeline is not (``tests/benchmarks`` times that).
``precision='bf16'`` is mixed precision: float32 master parameters, gradients and optimizer
state; inside the step the parameters and inputs are cast to bfloat16, every Flax layer
computes in bfloat16, BatchNorm statistics and the loss stay float32. ``vs=("keras", "torch", "timm")`` also times the same architecture in those
frameworks (``bench.speed.peers``; ``torch+compile``, ``timm+compile`` through
``torch.compile``) and adds ours/peer ratio columns.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import numpy as np

import models
from models import get_model_info
from models.layers import conv_description

from bench import engine
from bench.config import RunConfig, make
from runtime import io as bio
from runtime.devices import device_description, device_line
from runtime.malloc import allocator
from runtime.onednn import custom_call_flops
from runtime.versions import versions as _base_versions

from .timing import (PEAK_TFLOPS, ROW_KEYS, cpu_peak, cpu_peak_text, new_row,  # noqa: F401
                     peak_tflops, taking_turns, time_calls)


PRECISIONS = ("fp32", "bf16")

@dataclasses.dataclass
class Prepared:
    """A model's compiled train and inference steps with their state and synthetic batch.

    ``train_step()`` and ``infer_step()`` run one step each and block until it is done.
    FLOPs are per step over all devices.
    """

    name: str
    precision: str
    batch: int
    image_size: int
    num_classes: int
    params: int
    mesh: engine.Mesh
    state: dict
    x: jax.Array
    y: jax.Array
    train: Callable | None = None
    infer: Callable | None = None
    train_compile_s: float | None = None
    infer_compile_s: float | None = None
    train_flops: float | None = None
    infer_flops: float | None = None
    train_lowered: Any = None  # jax Lowered: .as_text() is the program before XLA's passes
    infer_lowered: Any = None

    steps: Any = None  # engine.Steps: the functions bench train runs
    train_args: tuple = ()  # (x_all, y_all, idx, key) of the train step

    def train_step(self) -> jax.Array:
        self.state, m = self.train(self.state, *self.train_args)
        return m["loss"].block_until_ready()

    def infer_step(self) -> jax.Array:
        return self.infer(self.state, self.x).block_until_ready()


def _flops(compiled, n_devices: int) -> float | None:
    """FLOPs of one call over all devices (XLA reports those of one partition)."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # some backends do not implement it
        return None
    if isinstance(cost, (list, tuple)):  # older jax: one dict per partition
        cost = cost[0] if cost else None
    flops = (cost or {}).get("flops")
    if flops is not None:
        # oneDNN convolutions are custom calls, which XLA counts as -1 FLOP each.
        conv_flops, calls = custom_call_flops(compiled.as_text())
        flops = flops + calls + conv_flops
    return float(flops) * n_devices if flops and flops > 0 else None


def prepare(name: str, batch_size: int, image_size: int | None = None, *,
            precision: str = "fp32", mesh: engine.Mesh | None = None,
            num_classes: int | None = None, train: bool = True, infer: bool = True,
            seed: int = 0, config: RunConfig | None = None) -> Prepared:
    """Build ``name`` and compile, ahead of time, exactly the steps ``bench train`` runs
    (``engine.build_steps``: on-device gather, augmentation, preprocessing, forward, loss,
    backward, the optimizer) for ``precision`` over ``mesh``, on a synthetic uint8 batch. The
    optimizer and augmentation are ``config``'s (default: ``bench train``'s defaults); the
    compile times and XLA FLOP counts are kept."""
    engine.compute_dtype(precision)  # refuses an unknown precision before any work
    cfg = (config or make(model=name)).replace(model=name, precision=precision)
    mesh = mesh or engine.Mesh.create()
    size = image_size or get_model_info(name).input_size[0]
    check_size(name, size)
    if batch_size < mesh.n or batch_size % mesh.n:
        raise ValueError(f"batch size {batch_size}: must be a positive multiple of the "
                         f"{mesh.n} devices")
    info = get_model_info(name)
    model = models.create_model(name, num_classes, seed=seed, image_size=size)
    num_classes = model.num_classes
    params = models.param_count(model)["total"]
    schedule = engine.make_schedule(cfg.optim, 100, cfg.optim.epochs)
    tx = engine.make_optimizer(cfg.optim, schedule)
    steps = engine.build_steps(model, tx, num_classes=num_classes,
                               preprocessing=info.preprocessing, augment=cfg.augment,
                               label_smoothing=cfg.optim.label_smoothing, mesh=mesh,
                               precision=precision)
    state = engine.replicate(engine.init_state(model, tx), mesh)
    del model

    rng = np.random.default_rng(seed)
    x_all = engine.to_global(rng.integers(0, 256, (batch_size, size, size, 3), np.uint8),
                             mesh.replicated)
    y_all = engine.to_global(rng.integers(0, num_classes, batch_size).astype(np.int32),
                             mesh.replicated)
    idx = engine.to_global(np.arange(batch_size, dtype=np.int32), mesh.data)
    x = engine.to_global(np.asarray(x_all), mesh.data)
    key = jax.random.key(seed)
    prep = Prepared(name=name, precision=precision, batch=batch_size, image_size=size,
                    num_classes=num_classes, params=params, mesh=mesh, state=state, x=x,
                    y=y_all, steps=steps, train_args=(x_all, y_all, idx, key))
    if train:
        t0 = time.perf_counter()
        prep.train_lowered = steps.train.lower(state, x_all, y_all, idx, key)
        prep.train = prep.train_lowered.compile()
        prep.train_compile_s = time.perf_counter() - t0
        prep.train_flops = _flops(prep.train, mesh.n)
    if infer:
        t0 = time.perf_counter()
        prep.infer_lowered = steps.eval.lower(state, x)
        prep.infer = prep.infer_lowered.compile()
        prep.infer_compile_s = time.perf_counter() - t0
        prep.infer_flops = _flops(prep.infer, mesh.n)
    return prep


def check_size(name: str, size: int) -> None:
    lo = get_model_info(name).min_input_size
    if lo is not None and (size < lo[0] or size < lo[1]):
        raise ValueError(f"{name}: input size {size} is below its minimum "
                         f"{lo[0]}x{lo[1]}")


def measure(name: str, batch_size: int, image_size: int | None = None, *,
            precision: str = "fp32", mesh: engine.Mesh | None = None, warmup: int = 2,
            repeats: int = 10, train: bool = True, infer: bool = True,
            num_classes: int | None = None) -> dict:
    """One row of ``speed`` at exactly this batch size (no out-of-memory back-off)."""
    mesh = mesh or engine.Mesh.create()
    prep = prepare(name, batch_size, image_size, precision=precision, mesh=mesh,
                   num_classes=num_classes, train=train, infer=infer)
    kind = jax.devices()[0].device_kind
    row = new_row(name, "jax", precision, prep.image_size, batch_size)
    peak = peak_tflops(kind, precision)
    if peak and kind.lower() == "cpu":  # the whole CPU's peak, shared by its host devices
        peak /= max(1, len(jax.local_devices(backend="cpu")))
    row.update(devices=mesh.n, device=f"{mesh.n}x {kind}", params=prep.params,
               peak_tflops=peak)
    for phase, step, flops, compile_s in (
            ("train", prep.train_step if train else None, prep.train_flops,
             prep.train_compile_s),
            ("infer", prep.infer_step if infer else None, prep.infer_flops,
             prep.infer_compile_s)):
        if step is None:
            continue
        _, median = time_calls(step, warmup, repeats)
        row[f"{phase}_img_per_s"] = batch_size / median
        row[f"{phase}_step_ms"] = 1000 * median
        row[f"{phase}_compile_s"] = compile_s
        if flops:
            row[f"{phase}_gflops_per_img"] = flops / batch_size / 1e9
            tflops = flops / median / 1e12
            row[f"{phase}_tflops"] = tflops
            if peak:
                row[f"{phase}_mfu"] = tflops / (peak * mesh.n)
    if train and not np.isfinite(float(prep.train_step())):
        row["note"] = "the train loss is not finite"
    return row


def is_out_of_memory(e: BaseException) -> bool:
    """XLA's allocation failure (``XlaRuntimeError: RESOURCE_EXHAUSTED``)."""
    text = str(e)
    return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text


def parse_precisions(precision: str | Sequence[str]) -> tuple[str, ...]:
    """``'fp32'``, ``'fp32,bf16'`` or a sequence of them -> a tuple of known precisions, in
    order, without repeats; an unknown one raises ``ValueError`` (before any work)."""
    items = precision.split(",") if isinstance(precision, str) else list(precision)
    out: list[str] = []
    for p in (str(i).strip() for i in items):
        if p and p not in out:
            engine.compute_dtype(p)  # ValueError for an unknown precision
            out.append(p)
    if not out:
        raise ValueError("no precision given: expected fp32, bf16 or fp32,bf16")
    return tuple(out)


def parse_peaks(text: str | None) -> dict[str, float]:
    """``'bf16=790,fp32=400'`` (TF/s per device, e.g. a measured matmul peak) -> a dict."""
    peaks: dict[str, float] = {}
    for item in (t.strip() for t in (text or "").split(",") if t.strip()):
        prec, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--peak-tflops {item!r}: expected PRECISION=TFLOPS, "
                             "e.g. bf16=790")
        engine.compute_dtype(prec.strip())
        try:
            peaks[prec.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--peak-tflops {item!r}: {value!r} is not a number") from None
        if peaks[prec.strip()] <= 0:
            raise ValueError(f"--peak-tflops {item!r}: must be positive")
    return peaks


def add_measured_mfu(row: dict, peaks: dict[str, float] | None) -> None:
    """Add ``measured_peak_tflops`` and ``{train,infer}_mfu_measured`` (achieved TFLOP/s over
    ``peaks[row precision]`` times the devices) to a row of ours; the spec-sheet ``*_mfu``
    stay as they are."""
    peak = (peaks or {}).get(row.get("precision"))
    if not peak:
        return
    row["measured_peak_tflops"] = peak
    for phase in ("train", "infer"):
        tflops = row.get(f"{phase}_tflops")
        row[f"{phase}_mfu_measured"] = tflops / (peak * (row.get("devices") or 1)) \
            if tflops else None


def speed(models: Sequence[str], batch_size: int = 64, image_size: int | None = None,
          precision: str | Sequence[str] = "fp32", devices: int | None = None,
          warmup: int = 2, repeats: int = 10, train: bool = True, infer: bool = True,
          vs: Sequence[str] = (), num_classes: int | None = None,
          torch_compile: bool = False, progress: Callable[[str], None] | None = None,
          measured_peaks: dict[str, float] | None = None,
          isolate_peers: bool = True) -> list[dict]:
    """Time each model's train and inference steps (and its peers', with ``vs``).

    Args:
      models: registered model names.
      batch_size: global batch over ``devices``; one that runs out of device memory is halved
        until it fits, and the row's ``batch_note`` says so.
      image_size: square input size; None for each model's own (``ModelInfo.input_size``).
      precision: ``'fp32'``, ``'bf16'`` (mixed precision, see the module docstring), or
        several (``'fp32,bf16'`` or a sequence): each model is timed in each, in order.
      devices: the first N local devices (data parallel); None for all.
      warmup, repeats: untimed steps, then timed steps whose median is reported.
      train, infer: which steps to time.
      vs: peers to time too, from ``bench.peers.PEERS`` (``'keras'``, ``'torch'``,
        ``'timm'``) or ``COMPILED`` (``'torch+compile'``, ``'timm+compile'``).
      num_classes: head size; None for each model's default.
      torch_compile: run every PyTorch peer through ``torch.compile``.
      progress: called with a line of text as each row is done.
      measured_peaks: ``{precision: TFLOP/s per device}``, e.g. a measured matmul peak: our
        rows also get ``*_mfu_measured`` against it (``*_mfu`` stays against the spec).
      isolate_peers: time each peer in a process of its own, taking turns with ours call by
        call (``peers.PeerTurns``: no OpenMP runtime or thread pool shared with ours, and
        the machine's load alike on both sides); False, in this process, after ours.

    Returns:
      Rows with ``ROW_KEYS``: ours (``framework='jax'``) with ``train_vs_<peer>`` and
      ``infer_vs_<peer>`` ratios (ours / peer img/s at the same precision, above 1 = we are
      faster), each followed by its peer rows; per model, one such group per precision.
    """
    from . import peers

    precisions = parse_precisions(precision)
    for peer in vs:
        peers.check_peer(peer)
    for name in models:  # every name and size checked before any work
        check_size(name, image_size or get_model_info(name).input_size[0])
    if not (train or infer):
        raise ValueError("nothing to time: both train and infer are off")
    mesh = engine.Mesh.create(devices)
    batch_size = max(mesh.n, batch_size - batch_size % mesh.n)
    rows = []
    timed = dict(warmup=warmup, repeats=repeats, train=train, infer=infer,
                 num_classes=num_classes)
    for name in models:
        for prec in precisions:
            size = image_size or get_model_info(name).input_size[0]
            peer_kw = dict(precision=prec, torch_compile=torch_compile, **timed)
            # Peers in processes of their own take turns with ours, call by call.
            turns = (peers.PeerTurns(list(vs), name, batch_size=batch_size, image_size=size,
                                     **peer_kw) if vs and isolate_peers else None)
            try:
                with taking_turns(turns) if turns else contextlib.nullcontext():
                    row = _with_backoff(name, batch_size, image_size, precision=prec,
                                        mesh=mesh, **timed)
            except BaseException:
                if turns:
                    turns.close()
                raise
            add_measured_mfu(row, measured_peaks)
            rows.append(row)
            if progress:
                progress(_progress_line(row))
            prows = turns.finish() if turns else []
            if not turns or row["batch"] != batch_size:  # ours backed off: peers again
                measure_peer = (peers.measure_peer_isolated if isolate_peers
                                else peers.measure_peer)
                prows = [measure_peer(peer, name, batch_size=row["batch"],
                                      image_size=row["image_size"], **peer_kw) for peer in vs]
            for peer, prow in zip(vs, prows):
                for phase in ("train", "infer"):
                    ours = row.get(f"{phase}_img_per_s")
                    theirs = prow.get(f"{phase}_img_per_s")
                    row[f"{phase}_vs_{peer}"] = ours / theirs if ours and theirs else None
                rows.append(prow)
                if progress:
                    progress(_progress_line(prow))
            jax.clear_caches()
            gc.collect()
    return rows


def _with_backoff(name: str, batch_size: int, image_size, *, mesh, **kw) -> dict:
    tried = []
    while True:
        try:
            row = measure(name, batch_size, image_size, mesh=mesh, **kw)
            break
        except Exception as e:  # XlaRuntimeError; its class moved between jax versions
            if not is_out_of_memory(e) or batch_size <= mesh.n:
                raise
            tried.append(batch_size)
            batch_size = max(mesh.n, batch_size // 2 - (batch_size // 2) % mesh.n)
            jax.clear_caches()
            gc.collect()
    if tried:
        row["batch_note"] = (f"batch {', '.join(map(str, tried))} ran out of device memory "
                             f"(RESOURCE_EXHAUSTED); measured at {batch_size}")
    return row


def _progress_line(row: dict) -> str:
    parts = [f"{row['model']} [{row['framework']}, {row['precision']}, "
             f"{row['image_size']}px, batch {row['batch']}]"]
    for phase in ("train", "infer"):
        v = row.get(f"{phase}_img_per_s")
        if v:
            parts.append(f"{phase} {v:,.1f} img/s")
    if row.get("note"):
        parts.append(f"({row['note']})")
    return "  ".join(parts)


# -- Output -----------------------------------------------------------------------------------

_MD_COLUMNS = (
    ("model", "model"), ("framework", "framework"), ("precision", "prec"),
    ("image_size", "size"), ("batch", "batch"), ("train_img_per_s", "train img/s"),
    ("infer_img_per_s", "infer img/s"), ("train_step_ms", "train ms"),
    ("infer_step_ms", "infer ms"), ("params", "params"), ("infer_gflops_per_img", "GFLOPs/img"),
    ("train_tflops", "train TFLOP/s"), ("train_mfu", "train MFU"), ("infer_mfu", "infer MFU"),
    ("train_compile_s", "compile s"),
)
_MEASURED_COLUMNS = (("train_mfu_measured", "train MFU (measured peak)"),
                     ("infer_mfu_measured", "infer MFU (measured peak)"))


def _fmt(key: str, v) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return ""
    if key.endswith("_mfu") or key.endswith("_mfu_measured"):
        return f"{100 * v:.1f}%"
    if "_vs_" in key:
        return f"{v:.2f}x"
    if key == "params":
        return f"{v / 1e6:.2f}M"
    if key.endswith("_ms") or key.endswith("_compile_s"):
        return f"{v:.1f}" if v >= 10 else f"{v:.2f}"
    if key.endswith("_gflops_per_img") or key.endswith("_tflops"):
        return f"{v:.3g}"
    if isinstance(v, float):
        return f"{v:,.1f}"
    return str(v)


def speed_markdown(rows: list[dict], meta: dict | None = None) -> str:
    """The rows as a Markdown table (ratio columns appear when a peer was timed), with the
    command, device, versions and date above it when ``meta`` is given."""
    cols = list(_MD_COLUMNS)
    cols += [c for c in _MEASURED_COLUMNS if any(r.get(c[0]) is not None for r in rows)]
    ratios = {k for r in rows for k in r if "_vs_" in k}
    for key in sorted(ratios, key=lambda k: (k.split("_vs_")[1], not k.startswith("train"))):
        phase, peer = key.split("_vs_")
        cols.append((key, f"{phase} vs {peer}"))
    lines = []
    if meta:
        lines += ["# Throughput", "",
                  f"- command: `{meta.get('command', '')}`",
                  f"- device: {meta.get('device', '')}",
                  "- versions: " + ", ".join(f"{k} {v}" for k, v in
                                              (meta.get("versions") or {}).items()),
                  f"- date: {meta.get('date', '')}",
                  f"- memory allocator: {meta.get('allocator', 'not recorded')}",
                  f"- convolutions: {meta.get('convolution', 'not recorded')}", "",
                  "Ours: `bench train`'s own step (engine.build_steps: on-device gather, "
                  "augmentation, preprocessing, forward, loss, backward, SGD) on random uint8 "
                  "images; peers: their framework's step on preprocessed float inputs. Median "
                  "of the timed steps after warm-up; "
                  "compile time apart. GFLOPs from XLA's cost analysis (multiply-add = 2). "
                  "MFU against the device's dense spec peak"
                  + (f" (CPU: {cpu_peak_text()})" if any(
                      str(r.get("device") or "").lower().endswith("cpu") and r.get(
                          "peak_tflops") for r in rows) else "")
                  + ("; 'measured peak' columns against " + ", ".join(
                      f"{k} {v:g} TFLOP/s" for k, v in meta["measured_peaks"].items())
                     if meta.get("measured_peaks") else "")
                  + ". Ratios: ours / peer img/s.", ""]
    lines.append("| " + " | ".join(h for _, h in cols) + " | notes |")
    lines.append("|" + "|".join("---" for _ in cols) + "|---|")
    for r in rows:
        notes = "; ".join(n for n in (r.get("batch_note"), r.get("note")) if n)
        lines.append("| " + " | ".join(_fmt(k, r.get(k)) for k, _ in cols) + f" | {notes} |")
    return "\n".join(lines) + "\n"


def _versions(rows: list[dict]) -> dict:
    frameworks = {(r.get("framework") or "").partition("+")[0] for r in rows}
    extra = ["keras"] if "keras" in frameworks else []
    if frameworks & {"torch", "timm"}:
        extra += ["torch", "torchvision", "timm"]  # each only where already imported
    found = _base_versions(*extra)
    for r in rows:  # peers timed in a process of their own report their versions
        found.update({k: v for k, v in (r.get("versions") or {}).items() if k not in found})
    return found


def write_speed(rows: list[dict], out_dir: str | Path, name: str = "speed",
                command: str | None = None, extra: dict | None = None) -> tuple[Path, Path]:
    """Write ``<name>.json`` (rows plus command, device, versions, date and ``extra``) and
    ``<name>.md`` to ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    meta = {"command": command if command is not None else shlex.join(sys.argv),
            "device": device_line(device_description()),
            "versions": _versions(rows), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "allocator": allocator(), "convolution": conv_description(), **(extra or {})}
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    bio.write_json(json_path, dict(meta, kind="bench-speed", rows=rows))
    bio.write_text(md_path, speed_markdown(rows, meta))
    return json_path, md_path
