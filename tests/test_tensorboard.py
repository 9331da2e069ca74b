"""TensorBoard: `bench train` writes per-epoch scalars and hparams into its run folder (read
back with tensorboard's own EventAccumulator), and `--profile` a jax.profiler trace."""

from __future__ import annotations

from pathlib import Path

from test_layouts import digit_images, write_csv_folder


def _accumulator(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_train_writes_event_files_and_profile(tmp_path, capsys):
    from bench.cli import main

    data = write_csv_folder(tmp_path / "digits-csv", digit_images(16))
    out = tmp_path / "out"
    assert main(["train", "--model", "benchmark_cnn", "--dataset", str(data), "--image-size",
                 "16", "--epochs", "2", "--batch-size", "8", "--optimizer", "adam", "--lr",
                 "3e-3", "--profile", "2", "--out", str(out), "-q"]) == 0
    capsys.readouterr()
    (run_dir,) = (out / "runs").iterdir()
    assert list(run_dir.glob("events.out.tfevents.*"))
    acc = _accumulator(run_dir)
    tags = set(acc.Tags()["scalars"])
    for tag in ("train/loss", "train/accuracy", "val/loss", "val/accuracy", "lr",
                "throughput/img_per_s", "throughput/step_ms"):
        assert tag in tags, tags
        assert [e.step for e in acc.Scalars(tag)] == [1, 2], tag
    import json

    record = json.loads((run_dir / "record.json").read_text())
    hist = record["history"]
    assert [round(e.value, 5) for e in acc.Scalars("val/accuracy")] == [
        round(h["val_accuracy"], 5) for h in hist]
    assert abs(acc.Scalars("test/accuracy")[0].value - record["accuracy"]) < 1e-6
    # hparams: the run's config, flattened, as the hparams plugin reads it.
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["model.name"].string_value == "benchmark_cnn"
    assert start.hparams["optim.epochs"].number_value == 2
    assert start.hparams["data.dataset"].string_value == str(data)
    # --profile 2: a trace TensorBoard's profile plugin / XProf opens.
    assert list(run_dir.glob("plugins/profile/*/*.xplane.pb"))


def test_flatten_and_disabled_writer(tmp_path):
    from bench.tblog import RunLog, flatten

    assert flatten({"a": {"b": 1, "c": [1, 2], "d": None}, "e": "x"}) == {
        "a.b": 1, "a.c": "[1, 2]", "a.d": "null", "e": "x"}
    log = RunLog(tmp_path, enabled=False)
    log.log_epoch({"epoch": 1, "train_loss": 1.0})
    log.log_hparams({"a": 1})
    log.close()
    assert not list(tmp_path.iterdir())
