"""Where one CPU train step spends its time, per op class, in JAX (XLA:CPU) and PyTorch
(``--infer``: the inference step instead).

JAX: ``bench speed``'s own train step (``bench.speed.harness.prepare``), traced with
``jax.profiler`` (the Perfetto trace: one event per XLA:CPU thunk), each thunk mapped back to
its HLO instruction in the compiled module and classed from what it computes and the Python
frames XLA recorded for it: convolution forward / input gradient / kernel gradient (the
regular ones, ``lax.conv`` or a matrix product, and the depthwise ones apart), BatchNorm,
elementwise, the head and loss, the optimizer, the input pipeline's on-device part, layout
copies. PyTorch: the peer's eager step (``bench.speed.peers.torch_peer``) under
``torch.profiler``, self CPU time classed by op name (the optimizer by its
``Optimizer.step`` / ``zero_grad`` scopes); oneDNN's ``convolution_backward`` computes both
gradients in one call, so the two are one figure there.

    python scripts/cpu_train_profile.py --models resnet20,mobilenet_v2 [--batch 16]
        [--steps 5] [--infer] [--no-torch] [--json out.json]

Op times are sums over the thunks (two may run at once on two cores), per step; ``step ms``
is the wall time of a traced step, profiler overhead included, so compare classes within a
column and use ``bench speed`` for throughput.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CLASSES = ("conv fwd", "conv input grad", "conv kernel grad", "depthwise fwd",
           "depthwise input grad", "depthwise kernel grad", "conv bwd (both grads)",
           "batchnorm", "elementwise", "head + loss", "optimizer", "input (augment)",
           "layout copies", "other")

_INST = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.*?) ([a-z][a-z0-9\-]*)\((.*)$")
_SHAPE = re.compile(r"^\(?[a-z0-9]+\[([\d,]*)\]")


def parse_hlo(text: str) -> dict:
    """The compiled module's entry instructions, fused computations and stack frames."""
    sections = _frame_tables(text)
    comps, current, entry_name = {}, None, None
    for line in text.splitlines():
        head = re.match(r"^(ENTRY )?%([\w.\-]+) \(.*\{\s*$", line)
        if head:
            current = comps[head.group(2)] = []
            if head.group(1):
                entry_name = head.group(2)
            continue
        m = _INST.match(line)
        if m and current is not None:
            current.append(_instruction(m))
    entry = {i["name"]: i for i in comps.get(entry_name, [])}
    fused = {n: c for n, c in comps.items() if n != entry_name}
    return {"entry": entry, "fused": fused, **sections}


def _instruction(m) -> dict:
    """One HLO instruction line as a dict (name, shape dims, opcode, operands, metadata)."""
    name, shape, opcode, rest = m.groups()
    dims = _SHAPE.match(shape)
    op_name = re.search(r'op_name="([^"]*)"', rest)
    frame = re.search(r"stack_frame_id=(\d+)", rest)
    calls = re.search(r"calls=%([\w.\-]+)", rest)
    window = re.search(r"window=\{size=([\dx]+)", rest)
    labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", rest)
    target = re.search(r'custom_call_target="([^"]+)"', rest)
    groups = re.search(r"groups = (\d+)", rest)
    args = rest.split("), ")[0]
    return {"name": name, "opcode": opcode,
            "dims": [int(d) for d in dims.group(1).split(",") if d] if dims else [],
            "operands": re.findall(r"%([\w.\-]+)", args),
            "op_name": op_name.group(1) if op_name else "",
            "frame": int(frame.group(1)) if frame else None,
            "calls": calls.group(1) if calls else None,
            "window": [int(w) for w in window.group(1).split("x")] if window else None,
            "out_labels": labels.group(3) if labels else None,
            "target": target.group(1) if target else None,
            "groups": int(groups.group(1)) if groups else None}


