"""Interleaved A/B of train and inference steps in one process: our step under several
environment settings (``BENCH_CONV``, ``BENCH_DEPTHWISE``, ``BENCH_BATCHNORM``,
``BENCH_MAXPOOL``, read at trace time) and the PyTorch peer (eager, 2 threads and 1 thread),
round by round, so that a shared machine's load hits every variant alike.

    python scripts/cpu_ab.py --model resnet20 [--batch 16] [--rounds 8] [--steps 3]
        [--variants default,BENCH_CONV=xla,BENCH_CONV=im2col,torch,torch@1] [--json out.json]

Each round times ``steps`` calls of every variant (train, then inference) in turn; a
variant's figure is the median over all its timed calls, after two warm-up calls.
``default`` is the unset environment; ``torch@N`` the peer with ``torch.set_num_threads(N)``.
The load average is printed at the start and the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_ENV_KEYS = ("BENCH_CONV", "BENCH_DEPTHWISE", "BENCH_BATCHNORM", "BENCH_MAXPOOL")


def build_variant(spec: str, model: str, batch: int, size: int | None) -> dict:
    """``{'train', 'infer', 'threads'}`` callables for one variant spec."""
    if spec.startswith("torch"):
        from bench.speed.peers import torch_peer
        import models

        size = size or models.get_model_info(model).input_size[0]
        steps = torch_peer.eager_steps(model, batch, size)
        _, _, threads = spec.partition("@")
        return {"train": steps["train"], "infer": steps["infer"],
                "threads": int(threads) if threads else None}
    from bench.speed import harness

    saved = {k: os.environ.pop(k, None) for k in _ENV_KEYS}
    try:
        for item in filter(None, spec.split("+")):
            if item != "default":
                key, _, value = item.partition("=")
                if key not in _ENV_KEYS:
                    raise ValueError(f"variant {spec!r}: {key} is not one of {_ENV_KEYS}")
                os.environ[key] = value
        prep = harness.prepare(model, batch, size)  # traced and compiled here
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None)
            if v is not None:
                os.environ[k] = v
    return {"train": prep.train_step, "infer": prep.infer_step, "threads": None}


def run(variants: dict, rounds: int, steps: int) -> dict:
    """Interleaved timing: ``{spec: {'train': [s...], 'infer': [s...]}}``."""
    import torch

    default_threads = torch.get_num_threads()
    times = {v: {"train": [], "infer": []} for v in variants}
    for r in range(rounds + 1):  # round 0 is the warm-up
        for spec, v in variants.items():
            torch.set_num_threads(v["threads"] or default_threads)
            for phase in ("train", "infer"):
                for _ in range(steps if r else 2):
                    t0 = time.perf_counter()
                    v[phase]()
                    if r:
                        times[spec][phase].append(time.perf_counter() - t0)
        torch.set_num_threads(default_threads)
    return times


def main(argv=None) -> int:
    """Build every variant, time them interleaved, print img/s and ratios to the first."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--variants", default="default,BENCH_CONV=xla,torch,torch@1")
    p.add_argument("--json")
    args = p.parse_args(argv)
    load0 = os.getloadavg()
    variants = {s: build_variant(s, args.model, args.batch, args.size)
                for s in args.variants.split(",")}
    times = run(variants, args.rounds, args.steps)
    load1 = os.getloadavg()
    first = next(iter(times))
    out = {"model": args.model, "batch": args.batch, "load_start": load0, "load_end": load1,
           "rounds": args.rounds, "steps": args.steps, "variants": {}}
    print(f"{args.model}, batch {args.batch}; load average {load0[0]:.2f} -> {load1[0]:.2f}")
    print(f"| variant | train img/s | infer img/s | train vs {first} | infer vs {first} |")
    print("|---|---|---|---|---|")
    for spec, t in times.items():
        med = {ph: args.batch / statistics.median(t[ph]) for ph in t}
        out["variants"][spec] = med
        ref = out["variants"][first]
        print(f"| {spec} | {med['train']:.1f} | {med['infer']:.1f} | "
              f"{med['train'] / ref['train']:.2f}x | {med['infer'] / ref['infer']:.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
