"""Training engine: learning, data parallelism, resume after SIGKILL, divergence, freezing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import REPO, synthetic_dataset, write_image_folder

TINY = dict(model="benchmark_cnn", image_size=16, batch_size=24, optimizer="adam", lr=3e-3,
            weight_decay=0.0, schedule="cosine", augment="none")


def _cfg(**kw):
    from bench.config import make

    return make(**{**TINY, **kw})


def test_train_learns_and_writes_record(tmp_path):
    from bench.train import train

    ds = synthetic_dataset(n_per_class=40, size=16)
    rec = train(_cfg(epochs=6), tmp_path, dataset=ds, quiet=True)
    assert rec["status"] == "complete"
    assert rec["accuracy"] > 0.8, rec["history"]
    for key in ("accuracy", "log_loss", "train_img_per_s", "infer_img_per_s", "params_total",
                "weights_bytes", "compile_s", "per_class", "confusion", "device", "versions"):
        assert rec[key] is not None, key
    assert rec["top5_accuracy"] is None  # 3 classes: top-5 is meaningless
    run_dir = tmp_path / "runs" / rec["run_id"]
    for name in ("record.json", "config.json", "weights.npz", "confusion.csv",
                 "confusion.png", "history.csv", "curves.png"):
        assert (run_dir / name).is_file(), name
    assert rec["weights_bytes"] == (run_dir / "weights.npz").stat().st_size
    # A finished run is not repeated by the same command.
    again = train(_cfg(epochs=6), tmp_path, dataset=ds, quiet=True)
    assert again["finished"] == rec["finished"]


def test_weight_decay_schedule_and_label_smoothing_run(tmp_path):
    from bench.train import train

    ds = synthetic_dataset(n_per_class=20, size=16)
    rec = train(_cfg(epochs=2, optimizer="nesterov", lr=0.05, weight_decay=5e-4,
                     schedule="step", step_epochs=(1,), label_smoothing=0.1,
                     augment="affine", model="resnet20"),
                tmp_path, dataset=ds, quiet=True)
    lrs = [row["lr"] for row in rec["history"]]
    assert lrs[1] == pytest.approx(lrs[0] / 10)
    assert np.isfinite(rec["log_loss"])


def test_nan_loss_stops_with_record(tmp_path):
    from bench.train import TrainingDiverged, train

    ds = synthetic_dataset(n_per_class=20, size=16)
    cfg = _cfg(epochs=3, optimizer="sgd", lr=1e12, momentum=0.0)
    with pytest.raises(TrainingDiverged, match="loss became"):
        train(cfg, tmp_path, dataset=ds, quiet=True)
    rec = json.loads(next(tmp_path.glob("runs/*/record.json")).read_text())
    assert rec["status"] == "diverged" and "loss became" in rec["error"]


def test_freeze_keeps_blocks_fixed():
    import jax
    import optax

    import models
    from bench import engine
    from flax import nnx

    model = models.create_model("resnet20", num_classes=3)
    params = nnx.as_pure(nnx.state(model, nnx.Param))
    mask = engine.freeze_mask(model, params, "stage2")
    tx = engine.make_optimizer(engine.OptimConfig("sgd", lr=0.1),
                               optax.constant_schedule(0.1), mask)
    grads = jax.tree.map(lambda p: np.ones_like(p), params)
    updates, _ = tx.update(grads, tx.init(params), params)
    for block, frozen in (("stem", True), ("stage2", True), ("stage3", False), ("head", False)):
        leaves = jax.tree.leaves(updates[block])
        assert all((np.abs(u).max() == 0) == frozen for u in leaves), block
    with pytest.raises(ValueError, match="not a block"):
        engine.freeze_mask(model, params, "nope")


def test_augment_policies_shapes_and_determinism():
    import jax
    import jax.numpy as jnp

    from bench import augment

    x = jnp.asarray(np.random.default_rng(0).integers(0, 255, (4, 16, 16, 3)), jnp.float32)
    for policy in augment.POLICIES:
        cfg = augment.AugmentConfig(policy)
        a = augment.apply(cfg, jax.random.key(1), x)
        b = augment.apply(cfg, jax.random.key(1), x)
        assert a.shape == x.shape and np.array_equal(np.asarray(a), np.asarray(b))
        assert float(a.min()) >= 0 and float(a.max()) <= 255
    # Zero rotation/shift/zoom and no flip is the identity.
    same = augment.affine(jax.random.key(0), x, 0.0, 0.0, 0.0, flip=False)
    np.testing.assert_allclose(np.asarray(same), np.asarray(x), atol=1e-4)


_DP_SCRIPT = r"""
import json, sys
sys.path.insert(0, {tests!r})
import numpy as np, jax
from helpers import synthetic_dataset
from bench.config import make
from bench.train import train
assert len(jax.devices()) == 4, jax.devices()
ds = synthetic_dataset(n_per_class=32, size=16)
out = {{}}
for n in (1, 4):
    cfg = make(model="resnet20", image_size=16, batch_size=32, epochs=2, lr=0.05,
                    augment="crop_flip", devices=n)
    rec = train(cfg, {out!r}, dataset=ds, quiet=True)
    out[n] = dict(hist=rec["history"], acc=rec["accuracy"], loss=rec["log_loss"],
                  devices=rec["device"]["count"], run_id=rec["run_id"])