def _frame_tables(text: str) -> dict:
    """FileNames / FunctionNames / FileLocations / StackFrames of the HLO text."""
    tables = {"FileNames": {}, "FunctionNames": {}, "FileLocations": {}, "StackFrames": {}}
    current = None
    for line in text.splitlines():
        if line.strip() in tables:
            current = tables[line.strip()]
            continue
        m = re.match(r"^(\d+) (.*)$", line)
        if current is None or not m:
            if line.startswith(("HloModule", "%", "ENTRY")):
                current = None
            continue
        current[int(m.group(1))] = m.group(2).strip('"')
    return tables


def frame_chain(hlo: dict, frame: int | None) -> list[tuple[str, str]]:
    """``(file, function)`` from the innermost frame outwards (a frame's
    ``parent_frame_id`` is its parent's number plus one; 1 is the root)."""
    out, seen = [], set()
    while frame and frame not in seen:
        seen.add(frame)
        entry = hlo["StackFrames"].get(frame, "")
        loc = re.search(r"file_location_id=(\d+)", entry)
        parent = re.search(r"parent_frame_id=(\d+)", entry)
        loc_text = hlo["FileLocations"].get(int(loc.group(1)), "") if loc else ""
        f = re.search(r"file_name_id=(\d+)", loc_text)
        fn = re.search(r"function_name_id=(\d+)", loc_text)
        out.append((hlo["FileNames"].get(int(f.group(1)), "") if f else "",
                    hlo["FunctionNames"].get(int(fn.group(1)), "") if fn else ""))
        frame = int(parent.group(1)) - 1 if parent else None
    return out


def _fused_ops(hlo: dict, inst: dict) -> list[dict]:
    """The instructions a fusion computes (the instruction itself when it is no fusion)."""
    return hlo["fused"].get(inst["calls"], []) if inst["calls"] else [inst]


def _is_kernel_grad_conv(conv: dict) -> bool:
    """A ``convolution`` that is a kernel gradient: its window spans more than its output's
    spatial extent (XLA writes d/dw as a convolution of the input by the output gradient)."""
    labels, dims, window = conv.get("out_labels"), conv["dims"], conv.get("window")
    if not labels or not window or len(labels) != len(dims):
        return False
    spatial = [d for d, c in zip(dims, labels) if c.isdigit()]
    area = 1
    for d in spatial:
        area *= d
    warea = 1
    for w in window:
        warea *= w
    return warea > area


def classify(hlo: dict, inst: dict, kernel_sizes: set[int]) -> str:
    """One of ``CLASSES`` for an entry instruction (a thunk)."""
    chain = frame_chain(hlo, inst["frame"])
    files = " ".join(f for f, _ in chain)
    funcs = {fn for _, fn in chain}
    ops = _fused_ops(hlo, inst)
    opcodes = {o["opcode"] for o in ops}
    bwd = "transpose(" in inst["op_name"]
    if (inst.get("target") or "").startswith("bench_onednn_conv_"):  # runtime.onednn
        kind = {"fwd": "fwd", "bias_act": "fwd", "bias_sum_act": "fwd", "dx": "input grad",
                "dk": "kernel grad"}[inst["target"][18:]]
        return f"{'depthwise' if (inst['groups'] or 1) > 1 else 'conv'} {kind}"
    if "/optax/" in files and "/optax/losses/" not in files:
        return "optimizer"
    if inst["opcode"] in ("copy", "transpose") or inst["name"].startswith(
            ("transpose", "copy")):
        return "layout copies"
    if funcs & {"_tap_sum_impl", "depthwise_conv_taps", "depthwise_conv_grouped"} or (
            "convolution" in opcodes and "DepthwiseConv.__call__" in funcs):
        if not bwd:
            return "depthwise fwd"  # the taps' kernel gradient is the variadic reduce
        return "depthwise kernel grad" if "reduce" in opcodes else "depthwise input grad"
    convs = [o for o in ops if o["opcode"] == "convolution"]
    if convs:
        if any(_is_kernel_grad_conv(c) for c in convs):
            return "conv kernel grad"
        return "conv input grad" if bwd or not inst["op_name"] else "conv fwd"
    if funcs & {"conv_lax_custom_dw", "_conv_custom_dw_bwd"} and bwd:
        return "conv kernel grad"  # BENCH_CONV=im2col / taps: the patches and the products
    if "dot" in opcodes and funcs & {"Conv.__call__", "conv_matmul"}:
        if not bwd:
            return "conv fwd"
        n = 1
        for d in inst["dims"]:
            n *= d
        return "conv kernel grad" if n in kernel_sizes else "conv input grad"
    if "BatchNorm.__call__" in funcs:
        return "batchnorm"
    if funcs & {"Linear.__call__", "cross_entropy", "softmax_cross_entropy"} or (
            "/optax/losses/" in files):
        return "head + loss"
    if "/bench/augment.py" in files or funcs & {"build_steps.<locals>.prepare",
                                               "preprocess_mode"}:
        return "input (augment)"
    if chain:
        return "elementwise"
    return "other"


