"""Weights files from strangers (issue 13): memory bombs refused within a memory bound, no state
shared between loads, and one-line errors naming the file, the tensor or layer and the limit.

Every hostile file is crafted here. Those that made the old readers allocate gigabytes are only
loaded in a child process under an address-space limit (``_probe``), never in the test process.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import zipfile
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from flax import nnx

import models
from models.keras_weights import load_keras_h5, read_keras_h5, write_keras_h5
from models.torch_weights import (
    UnsafePickleError,
    load_torch_file,
    read_torch_state_dict,
    torch_shapes,
)
from models.weights_errors import WeightsFileError
from test_torch_weights import ORDERED_DICT, Call, Global, PersistentId, dumps, write_zip

# ---------------------------------------------------------------------------------------------
# Crafting.


def _tensor_ref(key: str, numel: int, shape, stride, storage="FloatStorage", offset=0):
    """A tensor pickled as torch does, with any declared storage size, shape and stride."""
    pid = PersistentId(("storage", Global("torch", storage), key, "cpu", numel))
    return Call(Global("torch._utils", "_rebuild_tensor_v2"),
                (pid, offset, tuple(shape), tuple(stride), False, Call(ORDERED_DICT, ())))


def _torch_zip(path: Path, items, members: dict[str, bytes], deflated=(), pkl=None) -> Path:
    """A torch >= 1.6 zip: ``archive/data.pkl`` (``items`` as an OrderedDict) + members."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", pkl if pkl is not None else
                    dumps(Call(ORDERED_DICT, (list(items),))))
        zf.writestr("archive/byteorder", "little")
        for key, data in members.items():
            zf.writestr(f"archive/data/{key}", data,
                        zipfile.ZIP_DEFLATED if key in deflated else zipfile.ZIP_STORED)
    return path


def _tiny_h5(path: Path, **create) -> Path:
    """A Keras-2 file with one Dense layer 'dense' (kernel (4, 8), bias (8,))."""
    rng = np.random.RandomState(0)
    write_keras_h5(path, {"dense": [rng.randn(4, 8), rng.randn(8)]},
                   {"dense": ["kernel", "bias"]})
    return path


def _replace_kernel(path: Path, **create) -> None:
    with h5py.File(path, "a") as f:
        del f["dense/dense/kernel:0"]
        return f["dense"].create_dataset("dense/kernel:0", **create)


