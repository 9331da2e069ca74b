"""Streaming input (bench.stream): batch order, placement choice, bounded host memory, per-host
shards with jax.distributed on CPU, and mid-epoch resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import REPO, synthetic_dataset, write_image_folder

from bench import stream as bstream
from bench.config import make
from bench.train import train


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    env.pop("XLA_FLAGS", None)
    env.update(extra)
    return env


def _write_npy(path: Path, shape, chunk: int = 8192) -> None:
    """A uint8 .npy of ``shape`` written with plain file writes (nothing mapped here), each
    row a different byte pattern."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "|u1", "fortran_order": False, "shape": tuple(shape)})
        row = int(np.prod(shape[1:]))
        pattern = np.arange(row, dtype=np.int64)
        for start in range(0, shape[0], chunk):
            n = min(chunk, shape[0] - start)
            ids = np.arange(start, start + n, dtype=np.int64)[:, None]
            f.write(((ids * 7 + pattern) % 251).astype(np.uint8).tobytes())


# -- the loader -----------------------------------------------------------------------------

def test_epoch_order_is_the_device_paths_permutation():
    a = bstream.epoch_order(3, 5, 100)
    assert np.array_equal(a, np.random.default_rng([3, 5]).permutation(100))


def test_stream_batches_order_and_resume():
    from runtime.devices import Mesh

    mesh = Mesh.create(1)
    n, batch, spe = 103, 10, 10
    images = np.arange(n, dtype=np.uint8)[:, None, None, None].repeat(2, 1).repeat(2, 2)
    images = np.repeat(images, 3, axis=3)
    labels = np.arange(n, dtype=np.int32)
    with bstream.BatchStream(images, labels, batch=batch, steps_per_epoch=spe, seed=1,
                             sharding=mesh.data, end_epoch=2) as s:
        got = [(e, i, np.asarray(x), np.asarray(y)) for e, i, x, y in s]
        assert s.rows_read == 2 * spe * batch
    assert [(e, i) for e, i, _, _ in got] == [(e, i) for e in range(2) for i in range(spe)]
    for e, i, x, y in got:
        rows = bstream.epoch_order(1, e, n)[i * batch:(i + 1) * batch]
        assert np.array_equal(y, rows) and np.array_equal(x[:, 0, 0, 0], rows)
    # Resumed at (epoch 0, step 7): exactly the rest of the same sequence.
    with bstream.BatchStream(images, labels, batch=batch, steps_per_epoch=spe, seed=1,
                             sharding=mesh.data, end_epoch=2, start=(0, 7)) as s:
        assert s.state == (0, 7)
        rest = [(e, i, np.asarray(y)) for e, i, _, y in s]
        assert s.state == (2, 0)
    assert [(e, i) for e, i, _ in rest] == [(e, i) for e, i, _, _ in got[7:]]
    assert all(np.array_equal(a[2], b[3]) for a, b in zip(rest, got[7:]))


def test_stream_close_midway_and_errors_reach_the_consumer():
    from runtime.devices import Mesh

    mesh = Mesh.create(1)
    x, y = np.zeros((64, 2, 2, 3), np.uint8), np.zeros(64, np.int32)
    s = bstream.BatchStream(x, y, batch=8, steps_per_epoch=8, seed=0, sharding=mesh.data,
                            end_epoch=100, prefetch=2)
    next(s)
    s.close()
    assert not s._thread.is_alive()

    class Broken:
        shape, dtype = (64, 2, 2, 3), np.dtype(np.uint8)

        def __getitem__(self, rows):
            raise OSError("disk gone")

    with bstream.BatchStream(Broken(), y, batch=8, steps_per_epoch=8, seed=0,
                             sharding=mesh.data, end_epoch=1) as s:
        with pytest.raises(OSError, match="disk gone"):
            next(s)


