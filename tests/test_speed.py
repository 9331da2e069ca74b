"""bench speed (throughput rows, bf16, out-of-memory back-off, peers), bench compare and the
HTML report."""

from __future__ import annotations

import base64
import csv
import json
import math
import re
import sys
import time

import jax
import pytest

from bench.report import compare
from bench.speed import harness as speed
from bench.speed.peers import keras_peer, measure_peer, torch_peer

RESNET20_PARAMS = 271_098  # Keras count_params: 269,722 trainable + 1,376 BatchNorm statistics


def test_speed_resnet20_row():
    rows = speed.speed(["resnet20"], batch_size=8, image_size=32, warmup=1, repeats=2)
    assert len(rows) == 1
    row = rows[0]
    assert set(speed.ROW_KEYS) <= set(row)
    assert (row["model"], row["framework"], row["batch"], row["image_size"]) == \
        ("resnet20", "jax", 8, 32)
    assert row["params"] == RESNET20_PARAMS
    for key in ("train_img_per_s", "infer_img_per_s", "train_step_ms", "infer_step_ms",
                "train_compile_s", "infer_compile_s", "train_tflops", "infer_tflops"):
        assert math.isfinite(row[key]) and row[key] > 0, key
    assert row["train_img_per_s"] == pytest.approx(8 / (row["train_step_ms"] / 1000))
    # ResNet-20 is ~41M multiply-adds per 32x32 image; a train step is ~3 forward passes.
    assert 0.05 < row["infer_gflops_per_img"] < 0.12
    assert 2 < row["train_gflops_per_img"] / row["infer_gflops_per_img"] < 4
    peak = speed.cpu_peak()  # CPU: cores x FMA width x clock from /proc/cpuinfo
    if peak is None:
        assert row["peak_tflops"] is None and row["train_mfu"] is None
    else:
        assert row["peak_tflops"] == pytest.approx(peak["tflops"])
        assert row["train_mfu"] == pytest.approx(row["train_tflops"] / peak["tflops"])
    assert row["note"] is None and row["batch_note"] is None


def test_bf16_is_mixed_precision():
    prep = speed.prepare("resnet20", 8, 32, precision="bf16")
    # The program convolves in bf16 (XLA:CPU may upcast afterwards; GPUs and TPUs do not).
    text = prep.train_lowered.as_text()
    conv_types = re.findall(r"stablehlo.convolution.*-> tensor<[^>]*x(\w+)>", text)
    assert conv_types and set(conv_types) == {"bf16"}
    infer_convs = re.findall(r"stablehlo.convolution.*-> tensor<[^>]*x(\w+)>",
                             prep.infer_lowered.as_text())
    assert infer_convs and set(infer_convs) == {"bf16"}
    # The shared eval step returns float32 log-probabilities (softmax in float32).
    assert prep.infer_step().dtype.name == "float32"
    loss = float(prep.train_step())
    assert math.isfinite(loss)
    import jax

    # Master parameters, BatchNorm statistics and optimizer state stay float32.
    for tree in (prep.state["params"], prep.state["rest"], prep.state["opt_state"]):
        assert {leaf.dtype.name for leaf in jax.tree.leaves(tree)} <= {"float32", "int32"}
    assert prep.train_flops > 0 and prep.infer_flops > 0


def test_out_of_memory_halves_the_batch(monkeypatch):
    calls = []

    def fake_measure(name, batch_size, image_size, **kw):
        calls.append(batch_size)
        if batch_size > 2:
            raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate")
        row = speed.new_row(name, "jax", "fp32", 32, batch_size)
        row["train_img_per_s"] = 10.0
        return row

    monkeypatch.setattr(speed, "measure", fake_measure)
    (row,) = speed.speed(["resnet20"], batch_size=8, image_size=32)
    assert calls == [8, 4, 2]
    assert row["batch"] == 2
    assert "8, 4" in row["batch_note"] and "measured at 2" in row["batch_note"]


def test_other_errors_are_not_swallowed(monkeypatch):
    def broken(*a, **kw):
        raise RuntimeError("INTERNAL: something else")

    monkeypatch.setattr(speed, "measure", broken)
    with pytest.raises(RuntimeError, match="INTERNAL"):
        speed.speed(["resnet20"], batch_size=8, image_size=32)