# Every crafted file is <= 1 MB; ``kind`` says how the child process loads it.
def craft_all(tmp: Path) -> dict[str, tuple[str, str, str]]:
    """{name: (kind, path, regex the one-line error must match)}"""
    out = {}
    # 1 a. stride 0 over a 1-element storage, declared shape 2**20 x 2**20 (4 TiB as float32).
    p = _torch_zip(tmp / "stride0.pth", [("w", _tensor_ref("0", 1, (1 << 20, 1 << 20),
                                                            (0, 0)))], {"0": b"\0" * 4})
    out["stride0"] = ("torch_read", str(p), r"stride0.pth: tensor 'w' .*overlap")
    # 1 b. shape whose int64 product wraps to 0 (2**64 elements): the old reader took it for
    # an empty tensor and asked numpy for zeros of that shape.
    p = _torch_zip(tmp / "wrap.pth", [("w", _tensor_ref("0", 1, (1 << 32, 1 << 32),
                                                         (0, 0)))], {"0": b"\0" * 4})
    out["wrap"] = ("torch_read", str(p), r"wrap.pth: tensor 'w' .*overlap")
    # 1 c. a deflated storage member: 0.25 MB inflating to 256 MiB.
    n = 64 << 20
    p = _torch_zip(tmp / "deflated.pth", [("w", _tensor_ref("0", n, (n,), (1,)))],
                   {"0": b"\0" * (4 * n)}, deflated={"0"})
    out["deflated"] = ("torch_read", str(p),
                       r"deflated.pth: (storage '0' is compressed to \d+ bytes and would inflate "
                       r"to 268435456|tensor 'w' .* needs 268435456 bytes), past the reader's "
                       r"limit of \d+")
    # 1 d. the same file loaded into a model: the model's shape for 'fc.weight' is (4, 8).
    p = _torch_zip(tmp / "deflated_fc.pth", [("fc.weight", _tensor_ref("0", n, (n,), (1,)))],
                   {"0": b"\0" * (4 * n)}, deflated={"0"})
    out["deflated_fc"] = ("torch_model", str(p),
                          r"deflated_fc.pth: tensor 'fc.weight' \(shape \(67108864,\).*the "
                          r"model expects shape \(4, 8\)")
    # 1 e. overlapping stored members (a "better zip bomb"): 2,000 storages of 256 kB each,
    # 512 MB of reads from a 0.5 MB file.
    out["overlap"] = ("torch_read", str(_overlapping_zip(tmp / "overlap.pth")),
                      r"overlap.pth: ((storage|tensor) '\w+'.* needs 262144 bytes, past the "
                      r"reader's limit|.*Overlapped entries)")
    # 1 f. a 10-byte pickle whose LONG_BINPUT index makes the C unpickler allocate and zero a
    # memo table of 2 * 0x0fffffff pointers (4 GiB).
    p = _torch_zip(tmp / "memo.pth", [], {}, pkl=pickle.PROTO + b"\x02" + pickle.EMPTY_DICT
                   + pickle.LONG_BINPUT + struct.pack("<I", 0x0FFFFFFF) + pickle.STOP)
    out["memo"] = ("torch_read", str(p), r"memo.pth: archive/data.pkl stores memo entry "
                                         r"268435455 after 0 entries")
    # 1 g. a gzip-compressed .h5 dataset of declared shape 2**20 x 2**20 (4 TiB), one chunk.
    p = _tiny_h5(tmp / "huge.h5")
    ds = _replace_kernel(p, shape=(1 << 20, 1 << 20), dtype="f4", chunks=(512, 512),
                         compression="gzip")
    with h5py.File(p, "a") as f:
        f["dense/dense/kernel:0"][:512, :512] = 1.0
    out["huge_h5"] = ("h5_read", str(p), r"huge.h5: layer 'dense': weight 'dense/kernel:0' "
                                          r"\(shape \(1048576, 1048576\), float32\) needs "
                                          r"4398046511104 bytes, past the reader's limit")
    out["huge_h5_model"] = ("h5_model", str(p), r"huge.h5: layer 'dense': the file has "
                                                r"weights \[\('kernel', \(1048576, 1048576\)\)")
    # 1 h. the model's own shape (4, 8) for the kernel, its one gzip chunk inflating to
    # 256 MiB: HDF5's deflate filter grows its buffer until the stream ends.
    p = _tiny_h5(tmp / "inflate.h5")
    _replace_kernel(p, shape=(4, 8), dtype="f4", chunks=(4, 8), compression="gzip")
    with h5py.File(p, "a") as f:
        f["dense/dense/kernel:0"].id.write_direct_chunk((0, 0), zlib.compress(b"\0" * (256 << 20), 9))
    out["inflate_h5"] = ("h5_model", str(p), r"inflate.h5: layer 'dense': weight "
                                             r"'dense/kernel:0': chunk 0 does not inflate to "
                                             r"exactly its 128 bytes")
    for name, (_, path, _) in out.items():
        assert os.path.getsize(path) <= 1 << 20, (name, os.path.getsize(path))
    return out


def _overlapping_zip(path: Path, entries: int = 2000, size: int = 256 << 10) -> Path:
    """A "quoted overlap" zip: stored member i's data starts with the local headers of members
    i+1, ... and ends in one shared 256 kB body, so each member holds >= 256 kB of a file of
    0.5 MB. (Python >= 3.11.8 / 3.12.2 refuses such zips itself: "Overlapped entries".)"""
    numel = size // 4
    pkl = dumps(Call(ORDERED_DICT, ([(f"w{i}", _tensor_ref(f"{i:04d}", numel, (numel,), (1,)))
                                     for i in range(entries)],)))

    def local(name: bytes, crc: int, n: int) -> bytes:
        return struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, 0, crc, n, n, len(name),
                           0) + name

    def central(name: bytes, crc: int, n: int, offset: int) -> bytes:
        return struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 0, 0, 0, crc, n, n,
                           len(name), 0, 0, 0, 0, 0, offset) + name

    body = b"\0" * size
    out = bytearray(local(b"archive/data.pkl", zlib.crc32(pkl), len(pkl)) + pkl)
    cd = [central(b"archive/data.pkl", zlib.crc32(pkl), len(pkl), 0)]
    names = [f"archive/data/{i:04d}".encode() for i in range(entries)]
    step = 30 + len(names[0])
    for i, name in enumerate(names):
        n = (entries - 1 - i) * step + size
        crc = zlib.crc32(body) if i == entries - 1 else 0  # only the last is read to its end
        cd.append(central(name, crc, n, len(out)))
        out += local(name, crc, n)
    out += body
    cd_offset = len(out)
    for r in cd:
        out += r
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(cd), len(cd), len(out) - cd_offset,
                       cd_offset, 0)
    path.write_bytes(bytes(out))
    return path


