"""What a CPU user feels from the CPU work of issue 24, old settings against new, in one script.

    python scripts/cpu_user_effect.py --assets ../shared/assets --out /tmp/cpu-effect \
        [--budget 12m] [--parts zoo,cifar] [--variants before,after]

Variants (each part runs in turn under each, so a change in the machine's load falls on
both): ``before`` is ``BENCH_CONV=xla BENCH_MALLOC=system`` (XLA's own regular convolutions,
glibc's allocator as it comes; depthwise convolutions are the taps in both, with the
code's present gradients), ``after`` the defaults (1x1 and RGB-stem convolutions as matrix
products, the others through oneDNN where it builds, tcmalloc where the system has it).
Each run has a fresh cache folder of its own (``BENCH_CACHE_DIR``), so neither reuses the
other's decoded data, compiled programs or features. Parts:

- ``zoo``: ``bench run --suite zoo --dataset food101-3class/images --time-budget BUDGET``
  (class folders, the flowers-style data set of the reports): the members trained, their
  epochs and the wall time;
- ``cifar``: ``bench train --model resnet20 --dataset cifar10-jpeg.zip --epochs 3``
  (``results/examples/cifar10-resnet20-3epochs.md``): wall time, step img/s, test accuracy.

Prints one Markdown table per part; ``OUT/effect.json`` keeps every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = {"before": {"BENCH_CONV": "xla", "BENCH_MALLOC": "system"}, "after": {}}


def _run(cmd: list[str], env_extra: dict, cache: Path) -> float:
    """Wall seconds of ``cmd`` with the variant's settings and a fresh cache folder of its
    own (data, compiled programs and features are not shared between variants)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("BENCH_CONV", "BENCH_MALLOC", "LD_PRELOAD", "BENCH_MALLOC_REEXEC",
                        "BENCH_CACHE_DIR")}
    env.update(env_extra, BENCH_CACHE_DIR=str(cache))
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _records(root: Path) -> list[dict]:
    out = []
    for path in sorted(root.rglob("record.json")):
        rec = json.loads(path.read_text())
        out.append({k: rec.get(k) for k in ("run_id", "model", "epochs_completed", "wall_s",
                                            "train_img_per_s", "epoch_img_per_s",
                                            "accuracy", "log_loss")})
    return out


def zoo(assets: Path, out: Path, budget: str, env: dict) -> dict:
    wall = _run(["bench", "run", "--suite", "zoo", "--dataset",
                 str(assets / "food101-3class" / "images"), "--time-budget", budget,
                 "--out", str(out), "--quiet"], env, out.parent / f"{out.name}-cache")
    runs = _records(out)
    return {"wall_s": wall, "members": len(runs),
            "epochs": sum(r["epochs_completed"] or 0 for r in runs), "runs": runs}


def cifar(assets: Path, out: Path, env: dict) -> dict:
    wall = _run(["bench", "train", "--model", "resnet20", "--dataset",
                 str(assets / "cifar10-jpeg" / "cifar10-jpeg.zip"), "--epochs", "3",
                 "--out", str(out), "--quiet"], env, out.parent / f"{out.name}-cache")
    runs = _records(out)
    return {"wall_s": wall, **(runs[0] if runs else {})}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--assets", default="../shared/assets")
    p.add_argument("--out", required=True)
    p.add_argument("--budget", default="12m")
    p.add_argument("--parts", default="zoo,cifar")
    p.add_argument("--variants", default="before,after")
    args = p.parse_args(argv)
    assets, out = Path(args.assets).resolve(), Path(args.out)
    results: dict = {}
    for part in args.parts.split(","):
        for name in args.variants.split(","):
            t = time.strftime("%H:%M:%S")
            load = os.getloadavg()[0]
            d = out / part / name
            env = VARIANTS[name]
            r = zoo(assets, d, args.budget, env) if part == "zoo" else cifar(assets, d, env)
            r.update(start=t, load_start=load, load_end=os.getloadavg()[0], env=env)
            results.setdefault(part, {})[name] = r
            print(f"{part} {name}: {json.dumps({k: v for k, v in r.items() if k != 'runs'})}",
                  file=sys.stderr, flush=True)
            (out / "effect.json").write_text(json.dumps(results, indent=1))
    if "zoo" in results:
        print(f"\nzoo, food101-3class, --time-budget {args.budget}\n")
        print("| variant | members trained | epochs in all | epochs per member | wall |")
        print("|---|---|---|---|---|")
        for name, r in results["zoo"].items():
            per = ", ".join(f"{x['model']} {x['epochs_completed']}" for x in r["runs"])
            print(f"| {name} | {r['members']} | {r['epochs']} | {per} | {r['wall_s']:.0f} s |")
    if "cifar" in results:
        print("\nResNet-20, CIFAR-10, 3 epochs\n")
        print("| variant | wall | train step img/s | test accuracy | test log-loss |")
        print("|---|---|---|---|---|")
        for name, r in results["cifar"].items():
            acc, loss = r.get("accuracy"), r.get("log_loss")
            print(f"| {name} | {r['wall_s'] / 60:.1f} min | {r.get('train_img_per_s') or 0:.1f} | "
                  f"{'' if acc is None else f'{100 * acc:.2f}%'} | "
                  f"{'' if loss is None else f'{loss:.4f}'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