print("RESULT" + json.dumps(out))
"""


def _run_py(code: str, env_extra: dict, timeout: int = 600) -> str:
    env = dict(os.environ, **env_extra)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_data_parallel_matches_single_device(tmp_path):
    """Same run on 1 and on 4 forced host devices: same losses and metrics (float tolerance),
    since BatchNorm sees the global batch and XLA all-reduces the gradients."""
    code = _DP_SCRIPT.format(tests=str(REPO / "tests"), out=str(tmp_path))
    stdout = _run_py(code, {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    res = json.loads(stdout.split("RESULT", 1)[1])
    one, four = res["1"], res["4"]
    assert one["devices"] == 1 and four["devices"] == 4 and one["run_id"] != four["run_id"]
    for a, b in zip(one["hist"], four["hist"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4, abs=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4, abs=1e-5)
    assert one["loss"] == pytest.approx(four["loss"], rel=1e-4, abs=1e-5)
    assert one["acc"] == pytest.approx(four["acc"], abs=1e-9)


def test_resume_after_sigkill_gives_same_metrics(tmp_path):
    """Kill a CLI run with SIGKILL after its first epoch checkpoint; the same command resumes
    and ends with the metrics of an uninterrupted run."""
    data = write_image_folder(tmp_path / "images", n_per_class=40, size=16)
    cache = tmp_path / "cache"
    args = ["--model", "resnet20", "--dataset", str(data), "--image-size", "16",
            "--epochs", "4", "--batch-size", "16", "--lr", "0.05", "--quiet",
            "--cache-dir", str(cache)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "bench", "train"]
    killed_out = tmp_path / "killed"
    proc = subprocess.Popen(cmd + args + ["--out", str(killed_out)], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    ckpts = []
    while time.time() < deadline and proc.poll() is None:
        ckpts = list(killed_out.glob("runs/*/last.npz"))
        if ckpts:
            break
        time.sleep(0.05)
    assert ckpts, "no checkpoint appeared"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not list(killed_out.glob("runs/*/record.json")), "run finished before the kill"
    subprocess.run(cmd + args + ["--out", str(killed_out)], env=env, cwd=REPO, check=True,
                   capture_output=True, timeout=300)
    fresh_out = tmp_path / "fresh"
    subprocess.run(cmd + args + ["--out", str(fresh_out)], env=env, cwd=REPO, check=True,
                   capture_output=True, timeout=300)
    resumed = json.loads(next(killed_out.glob("runs/*/record.json")).read_text())
    fresh = json.loads(next(fresh_out.glob("runs/*/record.json")).read_text())
    assert resumed["epochs_completed"] == fresh["epochs_completed"] == 4
    assert resumed["accuracy"] == pytest.approx(fresh["accuracy"], abs=1e-9)
    assert resumed["log_loss"] == pytest.approx(fresh["log_loss"], rel=1e-5)
    for a, b in zip(resumed["history"], fresh["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    assert (fresh_out / "summary.csv").is_file()