# ---------------------------------------------------------------------------------------------
# Loading in a child process under an address-space limit, measuring peak memory.

_CHILD = textwrap.dedent("""
    import json, resource, sys
    import numpy as np
    from flax import nnx
    from models.keras_weights import load_keras_h5, read_keras_h5
    from models.torch_weights import load_torch_file, read_torch_state_dict

    class Tiny:  # a Keras-exact model with one Dense layer 'dense' (4 -> 8)
        keras_top_layers = ()
        def __init__(self):
            self.dense = nnx.Linear(4, 8, rngs=nnx.Rngs(0))
        def keras_layers(self):
            return {"dense": self.dense}

    tiny, fc = Tiny(), {"fc": nnx.Linear(8, 4, rngs=nnx.Rngs(0))}
    load = {
        "torch_read": read_torch_state_dict,
        "torch_model": lambda p: load_torch_file(fc, p),
        "h5_read": read_keras_h5,
        "h5_model": lambda p: load_keras_h5(tiny, p),
    }
    vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1])
    extra = int(sys.argv[2]) << 20
    resource.setrlimit(resource.RLIMIT_AS, (vm * 1024 + extra, vm * 1024 + extra))
    def status(key):  # kB
        return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1])

    # Peak RSS: VmHWM, the high-water mark of this process' own memory. ru_maxrss would do
    # only in a process started by exec from a small one: Linux carries the RSS of the forked
    # parent (pytest, ~0.5 GB) into a child's ru_maxrss. Reset it to the resident size after
    # the imports, whose transient peak would otherwise hide a load that stays below it.
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    base = status("VmRSS")
    results = {"_baseline": {"error": None, "peak_above_baseline_mb":
               (status("VmHWM") - base) / 1024}}
    for name, (kind, path) in json.loads(sys.argv[1]).items():
        try:
            load[kind](path)
            err = None
        except BaseException as e:
            err = [type(e).__name__, [c.__name__ for c in type(e).__mro__], str(e)[:500]]
        results[name] = {"error": err, "peak_above_baseline_mb": (status("VmHWM") - base) / 1024,
                         "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    print(json.dumps(results))
""")