def test_bad_arguments_fail_before_any_work():
    with pytest.raises(ValueError, match="below its minimum"):
        speed.speed(["resnet20", "xception"], image_size=32)
    with pytest.raises(ValueError, match="precision"):
        speed.speed(["resnet20"], precision="fp16")
    with pytest.raises(ValueError, match="--vs"):
        speed.speed(["resnet20"], vs=("mxnet",))
    with pytest.raises(KeyError, match="unknown model"):
        speed.speed(["resnet21"])


def test_flatten_head_models_are_built_for_the_input_size():
    import models

    assert models.size_kwargs("basic_cnn", 32) == {"input_size": (32, 32)}
    assert models.size_kwargs("resnet20", 32) == {}


def test_peak_table():
    assert speed.peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == pytest.approx(989.4)
    assert speed.peak_tflops("NVIDIA H100 PCIe", "bf16") == pytest.approx(756.0)
    assert speed.peak_tflops("NVIDIA H200", "fp32") == pytest.approx(66.9)
    assert speed.peak_tflops("TPU v4", "fp32") is None
    assert speed.peak_tflops("cpu", "bf16") is None


_CPUINFO = """processor\t: 0
vendor_id\t: {vendor}
cpu family\t: {family}
model\t\t: {model}
cpu MHz\t\t: 2500.000
siblings\t: {siblings}
cpu cores\t: {cores}
flags\t\t: fpu sse sse2 {flags}

processor\t: 1
cpu MHz\t\t: 9999.000
"""


@pytest.mark.parametrize("vendor,family,model,flags,per_cycle", [
    ("AuthenticAMD", 25, 17, "avx avx2 fma avx512f", 32),  # Zen 4: 512-bit double-pumped
    ("AuthenticAMD", 26, 2, "avx avx2 fma avx512f", 64),  # Zen 5
    ("GenuineIntel", 6, 85, "avx avx2 fma avx512f", 64),
    ("GenuineIntel", 6, 63, "avx avx2 fma", 32),
    ("AuthenticAMD", 23, 1, "avx avx2 fma", 16),  # Zen 1: 128-bit FMA pipes
    ("GenuineIntel", 6, 42, "avx", 16),
    ("GenuineIntel", 6, 23, "", 8),
])
def test_cpu_peak_from_cpuinfo(vendor, family, model, flags, per_cycle):
    text = _CPUINFO.format(vendor=vendor, family=family, model=model, flags=flags,
                           siblings=4, cores=2)  # SMT: 4 logical CPUs are 2 cores
    peak = speed.cpu_peak(text, cpus=4)
    assert (peak["cores"], peak["flops_per_cycle"]) == (2, per_cycle)
    assert peak["tflops"] == pytest.approx(2 * per_cycle * 2.5e9 / 1e12)  # first CPU's clock
    assert speed.cpu_peak("processor : 0\nflags : avx\n") is None  # no clock: no peak
    assert "TFLOP/s fp32" in speed.cpu_peak_text(peak)


def test_peer_ratios_and_missing_peers(monkeypatch):
    def fake_measure(name, batch_size, image_size, **kw):
        row = speed.new_row(name, "jax", "fp32", 32, batch_size)
        row.update(train_img_per_s=30.0, infer_img_per_s=90.0)
        return row

    def fake_keras(model, **kw):
        row = speed.new_row(model, "keras", "fp32", kw["image_size"], kw["batch_size"])
        row.update(train_img_per_s=10.0, infer_img_per_s=None)
        return row

    monkeypatch.setattr(speed, "measure", fake_measure)
    monkeypatch.setattr(keras_peer, "measure", fake_keras)
    monkeypatch.setattr(torch_peer, "torch", None)  # as if PyTorch were not installed
    rows = speed.speed(["resnet20"], batch_size=8, image_size=32, vs=("keras", "torch"),
                       isolate_peers=False)
    assert [r["framework"] for r in rows] == ["jax", "keras", "torch"]
    assert rows[0]["train_vs_keras"] == pytest.approx(3.0)
    assert rows[0]["infer_vs_keras"] is None
    assert rows[0]["train_vs_torch"] is None
    assert rows[2]["note"] == "torch not installed"
    md = speed.speed_markdown(rows)
    assert "train vs keras" in md and "3.00x" in md and "torch not installed" in md


def test_peer_notes_without_running(monkeypatch):
    def no_keras():
        raise ImportError("No module named 'keras'")

    monkeypatch.setattr(keras_peer, "_import_keras", no_keras)
    row = measure_peer("keras", "resnet20", batch_size=8, image_size=32)
    assert row["note"].startswith("keras not installed") and row["train_img_per_s"] is None
    with pytest.raises(ValueError, match="peer"):
        measure_peer("jax2", "resnet20", batch_size=8, image_size=32)


