"""`bench features` end to end against the bare jitted forward it runs (issue 12, item 3).

Runs `bench features --backbone B --dataset D --force` twice in fresh processes (the first
warms the data cache and the compile cache; the second is timed, wall clock from process start
to exit) and then, in this process, the same jitted forward (`features.extraction`'s) on
random uint8 batches of the same size: median of timed batches after warm-up, with
`block_until_ready()`. Prints both rates and their ratio.

    python scripts/features_overhead.py [--backbone efficientnet_lite0]
        [--dataset ../shared/assets/dogs-vs-cats/train.zip] [--batch-size 64] [--repeats 10]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--dataset", default=str(REPO.parent / "shared/assets/dogs-vs-cats/train.zip"))
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=10)
    a = ap.parse_args()

    out = Path(tempfile.mkdtemp(prefix="features-overhead-"))
    cmd = [sys.executable, "-m", "bench.cli", "features", "--backbone", a.backbone,
           "--dataset", a.dataset, "--batch-size", str(a.batch_size), "--force", "-q",
           "--out", str(out)]
    walls = []
    for _ in range(2):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=REPO)
        walls.append(time.perf_counter() - t0)
    files = list(out.rglob("*.h5"))
    import h5py
    import numpy as np

    with h5py.File(files[0], "r") as f:  # one dataset per split, plus "<split>_labels"
        n = sum(len(f[k]) for k in f if f"{k}_labels" in f)
    e2e = n / walls[1]

    import jax

    import models
    import features.extraction as fx

    model = models.create_model(a.backbone, num_classes=0, weights="imagenet")
    model.eval()
    size = tuple(models.get_model_info(a.backbone).input_size[:2])
    forward, state, sharding = fx._compile_forward(a.backbone, model, jax.local_devices(), size)
    x = jax.device_put(np.random.default_rng(0).integers(0, 256, (a.batch_size, *size, 3),
                                                         dtype=np.uint8), sharding)
    for _ in range(2):
        forward(state, x).block_until_ready()
    ts = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        forward(state, x).block_until_ready()
        ts.append(time.perf_counter() - t0)
    bare = a.batch_size / float(np.median(ts))
    print(json.dumps({"images": n, "wall_s": [round(w, 2) for w in walls],
                      "end_to_end_img_per_s": round(e2e, 2), "bare_forward_img_per_s":
                      round(bare, 2), "ratio": round(e2e / bare, 3), "batch": a.batch_size,
                      "backbone": a.backbone, "file": str(files[0])}))


if __name__ == "__main__":
    main()