def _probe(files: dict[str, tuple[str, str]], extra_mb: int = 1536) -> dict:
    root = str(Path(models.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""),
               JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(files), str(extra_mb)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_memory_bombs_are_refused_in_one_line_within_200_mb(tmp_path):
    """Acceptance 1 and 2 of issue 13: each crafted file (<= 1 MB) is refused with a one-line
    ``WeightsFileError`` naming the file, the tensor/layer and the limit, and loading all of
    them raises the child's peak RSS by < 200 MB (the old readers allocated 0.3-4 GiB, or
    tried TiB)."""
    crafted = craft_all(tmp_path)
    results = _probe({k: (kind, path) for k, (kind, path, _) in crafted.items()})
    print(json.dumps(results, indent=1))
    for name, (_, _, pattern) in crafted.items():
        err = results[name]["error"]
        assert err is not None, f"{name}: loaded without error"
        cls, mro, msg = err
        assert "WeightsFileError" in mro, (name, cls, msg)
        assert "\n" not in msg
        assert __import__("re").search(pattern, msg), (name, msg)
    peak = max(r["peak_above_baseline_mb"] for r in results.values())  # incl. _baseline
    assert peak < 200, results


# ---------------------------------------------------------------------------------------------
# Defect 2: a rejected pickle must not change later loads.


def _sets_state_then_fails(target: bytes, state: bytes) -> bytes:
    """GLOBAL target; BUILD state; then a global the reader refuses (so the load fails)."""
    return (pickle.PROTO + b"\x02" + pickle.GLOBAL + target + pickle.EMPTY_DICT + pickle.MARK
            + state + pickle.SETITEMS + pickle.BUILD + pickle.POP
            + pickle.GLOBAL + b"os\nsystem\n" + pickle.STOP)


def _ustr(s: str) -> bytes:
    data = s.encode()
    return pickle.BINUNICODE + struct.pack("<I", len(data)) + data


@pytest.mark.parametrize("target,state", [
    (b"torch\nFloatStorage\n", _ustr("name") + _ustr("HalfStorage")),
    (b"torch._utils\n_rebuild_tensor_v2\n", _ustr("marker") + _ustr("set by a file")),
], ids=["storage-type", "rebuild-function"])
def test_rejected_build_leaves_later_loads_intact(tmp_path, target, state):
    bad = tmp_path / "build.pth"
    bad.write_bytes(_sets_state_then_fails(target, state))
    with pytest.raises(UnsafePickleError, match=r"build.pth: .*(BUILD|os.system)") as e:
        read_torch_state_dict(bad)
    assert "\n" not in str(e.value)
    good = tmp_path / "good.pth"
    tensors = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(3, np.float32)}
    write_zip(good, tensors)
    got = read_torch_state_dict(good)
    for k, v in tensors.items():
        assert got[k].dtype == v.dtype
        np.testing.assert_array_equal(got[k], v)
    from models import torch_weights

    assert not vars(torch_weights._rebuild_tensor_v2)


@pytest.mark.assets
def test_rejected_file_then_the_shipped_imagenet_weights(tmp_path):
    """One process: a rejected BUILD pickle, then efficientnet_lite0 'imagenet' still passes
    the cats-and-dogs sanity check of test_efficientnet_lite."""
    import test_efficientnet_lite as lite_tests

    bad = tmp_path / "build.pth"
    bad.write_bytes(_sets_state_then_fails(b"torch\nFloatStorage\n",
                                           _ustr("name") + _ustr("HalfStorage")))
    with pytest.raises(UnsafePickleError):
        read_torch_state_dict(bad)
    lite_tests.test_imagenet_weights_recognise_cats_and_dogs("efficientnet_lite0")


# ---------------------------------------------------------------------------------------------
# Defect 10 and the h5 reader's own chunk decoding.


def test_missing_weight_dataset_names_file_layer_and_weight(tmp_path):
    path = _tiny_h5(tmp_path / "gap.h5")
    with h5py.File(path, "a") as f:
        del f["dense/dense/bias:0"]
    pattern = r"gap.h5: layer 'dense': weight 'dense/bias:0' is listed .* no such dataset"
    with pytest.raises(WeightsFileError, match=pattern):
        read_keras_h5(path)
    with pytest.raises(WeightsFileError, match=pattern):
        load_keras_h5(_Tiny(), path)


class _Tiny:
    keras_top_layers = ()

    def __init__(self):
        self.dense = nnx.Linear(4, 8, rngs=nnx.Rngs(0))

    def keras_layers(self):
        return {"dense": self.dense}


@pytest.mark.parametrize("create", [
    dict(chunks=(4, 8), compression="gzip"),
    dict(chunks=(3, 5), compression="gzip", shuffle=True),  # edge chunks, shuffle + gzip
    dict(chunks=(2, 2)),  # chunked, no filter
], ids=["gzip", "gzip-shuffle-edges", "chunked"])
def test_compressed_and_chunked_h5_still_load(tmp_path, create):
    path = _tiny_h5(tmp_path / "ok.h5")
    kernel = np.random.RandomState(1).randn(4, 8).astype(np.float32)
    _replace_kernel(path, data=kernel, **create)
    np.testing.assert_array_equal(read_keras_h5(path)["dense"][0], kernel)
    model = _Tiny()
    load_keras_h5(model, path)
    np.testing.assert_array_equal(np.asarray(model.dense.kernel[...]), kernel)


