"""XLA:CPU flags against none, on our train and inference steps: each flag set in a fresh
process (``XLA_FLAGS`` is read once per process), the sets taken in turn round after round
so that a shared machine's load falls on all of them alike; ratios to the no-flag runs of
the same rounds.

    python scripts/cpu_xla_flags.py --model resnet20 [--batch 16] [--rounds 2] [--steps 8]
        [--flags "--xla_cpu_enable_fast_math=true;--xla_cpu_prefer_vector_width=512"]

A flag this jaxlib does not know makes XLA refuse to start: that set's row says so.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FLAG_SETS = (
    "--xla_cpu_enable_fast_math=true",
    "--xla_cpu_prefer_vector_width=512",
    "--xla_cpu_use_multi_output_fusion=true",
    "--xla_cpu_enable_concurrency_optimized_scheduler=true",
    "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED",
    "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED",
    "--xla_cpu_experimental_ynn_fusion_type=",
    "--xla_cpu_experimental_ynn_fusion_type=individual_convolution,individual_dot,eltwise,"
    "reduce",
    "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
    "--xla_cpu_use_xnnpack=true",
    "--xla_cpu_use_onednn=true",
    "--xla_cpu_multi_thread_eigen=false",
)

_CHILD = """
import json, statistics, sys, time
sys.path.insert(0, {root!r})
from bench.speed import harness
p = harness.prepare({model!r}, {batch}, None)
out = {{"compile_s": p.train_compile_s}}
for phase, step in (("train", p.train_step), ("infer", p.infer_step)):
    for _ in range(2):
        step()
    t = []
    for _ in range({steps}):
        t0 = time.perf_counter(); step(); t.append(time.perf_counter() - t0)
    out[phase] = statistics.median(t)
print("RESULT " + json.dumps(out))
"""


def run_once(flags: str, model: str, batch: int, steps: int) -> dict:
    """One fresh process with ``XLA_FLAGS=flags``: median train/infer step seconds."""
    env = dict(os.environ, XLA_FLAGS=flags, PYTHONPATH=ROOT)
    code = _CHILD.format(root=ROOT, model=model, batch=batch, steps=steps)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=1800)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": err[:200]}


def main(argv=None) -> int:
    """Time every flag set and none, interleaved; print ratios to none."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--flags", help="';'-separated flag sets (default: FLAG_SETS)")
    p.add_argument("--json")
    args = p.parse_args(argv)
    sets = [""] + (args.flags.split(";") if args.flags else list(FLAG_SETS))
    runs = {s: [] for s in sets}
    load0 = os.getloadavg()
    for _ in range(args.rounds):
        for s in sets:
            runs[s].append(run_once(s, args.model, args.batch, args.steps))
            print(f"{s or '(none)'}: {runs[s][-1]}", file=sys.stderr, flush=True)
    print(f"{args.model}, batch {args.batch}, {args.rounds} rounds; load average "
          f"{load0[0]:.2f} -> {os.getloadavg()[0]:.2f}")
    print("| XLA_FLAGS | train ms | infer ms | train speed-up | infer speed-up |")
    print("|---|---|---|---|---|")
    base = {ph: statistics.median(r[ph] for r in runs[""] if ph in r) for ph in
            ("train", "infer")}
    for s, rs in runs.items():
        ok = [r for r in rs if "error" not in r]
        if not ok:
            print(f"| `{s}` | refused: {rs[0]['error']} | | | |")
            continue
        med = {ph: statistics.median(r[ph] for r in ok) for ph in ("train", "infer")}
        print(f"| `{s or '(none)'}` | {1000 * med['train']:.1f} | {1000 * med['infer']:.1f} | "
              f"{base['train'] / med['train']:.2f}x | {base['infer'] / med['infer']:.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "runs": runs, "load_start": load0}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
