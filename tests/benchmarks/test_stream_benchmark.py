"""Streaming against on-device placement: training img/s of the two epoch loops, side by side.

Both loops are ``bench.train``'s: ``device`` places the training set replicated on the devices
and gathers each batch inside the step from a sharded index batch; ``stream`` reads each batch
on a ``bench.stream.BatchStream`` thread and hands the step a ready global array. The two
run in alternating blocks of ``BENCH_STREAM_STEPS`` steps (order swapped every round), so a
shared machine's load drifts over both alike; the figure is the ratio of the median blocks.

    BENCH_STREAM_DATA=digits|PATH   (default: the shared CIFAR-10 JPEG zip, else digits)
    BENCH_STREAM_MODEL=resnet20  BENCH_STREAM_BATCH=128  BENCH_STREAM_STEPS=15
    BENCH_STREAM_ROUNDS=3  BENCH_STREAM_MAX_PER_CLASS=1000

    PYTHONPATH=. python tests/benchmarks/test_stream_benchmark.py
    PYTHONPATH=. pytest tests/benchmarks/test_stream_benchmark.py -s -n 0
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import numpy as np

CIFAR = Path(__file__).resolve().parents[2].parent / "shared/assets/cifar10-jpeg/cifar10-jpeg.zip"


def run(data: str | None = None, model_name: str = "resnet20", batch: int = 128,
        steps: int = 15, rounds: int = 3, max_per_class: int | None = 1000,
        log=print) -> dict:
    import jax
    from flax import nnx

    import models
    from bench import engine
    from bench import stream as bstream
    from bench.config import make
    from bench.data import load_dataset
    from bench.train import build_model

    data = data or (str(CIFAR) if CIFAR.exists() else "digits")
    size = 32
    ds = load_dataset(data, size, max_per_class=max_per_class, progress=False)
    train = ds.splits["train"]
    cfg = make(model=model_name, batch_size=batch, image_size=size)
    info = models.get_model_info(model_name)
    mesh = engine.Mesh.create()
    batch -= batch % mesh.n
    spe = len(train) // batch
    x_all = engine.to_global(train.images, mesh.replicated)
    y_all = engine.to_global(train.labels.astype(np.int32), mesh.replicated)
    key = jax.random.key(0)

    def setup(on_device):
        model = build_model(cfg, ds)
        sched = engine.make_schedule(cfg.optim, spe, 100)
        tx = engine.make_optimizer(cfg.optim, sched)
        steps_ = engine.build_steps(model, tx, num_classes=ds.num_classes,
                                    preprocessing=info.preprocessing, augment=cfg.augment,
                                    label_smoothing=0.0, mesh=mesh, on_device_data=on_device)
        return steps_.train, engine.replicate(engine.init_state(model, tx), mesh)

    fns = {"device": setup(True), "stream": setup(False)}
    states = {k: v[1] for k, v in fns.items()}
    stream = bstream.BatchStream(train.images, train.labels, batch=batch, steps_per_epoch=spe,
                                 seed=0, sharding=mesh.data, end_epoch=10**6)
    pos = {"device": 0}

    def block(mode, n):
        fn = fns[mode][0]
        state = states[mode]
        t0 = time.perf_counter()
        for _ in range(n):
            if mode == "device":
                g = pos["device"]
                perm = bstream.epoch_order(0, g // spe, len(train))
                i = g % spe
                idx = engine.to_global(perm[i * batch:(i + 1) * batch].astype(np.int32),
                                       mesh.data)
                state, m = fn(state, x_all, y_all, idx, jax.random.fold_in(key, g))
                pos["device"] += 1
            else:
                e, i, xb, yb = next(stream)
                state, m = fn(state, xb, yb, jax.random.fold_in(key, e * spe + i))
            float(m["loss"])
        states[mode] = state
        return n * batch / (time.perf_counter() - t0)

    for mode in fns:  # compile and warm up
        block(mode, 2)
    rates = {"device": [], "stream": []}
    w0 = stream.wait_s
    for r in range(rounds):
        for mode in (("device", "stream") if r % 2 == 0 else ("stream", "device")):
            rates[mode].append(block(mode, steps))
            log(f"round {r + 1} {mode}: {rates[mode][-1]:.1f} img/s "
                f"(load {os.getloadavg()[0]:.1f})")
    stream.close()
    med = {k: statistics.median(v) for k, v in rates.items()}
    out = {"data": data, "model": model_name, "batch": batch, "steps": steps,
           "rounds": rounds, "rates": rates, "median": med,
           "ratio": med["stream"] / med["device"],
           "stream_wait_s_per_step": (stream.wait_s - w0) / (rounds * steps)}
    log(f"stream/device = {out['ratio']:.3f} (median img/s {med['stream']:.1f} / "
        f"{med['device']:.1f}); consumer waited {1000 * out['stream_wait_s_per_step']:.2f} ms "
        f"a step for the loader")
    return out


def _env(name, default, cast=int):
    v = os.environ.get(name, "")
    return cast(v) if v else default


def _kwargs():
    return dict(data=os.environ.get("BENCH_STREAM_DATA") or None,
                model_name=os.environ.get("BENCH_STREAM_MODEL") or "resnet20",
                batch=_env("BENCH_STREAM_BATCH", 128), steps=_env("BENCH_STREAM_STEPS", 15),
                rounds=_env("BENCH_STREAM_ROUNDS", 3),
                max_per_class=_env("BENCH_STREAM_MAX_PER_CLASS", 1000))


def test_stream_throughput(benchmark):
    """One measured run (pytest-benchmark's fixture, so ``--benchmark-skip``, the default
    test run's setting, skips it); the figures go to the benchmark JSON's extra_info."""
    out = benchmark.pedantic(run, kwargs=_kwargs(), rounds=1, iterations=1)
    benchmark.extra_info.update({k: v for k, v in out.items()
                                 if isinstance(v, (int, float, str))})
    assert out["ratio"] > 0  # a benchmark: the figure is reported, not asserted


if __name__ == "__main__":
    run(**_kwargs())