def test_row_reader_memmap_reads_the_file(tmp_path):
    _write_npy(tmp_path / "x.npy", (500, 4, 4, 3))
    a = np.load(tmp_path / "x.npy", mmap_mode="r")
    full = np.asarray(a).copy()
    rows = np.array([400, 3, 250, 3, 17, 18, 19, 0, 499])
    reader = bstream.RowReader(a)
    assert reader.fd is not None  # pread from the file, not through the mapping
    assert np.array_equal(reader(rows), full[rows])
    view = bstream.RowReader(a[100:450])  # a slice of the memmap: its own offset
    assert view.fd is not None
    assert np.array_equal(view(np.array([0, 349, 5, 6])), full[100:450][[0, 349, 5, 6]])
    with pytest.raises(IndexError):
        view(np.array([350]))
    mem = bstream.RowReader(full)  # in memory: plain indexing
    assert mem.fd is None and np.array_equal(mem(rows), full[rows])
    strided = bstream.RowReader(a[::2])  # rows not contiguous in the file: indexing
    assert strided.fd is None and np.array_equal(strided(np.array([3, 1])), full[::2][[3, 1]])


def test_choose_placement():
    class Dev:
        def __init__(self, limit):
            self.limit = limit

        def memory_stats(self):
            return {"bytes_limit": self.limit} if self.limit else None

    gib = 1 << 30
    assert bstream.choose_placement("auto", gib, [Dev(80 * gib), Dev(16 * gib)])[0] == "device"
    p, why = bstream.choose_placement("auto", 9 * gib, [Dev(80 * gib), Dev(16 * gib)])
    assert p == "stream" and "16.0 GiB" in why  # the smallest device decides
    assert bstream.choose_placement("auto", 2 << 20, [Dev(None)], budget_mb=1)[0] == "stream"
    assert bstream.choose_placement("auto", 2 << 20, [Dev(None)], budget_mb=3)[0] == "device"
    assert bstream.choose_placement("stream", 1, [Dev(None)])[0] == "stream"
    # No memory stats (CPU): host RAM over the local devices.
    p, why = bstream.choose_placement("auto", 1, [Dev(None)] * 2)
    assert p == "device" and "host RAM" in why


def test_placement_options_do_not_change_the_run_id():
    base = make(model="resnet20")
    for kw in ({"data_placement": "stream"}, {"placement_budget_mb": 5.0},
               {"checkpoint_every": 7}):
        assert base.replace(**kw).run_id("digits", 1) == base.run_id("digits", 1)
    with pytest.raises(ValueError, match="--data-placement"):
        make(data_placement="disk")


# -- training -------------------------------------------------------------------------------