def test_keras_peer_times_the_same_architecture():
    try:
        keras_peer._import_keras()  # the JAX backend unless KERAS_BACKEND says otherwise
    except ImportError as e:
        pytest.skip(f"keras unavailable: {e}")
    row = measure_peer("keras", "simplenet", batch_size=4, image_size=32)
    assert row["note"] == "no Keras equivalent of simplenet"
    row = measure_peer("keras", "resnet20", batch_size=4, image_size=32, warmup=0, repeats=1,
                       train=False)
    assert row["params"] == RESNET20_PARAMS  # same architecture, counted the same way
    assert row["infer_img_per_s"] > 0 and row["train_img_per_s"] is None
    assert "backend" in row["note"]


def test_torch_peer_times_the_same_architecture():
    pytest.importorskip("torch")
    import models
    from flax import nnx

    for name in ("resnet20", "efficientnet_lite0", "resnet50", "mobilenet_v2"):  # hand-written
        # when timm / torchvision are absent
        net, origin = torch_peer.build(name, models.get_model_info(name).num_classes)
        ours = models.param_count(nnx.eval_shape(lambda: models.create_model(name)))["total"]
        assert torch_peer.param_count(net) == ours, (name, origin)
    row = measure_peer("torch", "resnet20", batch_size=4, image_size=32, precision="bf16",
                       warmup=0, repeats=1)
    assert row["params"] == RESNET20_PARAMS
    assert row["train_img_per_s"] > 0 and row["infer_img_per_s"] > 0
    assert "channels_last" in row["note"]


def test_write_speed(tmp_path):
    row = speed.new_row("resnet20", "jax", "bf16", 32, 8)
    row.update(train_img_per_s=123.4, train_mfu=0.41, train_vs_torch=1.5)
    json_path, md_path = speed.write_speed([row], tmp_path, command="bench speed x")
    data = json.loads(json_path.read_text())
    assert data["command"] == "bench speed x" and data["rows"][0]["train_img_per_s"] == 123.4
    assert {"device", "versions", "date"} <= set(data) and data["versions"]["jax"]
    md = md_path.read_text()
    assert "`bench speed x`" in md and "| resnet20 | jax | bf16 |" in md
    assert "41.0%" in md and "1.50x" in md


# -- bench compare ----------------------------------------------------------------------------


def _speed_file(path, rows):
    path.write_text(json.dumps({"kind": "bench-speed", "rows": rows}))
    return path


def test_compare_flags_a_speed_regression(tmp_path):
    def r(model, train, infer):
        row = speed.new_row(model, "jax", "fp32", 32, 8)
        row.update(train_img_per_s=train, infer_img_per_s=infer)
        return row

    a = _speed_file(tmp_path / "a.json", [r("resnet20", 100.0, 300.0), r("resnet56", 40, 90)])
    b = _speed_file(tmp_path / "b.json", [r("resnet20", 80.0, 330.0), r("resnet56", 39, 90),
                                          r("vgg16", 5, 9)])
    rows = compare.compare_files(a, b, threshold=0.05)
    status = {(x["key"].split()[0], x["metric"]): x["status"] for x in rows}
    assert status[("resnet20", "train_img_per_s")] == "regression"  # -20%
    assert status[("resnet20", "infer_img_per_s")] == "improvement"  # +10%
    assert status[("resnet56", "train_img_per_s")] == "same"  # -2.5%, within 5%
    assert status[("vgg16", "train_img_per_s")] == "only in b"
    assert len(compare.regressions(rows)) == 1
    reg = compare.regressions(rows)[0]
    assert reg["change"] == pytest.approx(-0.2)
    table = compare.compare_table(rows)
    assert "!!" in table and "-20.0%" in table and "1 regression(s)" in table
    # A looser threshold lets it pass.
    assert not compare.regressions(compare.compare_files(a, b, threshold=0.25))


