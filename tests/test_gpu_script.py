"""scripts/gpu_bench.sh (issue 14's GPU check) in its CPU-sized --tiny mode, so the script
cannot rot between the sessions that get a GPU; and the pieces it adds to ``bench speed``:
precision lists, measured-peak MFU, the timm and torch+compile peers."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from bench.speed import harness
from bench.speed.peers import check_peer, measure_peer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import gpu_bench  # noqa: E402


def _env(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", OUT=str(tmp_path / "out"),
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("GPU_BENCH_TINY", None)
    return env


def test_tiny_run_writes_measured_rows(tmp_path):
    # One model in both precisions, the peers as notes where a framework is missing (the
    # PyTorch peer on a CPU costs seconds a step in bf16, and bench speed's own tests time
    # it), and the one-epoch run on digits.
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_bench.sh"), "--tiny", "--models", "resnet20",
         "--peers", "timm", "--work", str(tmp_path / "work")],
        cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} == {"speed.json", "speed.md", "tta.json", "tta.md",
                                               "gpu_bench.log", "runs.tar.gz"}

    speed = json.loads((out / "speed.json").read_text())
    assert speed["kind"] == "bench-speed" and speed["tiny"] is True
    assert [j["status"] for j in speed["jobs"]] == ["done"] * 3
    ours = [r for r in speed["rows"] if r["framework"] == "jax"]
    assert [r["precision"] for r in ours] == ["bf16", "fp32"]
    for r in ours:
        assert r["model"] == "resnet20" and r["batch"] == 4
        for key in ("train_img_per_s", "infer_img_per_s", "train_tflops"):
            assert math.isfinite(r[key]) and r[key] > 0, key
    timm_rows = [r for r in speed["rows"] if r["framework"] == "timm"]
    assert len(timm_rows) == 2
    assert all(r["note"] in ("timm not installed", "torch not installed",
                             "no timm equivalent of resnet20") for r in timm_rows)
    assert "gpu" in speed and speed["versions"]["jax"]
    md = (out / "speed.md").read_text()
    assert "| resnet20 | jax | bf16 |" in md and "| resnet20 | jax | fp32 |" in md
    assert "## This run" in md and "speed-fp32-resnet20 done" in md

    tta = json.loads((out / "tta.json").read_text())
    assert tta["reference"]["accuracy"] == pytest.approx(0.9401)
    (run,) = tta["runs"]
    assert run["status"] == "complete" and run["epochs"] == 1
    assert run["train_s_total"] > 0 and 0 <= run["test_accuracy"] <= 1
    assert run["train_s_total"] == pytest.approx(sum(h["epoch_s"] for h in run["history"]))
    assert "airbench94" in (out / "tta.md").read_text()
    assert "speed-bf16-resnet20: done" in (out / "gpu_bench.log").read_text()


def test_jobs_that_do_not_fit_are_skipped_not_made_up(tmp_path):
    code = gpu_bench.main(["--tiny", "--models", "resnet20", "--out", str(tmp_path),
                           "--budget-s", "-1"])
    assert code == 1  # nothing done
    speed = json.loads((tmp_path / "speed.json").read_text())
    assert speed["rows"] == []
    assert {j["status"] for j in speed["jobs"]} == {"skipped"}
    assert all("time budget" in j["note"] for j in speed["jobs"])
    assert "Not run: tta-resnet20 skipped" in (tmp_path / "tta.md").read_text()


def test_time_to_target():
    history = [{"epoch": 1, "epoch_s": 2.0, "val_accuracy": 0.85},
               {"epoch": 2, "epoch_s": 1.5, "val_accuracy": 0.91},
               {"epoch": 3, "epoch_s": 1.5, "val_accuracy": 0.905},
               {"epoch": 4, "epoch_s": 1.0, "val_accuracy": 0.935}]
    t = gpu_bench.time_to_target(history, (0.90, 0.93, 0.94))
    assert t["targets"]["0.90"] == {"epoch": 2, "train_s": 3.5}
    assert t["targets"]["0.93"] == {"epoch": 4, "train_s": 6.0}
    assert t["targets"]["0.94"] is None
    assert t["best_val_accuracy"] == 0.935 and t["best_val_at"]["train_s"] == 6.0
    assert t["train_s_total"] == 6.0


def test_precision_lists_and_measured_peaks():
    assert harness.parse_precisions("fp32,bf16") == ("fp32", "bf16")
    assert harness.parse_precisions(["bf16", "bf16"]) == ("bf16",)
    with pytest.raises(ValueError, match="precision"):
        harness.parse_precisions("fp32,fp16")
    assert harness.parse_peaks("bf16=790") == {"bf16": 790.0}
    with pytest.raises(ValueError, match="PRECISION=TFLOPS"):
        harness.parse_peaks("790")
    row = harness.new_row("resnet50", "jax", "bf16", 224, 256)
    row.update(devices=1, train_tflops=395.0, infer_tflops=None, train_mfu=395 / 989.4)
    harness.add_measured_mfu(row, {"bf16": 790.0})
    assert row["train_mfu_measured"] == pytest.approx(0.5)
    assert row["infer_mfu_measured"] is None
    assert row["train_mfu"] == pytest.approx(395 / 989.4)  # the spec figure stays
    fp32 = harness.new_row("resnet50", "jax", "fp32", 224, 256)
    harness.add_measured_mfu(fp32, {"bf16": 790.0})
    assert "train_mfu_measured" not in fp32
    md = harness.speed_markdown([row], {"measured_peaks": {"bf16": 790.0}})
    assert "train MFU (measured peak)" in md and "50.0%" in md and "bf16 790 TFLOP/s" in md
    assert gpu_bench.measured_peaks("NVIDIA H200", None) == {"bf16": 790.0}
    assert gpu_bench.measured_peaks("cpu", None) == {}


def test_speed_runs_each_precision_with_its_peers(monkeypatch):
    seen = []

    def fake_measure(name, batch_size, image_size, *, precision, **kw):
        row = harness.new_row(name, "jax", precision, 32, batch_size)
        row.update(train_img_per_s=40.0 if precision == "bf16" else 20.0, devices=1,
                   train_tflops=1.0)
        return row

    def fake_peer(peer, model, **kw):
        seen.append((peer, kw["precision"], kw["batch_size"]))
        row = harness.new_row(model, peer, kw["precision"], kw["image_size"],
                              kw["batch_size"])
        row["train_img_per_s"] = 10.0
        return row

    from bench.speed import peers

    monkeypatch.setattr(harness, "measure", fake_measure)
    monkeypatch.setattr(peers, "measure_peer", fake_peer)
    rows = harness.speed(["resnet20"], batch_size=8, precision="fp32,bf16",
                         isolate_peers=False,
                         vs=("torch", "timm+compile"), measured_peaks={"bf16": 2.0})
    assert [(r["framework"], r["precision"]) for r in rows] == [
        ("jax", "fp32"), ("torch", "fp32"), ("timm+compile", "fp32"),
        ("jax", "bf16"), ("torch", "bf16"), ("timm+compile", "bf16")]
    assert seen == [("torch", "fp32", 8), ("timm+compile", "fp32", 8),
                    ("torch", "bf16", 8), ("timm+compile", "bf16", 8)]
    assert rows[0]["train_vs_torch"] == pytest.approx(2.0)
    assert rows[3]["train_vs_timm+compile"] == pytest.approx(4.0)
    assert rows[3]["train_mfu_measured"] == pytest.approx(0.5)
    assert "train_mfu_measured" not in rows[0]
    with pytest.raises(ValueError, match="--vs"):
        check_peer("keras+compile")


def test_timm_peer_builds_from_timm(monkeypatch):
    pytest.importorskip("torch")
    from torch import nn

    made = []

    def create_model(name, pretrained, num_classes):
        assert pretrained is False
        made.append(name)
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))

    # A stand-in for the timm package (not installed here): only its two entry points.
    fake = types.SimpleNamespace(__version__="0.test", create_model=create_model,
                                 list_models=lambda pattern: [pattern]
                                 if pattern in ("legacy_xception", "mobilenetv2_100") else [])
    monkeypatch.setitem(sys.modules, "timm", fake)
    row = measure_peer("timm", "mobilenet_v2", batch_size=2, image_size=16, warmup=0,
                       repeats=1)
    assert made == ["mobilenetv2_100"]
    assert row["framework"] == "timm" and row["train_img_per_s"] > 0
    assert row["infer_img_per_s"] > 0 and "timm 0.test mobilenetv2_100" in row["note"]
    assert row["params"] == 4 * 27 + 4 + 4 * 4 + 4 * 1000 + 1000
    row = measure_peer("timm", "xception", batch_size=2, image_size=16, warmup=0, repeats=1,
                       train=False)
    assert made[-1] == "legacy_xception" and row["train_img_per_s"] is None
    row = measure_peer("timm", "resnet20", batch_size=2, image_size=32)
    assert row["note"] == "no timm equivalent of resnet20"