def test_stream_trains_like_device_and_auto_streams_over_budget(tmp_path):
    ds = synthetic_dataset(n_per_class=40, size=16)
    kw = dict(model="resnet20", epochs=2, batch_size=16, lr=0.05, image_size=16)
    dev = train(make(**kw, data_placement="device"), tmp_path / "d", quiet=True, dataset=ds)
    auto = train(make(**kw, placement_budget_mb=0.01), tmp_path / "a", quiet=True, dataset=ds)
    assert dev["data_placement"] == "device" and auto["data_placement"] == "stream"
    assert "placement-budget-mb" in auto["data_placement_reason"]
    assert auto["stream"]["rows_read"] == 2 * dev["steps_per_epoch"] * 16
    for a, b in zip(dev["history"], auto["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-6)
    assert dev["log_loss"] == pytest.approx(auto["log_loss"], rel=1e-6)


RSS_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from bench.data import Dataset, Split
    from bench.config import make
    from bench.train import train

    def hwm():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024

    path, out = sys.argv[1], sys.argv[2]
    x = np.load(path, mmap_mode="r")
    n, size = len(x), x.shape[1]
    y = (np.arange(n) % 3).astype(np.int32)
    rng = np.random.default_rng(0)
    small = lambda k: Split(rng.integers(0, 255, (k, size, size, 3), dtype=np.uint8),
                            (np.arange(k) % 3).astype(np.int32))
    ds = Dataset(name="big", source=path, fingerprint="big", classes=["a", "b", "c"],
                 image_size=(size, size), splits={"train": Split(x, y), "val": small(64),
                 "test": small(64)}, skipped=[], split_info={}, resize="none")
    cfg = make(model="small_cnn", model_arg=["depth=1", "width=4"], epochs=1,
               batch_size=2048, augment="none", image_size=size, placement_budget_mb=16,
               eval_batch_size=64)
    # Warm everything a run needs once on a tiny in-memory set of the same shapes, so the
    # measured run grows only by what depends on the data.
    warm = Dataset(name="warm", source="warm", fingerprint="warm", classes=["a", "b", "c"],
                   image_size=(size, size), splits={"train": small(4096), "val": small(64),
                   "test": small(64)}, skipped=[], split_info={}, resize="none")
    train(cfg, out + "-warm", quiet=True, dataset=warm)
    before = hwm()
    rec = train(cfg, out, quiet=True, dataset=ds)
    print(json.dumps({"before": before, "after": hwm(), "placement": rec["data_placement"],
                      "rows_read": rec["stream"]["rows_read"], "bytes": int(x.nbytes)}))
""")


def test_streamed_training_keeps_host_memory_bounded(tmp_path):
    """Train one epoch on memmapped training sets of 32 MB and 128 MB (auto placement with a
    16 MB budget streams them): the peak RSS grows by far less than the data read, and by
    about the same for both sizes."""
    script = tmp_path / "rss.py"
    script.write_text(RSS_SCRIPT)
    res = {}
    for mb in (32, 128):
        n = mb * (1 << 20) // (16 * 16 * 3)
        path = tmp_path / f"x{mb}.npy"
        _write_npy(path, (n, 16, 16, 3))
        p = subprocess.run([sys.executable, str(script), str(path), str(tmp_path / f"o{mb}")],
                           env=_env(), capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
        res[mb] = json.loads(p.stdout.strip().splitlines()[-1])
        path.unlink()
    growth = {mb: (r["after"] - r["before"]) / 2**20 for mb, r in res.items()}
    print(f"peak RSS growth over a streamed epoch, MB: {growth}")
    for mb, r in res.items():
        assert r["placement"] == "stream"
        assert r["rows_read"] * 16 * 16 * 3 > 0.95 * r["bytes"]  # the whole set was read
        assert growth[mb] < 300, growth
    assert growth[128] - growth[32] < 100, growth  # independent of the data set's size


# -- several processes ------------------------------------------------------------------------

MP_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    coord, nproc, pid, out, data = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
    if nproc > 1:
        jax.distributed.initialize(coord, num_processes=nproc, process_id=pid)
    from bench import stream
    from bench.config import make
    from bench.data import load_dataset
    from bench.train import train
    stream.ROW_LOG = []
    ds = load_dataset(data, 16, cache_dir=False, seed=0)
    cfg = make(model="resnet20", epochs=2, batch_size=16, lr=0.05, image_size=16,
               data_placement="stream")
    rec = train(cfg, out, quiet=True, dataset=ds)
    print(json.dumps({"history": rec["history"], "log_loss": rec["log_loss"],
                      "devices": jax.device_count(), "local_rows": rec["stream"]["local_rows"],
                      "rows": [[e, s, r.tolist()] for e, s, r in stream.ROW_LOG]}))
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_read_disjoint_halves_and_match_one_process(tmp_path):
    data = write_image_folder(tmp_path / "images", n_per_class=30, size=16)
    script = tmp_path / "mp.py"
    script.write_text(MP_SCRIPT)
    coord = f"localhost:{_free_port()}"
    procs = [subprocess.Popen([sys.executable, str(script), coord, "2", str(i),
                               str(tmp_path / "two"), str(data)], env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = []
    for p in procs:
        so, se = p.communicate(timeout=600)
        assert p.returncode == 0, se[-3000:]
        outs.append(json.loads(so.strip().splitlines()[-1]))
    one = subprocess.run([sys.executable, str(script), "", "1", "0", str(tmp_path / "one"),
                          str(data)], capture_output=True, text=True, timeout=600,
                         env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=2"))
    assert one.returncode == 0, one.stderr[-3000:]
    single = json.loads(one.stdout.strip().splitlines()[-1])
    assert single["devices"] == outs[0]["devices"] == 2
    assert outs[0]["local_rows"] == [0, 8] and outs[1]["local_rows"] == [8, 16]
    # Each process read its half of every global batch, never the other's, and together
    # exactly the rows the single process read, batch by batch.
    assert len(outs[0]["rows"]) == len(outs[1]["rows"]) == len(single["rows"]) > 0
    for a, b, s in zip(outs[0]["rows"], outs[1]["rows"], single["rows"]):
        assert a[:2] == b[:2] == s[:2]
        assert len(a[2]) == len(b[2]) == 8 and not set(a[2]) & set(b[2])
        assert a[2] + b[2] == s[2]
    for o in outs:
        assert len(o["history"]) == len(single["history"]) == 2
        for a, b in zip(o["history"], single["history"]):
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4, abs=1e-5)
            assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4, abs=1e-5)
        assert o["log_loss"] == pytest.approx(single["log_loss"], rel=1e-4, abs=1e-5)


# -- mid-epoch resume -----------------------------------------------------------------------

def test_stream_resume_mid_epoch_after_sigkill(tmp_path):
    """SIGKILL a streaming CLI run after a mid-epoch checkpoint; the same command resumes at
    that step and ends with the metrics of an uninterrupted run."""
    from runtime import io as bio

    data = write_image_folder(tmp_path / "images", n_per_class=60, size=16)
    args = ["--model", "resnet20", "--dataset", str(data), "--image-size", "16",
            "--epochs", "2", "--batch-size", "8", "--lr", "0.05", "--quiet",
            "--cache-dir", str(tmp_path / "cache"), "--data-placement", "stream",
            "--checkpoint-every", "3"]
    cmd = [sys.executable, "-m", "bench", "train"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen(cmd + args + ["--out", str(killed)], env=_env(), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline, meta = time.time() + 300, {}
    while time.time() < deadline and proc.poll() is None:
        ckpts = list(killed.glob("runs/*/last.npz"))
        if ckpts:
            try:
                meta = bio.load_arrays(ckpts[0])[1]
            except ValueError:
                meta = {}
            if meta.get("step"):
                break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not list(killed.glob("runs/*/record.json")), "run finished before the kill"
    meta = bio.load_arrays(next(killed.glob("runs/*/last.npz")))[1]
    assert meta["step"] > 0 and meta["epoch"] == 0, meta  # killed inside the first epoch
    resumed_run = subprocess.run(cmd + args + ["--out", str(killed)], env=_env(), cwd=REPO,
                                 capture_output=True, text=True, timeout=300)
    assert resumed_run.returncode == 0, resumed_run.stderr[-3000:]
    fresh = tmp_path / "fresh"
    subprocess.run(cmd + args + ["--out", str(fresh)], env=_env(), cwd=REPO, check=True,
                   capture_output=True, timeout=300)
    a = json.loads(next(killed.glob("runs/*/record.json")).read_text())
    b = json.loads(next(fresh.glob("runs/*/record.json")).read_text())
    assert a["epochs_completed"] == b["epochs_completed"] == 2
    for ra, rb in zip(a["history"], b["history"]):
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-6)
        assert ra["train_accuracy"] == pytest.approx(rb["train_accuracy"], abs=1e-9)
        assert ra["val_loss"] == pytest.approx(rb["val_loss"], rel=1e-6)
    assert a["log_loss"] == pytest.approx(b["log_loss"], rel=1e-6)
    assert a["accuracy"] == pytest.approx(b["accuracy"], abs=1e-9)