def test_compare_pytest_benchmark_and_summary(tmp_path):
    def bench_json(path, median):
        path.write_text(json.dumps({"benchmarks": [
            {"name": "test_train[resnet20]", "fullname": "t.py::test_train[resnet20]",
             "stats": {"median": median}}]}))
        return path

    rows = compare.compare_files(bench_json(tmp_path / "a.json", 1.0),
                                 bench_json(tmp_path / "b.json", 1.2))
    assert [r["status"] for r in rows] == ["regression"]  # 20% slower

    def summary(path, acc, loss):
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["run_id", "tag", "model", "dataset", "accuracy", "log_loss"])
            w.writerow(["r1", "resnet20", "resnet20", "digits", acc, loss])
        return path

    rows = compare.compare_files(summary(tmp_path / "a.csv", 0.90, 0.30),
                                 summary(tmp_path / "b.csv", 0.80, 0.25))
    status = {r["metric"]: r["status"] for r in rows}
    assert status == {"accuracy": "regression", "log_loss": "improvement"}
    with pytest.raises(ValueError, match="cannot compare"):
        compare.compare_files(tmp_path / "a.csv", tmp_path / "a.json")
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(ValueError, match="not a bench speed.json"):
        compare.compare_files(tmp_path / "other.json", tmp_path / "other.json")


# -- HTML report ------------------------------------------------------------------------------


def _fake_record(tag, acc, img_s, params):
    classes = ["cat", "dog", "fox"]
    cm = [[8, 1, 1], [0, 9, 1], [2, 0, 8]]
    hist = [{"epoch": e, "train_loss": 1.0 / e, "train_accuracy": 0.5 + 0.1 * e,
             "val_loss": 1.1 / e, "val_accuracy": 0.45 + 0.1 * e} for e in (1, 2, 3)]
    return {"run_id": f"{tag}-digits-1dev-0", "tag": tag, "model": tag, "status": "complete",
            "dataset": {"name": "digits"}, "epochs_completed": 3, "accuracy": acc,
            "log_loss": 0.4, "train_img_per_s": img_s, "infer_img_per_s": 3 * img_s,
            "params_total": params, "weights_bytes": 4 * params, "history": hist,
            "confusion": cm, "classes": classes, "device": {"count": 1, "kind": "cpu"},
            "finished": "2025-01-01T00:00:00"}


def test_write_html_and_plots(tmp_path):
    from bench.report.html import PLOT_NAMES, write_html, write_plots

    records = [_fake_record("resnet20", 0.83, 900.0, 271_098),
               _fake_record("vgg16<cut>", 0.91, 120.0, 14_000_000)]
    path = write_html(tmp_path, records)
    text = path.read_text()
    assert path == tmp_path / "report.html"
    assert "<table" in text and "<th>acc</th>" in text and "<script>" in text
    assert "vgg16&lt;cut&gt;" in text and "vgg16<cut>" not in text  # escaped
    assert 'data-v="0.91"' in text and ">91.00%<" in text
    images = re.findall(r'<img alt="(\w+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert [name for name, _ in images] == list(PLOT_NAMES)
    assert all(base64.b64decode(b64)[:8] == b"\x89PNG\r\n\x1a\n" for _, b64 in images)
    assert "http" not in text.replace("http-equiv", "")  # self-contained: no external links
    paths = write_plots(tmp_path, records)
    assert [p.name for p in paths] == [f"{n}.png" for n in PLOT_NAMES]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)


def test_write_html_reads_the_results_directory(tmp_path):
    from runtime import io as bio
    from bench.report.html import write_html

    rec = _fake_record("resnet20", 0.8, 500.0, 271_098)
    bio.write_json(tmp_path / "runs" / rec["run_id"] / "record.json", rec)
    row = speed.new_row("resnet20", "jax", "fp32", 32, 8)
    row["train_img_per_s"] = 777.0
    bio.write_json(tmp_path / "speed.json", {"rows": [row], "device": "1x cpu",
                                             "command": "bench speed", "date": "today"})
    text = write_html(tmp_path).read_text()
    assert "resnet20" in text and "bench speed" in text and ">777.0<" in text
    assert text.count("<table") == 2