def test_h5_external_link_is_not_followed(tmp_path):
    other = _tiny_h5(tmp_path / "other.h5")
    path = _tiny_h5(tmp_path / "linked.h5")
    with h5py.File(path, "a") as f:
        del f["dense/dense/kernel:0"]
        f["dense/dense/kernel:0"] = h5py.ExternalLink(str(other), "dense/dense/kernel:0")
    with pytest.raises(WeightsFileError, match=r"linked.h5: .*ExternalLink"):
        read_keras_h5(path)


# ---------------------------------------------------------------------------------------------
# What the torch reader still accepts, and the model's shapes as limits.


def test_deflated_zip_of_real_weights_still_loads(tmp_path):
    """A torch zip re-compressed by a zip tool (ratio ~1 for weights) is within the bound."""
    tensors = {"w": np.random.RandomState(0).randn(64, 64).astype(np.float32)}
    path = _torch_zip(tmp_path / "rezipped.pth",
                      [("w", _tensor_ref("0", 64 * 64, (64, 64), (64, 1)))],
                      {"0": tensors["w"].tobytes()}, deflated={"0"})
    np.testing.assert_array_equal(read_torch_state_dict(path)["w"], tensors["w"])


def test_overlapping_view_is_refused_but_transposed_view_loads(tmp_path):
    items = [("t", _tensor_ref("0", 12, (4, 3), (1, 4))),  # a transpose: fine
             ("bad", _tensor_ref("0", 12, (4, 3), (1, 2)))]  # rows overlap
    data = np.arange(12, dtype=np.float32)
    path = _torch_zip(tmp_path / "views.pth", items[:1], {"0": data.tobytes()})
    np.testing.assert_array_equal(read_torch_state_dict(path)["t"], data.reshape(3, 4).T)
    path = _torch_zip(tmp_path / "views.pth", items, {"0": data.tobytes()})
    with pytest.raises(WeightsFileError, match=r"views.pth: tensor 'bad' \(shape \(4, 3\), "
                                               r"stride \(1, 2\), offset 0\): .*overlap"):
        read_torch_state_dict(path)


def test_model_shapes_limit_the_reader(tmp_path):
    layers = {"conv": nnx.Conv(3, 8, (3, 3), rngs=nnx.Rngs(0)),
              "bn": nnx.BatchNorm(8, rngs=nnx.Rngs(0)),
              "fc": nnx.Linear(8, 5, rngs=nnx.Rngs(0))}
    shapes = torch_shapes(layers)
    assert shapes["conv.weight"] == (8, 3, 3, 3) and shapes["fc.weight"] == (5, 8)
    rng = np.random.RandomState(0)
    sd = {k: rng.randn(*s).astype(np.float32) for k, s in shapes.items()}
    path = tmp_path / "m.pth"
    write_zip(path, sd)
    assert load_torch_file(layers, path) == []
    np.testing.assert_array_equal(np.asarray(layers["fc"].kernel[...]), sd["fc.weight"].T)
    # Another head size: 'fc' is optional and skipped; any other shape is refused unread.
    sd["fc.weight"], sd["fc.bias"] = np.zeros((10, 8), np.float32), np.zeros(10, np.float32)
    write_zip(path, sd)
    assert load_torch_file(layers, path, optional=("fc",)) == ["fc"]
    with pytest.raises(WeightsFileError, match=r"m.pth: tensor 'fc.weight' \(shape \(10, 8\).*"
                                               r"the model expects shape \(5, 8\)"):
        load_torch_file(layers, path)


def test_budget_names_the_limit(tmp_path):
    path = tmp_path / "b.pth"
    write_zip(path, {"w": np.zeros(1000, np.float32)})
    with pytest.raises(WeightsFileError, match=r"b.pth: .*'w'.* needs 4000 bytes, past the "
                                               r"reader's limit of 1000 bytes"):
        read_torch_state_dict(path, max_bytes=1000)


def test_layers_without_weights_have_empty_name_lists(tmp_path):
    """Keras lists weightless layers with an empty 'weight_names' (HDF5 gives its storage
    size as 0, which h5py raises on)."""
    path = tmp_path / "with_input.h5"
    write_keras_h5(path, {"dense": [np.zeros((4, 8)), np.zeros(8)]},
                   {"dense": ["kernel", "bias"]}, extra_layer_names=("input_1", "flatten"))
    assert list(read_keras_h5(path)) == ["dense"]
    load_keras_h5(_Tiny(), path)