def classify_all(hlo: dict) -> dict[str, str]:
    """Every entry instruction's class; a layout copy takes its consumer's class when that
    is a convolution (the transposes XLA adds around a kernel gradient belong to it)."""
    kernel_sizes = set()
    for i in hlo["entry"].values():
        if i["opcode"] == "parameter" and "kernel" in i["name"] and "opt_state" not in i["name"]:
            n = 1
            for d in i["dims"]:
                n *= d
            kernel_sizes.add(n)
    cls = {n: classify(hlo, i, kernel_sizes) for n, i in hlo["entry"].items()}
    users = collections.defaultdict(list)
    for n, i in hlo["entry"].items():
        for o in i["operands"]:
            users[o].append(n)
    for n, c in list(cls.items()):
        if c == "layout copies":
            conv = [cls[u] for u in users[n] if cls[u].startswith(("conv", "depthwise"))]
            if conv:
                cls[n] = conv[0]
    return cls


def trace_events(log_dir: str) -> list[dict]:
    """The complete ('X') events of the Perfetto trace ``jax.profiler`` wrote."""
    path = sorted(glob.glob(os.path.join(log_dir, "**", "perfetto_trace.json.gz"),
                            recursive=True))[-1]
    with gzip.open(path) as f:
        t = json.load(f)
    events = t["traceEvents"] if isinstance(t, dict) else t
    return [e for e in events if e.get("ph") == "X"]


def profile_jax(name: str, batch: int, size: int | None, steps: int,
                infer: bool = False) -> dict:
    """Per-class ms per step of our train (``infer``: inference) step, plus its untraced
    median step ms."""
    import statistics

    import jax

    from bench.speed import harness

    prep = harness.prepare(name, batch, size, train=not infer, infer=infer)
    hlo = parse_hlo((prep.infer if infer else prep.train).as_text())
    step = prep.infer_step if infer else prep.train_step
    cls = classify_all(hlo)
    for _ in range(2):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as d:
        jax.profiler.start_trace(d, create_perfetto_trace=True)
        for _ in range(steps):
            step()
        jax.profiler.stop_trace()
        events = trace_events(d)
    per = collections.Counter()
    for e in events:
        c = cls.get(e["name"])
        if c is not None:
            per[c] += e.get("dur", 0) / 1000 / steps
    return {"model": name, "framework": "jax", "image_size": prep.image_size,
            "step_ms": 1000 * statistics.median(times), "ops_ms": dict(per),
            "phase": "infer" if infer else "train",
            "flops": prep.infer_flops if infer else prep.train_flops}


_TORCH_CLASSES = (  # (substring of the aten op name, class), first match wins
    ("convolution_backward", "conv bwd (both grads)"),
    ("convolution", "conv fwd"), ("conv2d", "conv fwd"),
    ("batch_norm", "batchnorm"),
    ("addmm", "head + loss"), ("aten::mm", "head + loss"), ("linear", "head + loss"),
    ("softmax", "head + loss"), ("nll_loss", "head + loss"), ("cross_entropy", "head + loss"),
)