def test_conv_gap_script_times_every_kernel(capsys, tmp_path):
    """`python -m bench.peers.conv_gap`: forward and both gradients per ResNet-20 shape."""
    import json

    from bench.speed.peers import conv_gap

    out = tmp_path / "gap.json"
    assert conv_gap.main(["--batch", "2", "--warmup", "0", "--repeats", "1", "--no-torch",
                          "--rewrite", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["shape"] for r in rows] == ["2x32x32x16", "2x16x16x32", "2x8x8x64"]
    for r in rows:
        for k in ("fwd", "bwd_input", "bwd_kernel", "bwd_kernel_shifted"):
            assert r[f"jax_{k}_ms"] > 0
    assert "ResNet-20's 3x3 convolutions" in capsys.readouterr().out


def test_peer_in_a_process_of_its_own():
    """``bench speed`` times peers in a child process (no OpenMP runtime or thread pool
    shared with ours); the row and the child's versions come back, a failure as a note."""
    from bench.speed.peers import measure_peer_isolated

    row = measure_peer_isolated("keras", "simplenet", batch_size=4, image_size=32)
    assert row["framework"] == "keras" and row["model"] == "simplenet"
    assert row["note"] and row["train_img_per_s"] is None  # no Keras simplenet, or no Keras
    assert row["versions"]["jax"] == jax.__version__
    with pytest.raises(ValueError, match="--vs"):
        measure_peer_isolated("mxnet", "resnet20", batch_size=4, image_size=32)


def test_failed_peer_process_is_a_note(monkeypatch):
    from bench.speed.peers import measure_peer_isolated

    monkeypatch.setattr(sys, "executable", "false")  # a "Python" that exits 1 at once
    row = measure_peer_isolated("torch", "resnet20", batch_size=4, image_size=32,
                                precision="fp32")
    assert row["note"] == "peer process failed: exit status 1"
    assert row["framework"] == "torch" and row["batch"] == 4 and row["train_img_per_s"] is None


# A stand-in peer process for PeerTurns: it times a 5 ms busy loop with time_calls, as a
# peer module would, and writes each call's (start, end) to a file.
_TURN_CHILD = """
import json, sys, time
from bench.speed import timing
from bench.speed.peers import ChildTurns
a = json.loads(sys.stdin.read())
timing.SETTLE_S = 0.0
turns = ChildTurns(a["go"], a["done"])
spans = []
def call():
    t0 = time.monotonic()
    while time.monotonic() - t0 < 0.005:
        pass
    spans.append((t0, time.monotonic()))
with timing.taking_turns(turns):
    timing.time_calls(call, 1, a["kwargs"]["repeats"])
open(a["kwargs"]["log"].replace("PEER", a["peer"]), "w").write(json.dumps(spans))
print("\\n" + {mark!r} + json.dumps({{"framework": a["peer"], "calls": len(spans)}}), flush=True)
turns.bye()
"""


def test_peers_take_turns_call_by_call_and_never_overlap(tmp_path, monkeypatch):
    from bench.speed import timing
    from bench.speed.peers import PeerTurns

    monkeypatch.setattr(timing, "SETTLE_S", 0.0)  # one untimed call before each timed one
    spans = []

    def call():
        t0 = time.monotonic()
        while time.monotonic() - t0 < 0.005:
            pass
        spans.append((t0, time.monotonic()))

    turns = PeerTurns(["a", "b"], "m", _script=_TURN_CHILD, repeats=3,
                      log=str(tmp_path / "PEER.json"))
    with timing.taking_turns(turns):
        timing.time_calls(call, 1, 3)
    rows = turns.finish()
    assert [r["framework"] for r in rows] == ["a", "b"]
    # first + 1 warm-up + 3 x (untimed + timed) calls on each side
    assert [r["calls"] for r in rows] == [8, 8] and len(spans) == 8
    everyone = sorted([(s, "ours") for s in spans]
                      + [(tuple(s), p) for p in ("a", "b")
                         for s in json.loads((tmp_path / f"{p}.json").read_text())])
    for (s1, _), (s2, _) in zip(everyone, everyone[1:]):
        assert s1[1] <= s2[0], "two steps ran at once"
    # each turn of ours comes after one turn of each stand-in
    order = [who for _, who in everyone]
    assert order[:4] == ["a", "b", "ours", "a"]


def test_failed_peer_process_taking_turns_is_a_note(monkeypatch):
    from bench.speed import timing
    from bench.speed.peers import PeerTurns

    monkeypatch.setattr(sys, "executable", "false")  # a "Python" that exits 1 at once
    turns = PeerTurns(["torch"], "resnet20", batch_size=4, image_size=32, precision="fp32")
    calls = []
    with timing.taking_turns(turns):
        timing.time_calls(lambda: calls.append(1), 0, 2)
    assert len(calls) >= 5  # ours went on alone
    (row,) = turns.finish()
    assert row["note"] == "peer process failed: exit status 1"
    assert row["framework"] == "torch" and row["batch"] == 4