def profile_torch(name: str, batch: int, size: int, steps: int,
                  threads: int | None = None, infer: bool = False) -> dict:
    """Per-class self-CPU ms per step of the PyTorch peer's eager train (``infer``:
    inference) step (with ``threads`` intra-op threads, default PyTorch's own)."""
    import statistics

    import torch

    from bench.speed.peers import torch_peer

    if threads:
        torch.set_num_threads(threads)
    steps_ = torch_peer.eager_steps(name, batch, size)
    step, origin = steps_["infer" if infer else "train"], steps_["origin"]

    for _ in range(2):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    per = collections.Counter()
    for e in prof.events():
        per[_torch_class(e)] += e.self_cpu_time_total / 1000 / steps
    return {"model": name, "framework": f"torch@{torch.get_num_threads()}",
            "image_size": size, "origin": origin, "phase": "infer" if infer else "train",
            "step_ms": 1000 * statistics.median(times), "ops_ms": dict(per)}


def _torch_class(event) -> str:
    """The class of one ``torch.profiler`` event (its scope for the optimizer)."""
    parent = event
    while parent is not None:
        if parent.name.startswith(("Optimizer.step", "Optimizer.zero_grad")):
            return "optimizer"
        parent = parent.cpu_parent
    for key, c in _TORCH_CLASSES:
        if key in event.name:
            return c
    if event.name.startswith("aten::"):
        return "elementwise"
    return "other"


def table(results: list[dict]) -> str:
    """A Markdown table: one row per class, one jax and one torch column per model."""
    cols = [r for r in results]
    head = "| op class | " + " | ".join(
        f"{r['model']} {r['framework']} ms" for r in cols) + " |"
    lines = [head, "|---|" + "---|" * len(cols)]
    for c in CLASSES:
        if not any(r["ops_ms"].get(c) for r in cols):
            continue
        lines.append(f"| {c} | " + " | ".join(
            f"{r['ops_ms'][c]:.1f}" if r["ops_ms"].get(c) else "" for r in cols) + " |")
    lines.append("| sum of ops | " + " | ".join(
        f"{sum(r['ops_ms'].values()):.1f}" for r in cols) + " |")
    lines.append("| step (untraced median) | " + " | ".join(
        f"{r['step_ms']:.1f}" for r in cols) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    """Profile each model's train step in JAX (and PyTorch) and print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet20,resnet50,mobilenet_v2,efficientnet_lite0")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--infer", action="store_true",
                   help="profile the inference step (eval mode) instead of the train step")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--no-jax", action="store_true",
                   help="PyTorch only: run the two sides in separate processes, since two "
                        "frameworks in one process share the OpenMP runtime and slow "
                        "each other, then print them together with --from")
    p.add_argument("--from", dest="from_json", default="",
                   help="comma-separated --json files of earlier runs: print their table")
    p.add_argument("--torch-threads", default="",
                   help="comma-separated intra-op thread counts for the PyTorch runs "
                        "(default: PyTorch's own)")
    p.add_argument("--json")
    args = p.parse_args(argv)
    if args.from_json:
        rows = []
        for path in args.from_json.split(","):
            with open(path) as f:
                rows += json.load(f)
        order = {m: i for i, m in enumerate(dict.fromkeys(r["model"] for r in rows))}
        print(table(sorted(rows, key=lambda r: (order[r["model"]], r["framework"]))))
        return 0
    results = []
    for name in args.models.split(","):
        if args.no_jax:
            import models

            size = models.get_model_info(name).input_size[0]
        else:
            r = profile_jax(name, args.batch, None, args.steps, args.infer)
            results.append(r)
            size = r["image_size"]
            print(f"{name} jax: step {r['step_ms']:.1f} ms", flush=True)
        for threads in ([] if args.no_torch else
                        [int(t) for t in args.torch_threads.split(",") if t] or [None]):
            t = profile_torch(name, args.batch, size, args.steps, threads, args.infer)
            results.append(t)
            print(f"{name} {t['framework']}: step {t['step_ms']:.1f} ms", flush=True)
    print(f"load average: {os.getloadavg()}")
    print(table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
