"""Read PyTorch ``.pth`` / ``.pt`` state dicts without torch and without running pickle code.

``torch.save`` writes a pickle whose only globals, for a state dict of tensors, are
``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2`` (or ``_rebuild_parameter``)
and the ``torch.*Storage`` types; storages are pickled by reference (``persistent_load``) and
their bytes stored after the pickle (legacy format, torch < 1.6) or as zip members
(``<archive>/data.pkl`` + ``<archive>/data/<key>``, torch >= 1.6). ``read_torch_state_dict``
unpickles with a ``pickle.Unpickler`` whose ``find_class`` resolves exactly those names to the
functions of this module and refuses every other global with ``UnsafePickleError``, so a file
from a stranger can at worst fail to load. Tensors are rebuilt with bounds-checked indexing.

``assign_torch_weights`` copies such a state dict into Flax ``nnx.Conv`` / ``nnx.BatchNorm`` /
``nnx.Linear`` modules named by their PyTorch prefix, checking every key and shape.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any, Iterable, Mapping

import numpy as np

# First pickle of the legacy format (torch/serialization.py MAGIC_NUMBER, PROTOCOL_VERSION).
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001


class UnsafePickleError(ValueError):
    """The file's pickle asks for a global this reader does not allow (it may run code)."""


# torch storage type name -> numpy dtype name (byte order is applied when reading).
_STORAGE_DTYPES: dict[str, str] = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}


class _StorageType:
    """Stands for ``torch.FloatStorage`` etc. inside the pickle."""

    def __init__(self, name: str):
        self.name = name

    @property
    def dtype(self) -> np.dtype:
        name = _STORAGE_DTYPES[self.name]
        if name == "bfloat16":  # not a numpy type; ml_dtypes ships with jax
            import ml_dtypes

            return np.dtype(ml_dtypes.bfloat16)
        return np.dtype(name)


class _Storage:
    """A typed storage whose bytes may arrive after the pickle (legacy format)."""

    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key = key
        self.dtype = dtype
        self.numel = numel
        self.data: np.ndarray | None = None  # 1-D, filled by the format reader
        self.view: tuple[_Storage, int] | None = None  # (root, element offset) for views

    def array(self) -> np.ndarray:
        if self.view is not None:
            root, offset = self.view
            return root.array()[offset:offset + self.numel]
        if self.data is None:
            raise ValueError(f"storage {self.key!r} has no data in the file")
        return self.data


class _TensorRef:
    """A tensor to materialise once every storage has its bytes."""

    def __init__(self, storage, offset, size, stride):
        if not isinstance(storage, _Storage):
            raise ValueError(f"tensor rebuilt from {type(storage).__name__}, not a storage")
        self.storage = storage
        self.offset = _int(offset, "storage offset")
        self.size = tuple(_int(s, "size") for s in size)
        self.stride = tuple(_int(s, "stride") for s in stride)
        if len(self.size) != len(self.stride):
            raise ValueError(f"tensor size {self.size} and stride {self.stride} differ in rank")

    def array(self) -> np.ndarray:
        flat = self.storage.array()
        shape, stride, offset = self.size, self.stride, self.offset
        if any(s < 0 for s in shape + stride) or offset < 0:
            raise ValueError(f"negative size/stride/offset in tensor {shape} {stride} {offset}")
        n = int(np.prod(shape, dtype=np.int64))
        if n == 0:
            return np.zeros(shape, flat.dtype)
        contiguous = all(
            st == int(np.prod(shape[i + 1:], dtype=np.int64))
            for i, (st, sz) in enumerate(zip(stride, shape)) if sz > 1
        )
        last = offset + sum((sz - 1) * st for sz, st in zip(shape, stride))
        if last >= flat.size:
            raise ValueError(
                f"tensor of shape {shape} at offset {offset} reads element {last} of a "
                f"storage of {flat.size}"
            )
        if contiguous:
            return flat[offset:offset + n].reshape(shape).copy()
        index = np.full(shape, offset, np.int64)  # fancy indexing: bounds-checked by numpy
        for axis, (sz, st) in enumerate(zip(shape, stride)):
            bshape = [1] * len(shape)
            bshape[axis] = sz
            index = index + (np.arange(sz, dtype=np.int64) * st).reshape(bshape)
        return flat[index]


def _int(v, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"tensor {what} must be an int, got {type(v).__name__}")
    return v


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    if not isinstance(data, _TensorRef):
        raise ValueError(f"parameter rebuilt from {type(data).__name__}, not a tensor")
    return data


_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals of a tensor state dict; storages via ``persistent_load``."""

    def __init__(self, file, path: str, storages: dict[str, _Storage] | None = None,
                 storage_bytes=None):
        super().__init__(file, encoding="latin1")
        self._path = path
        self._storages = storages if storages is not None else {}
        self._storage_bytes = storage_bytes  # zip format: key -> np.ndarray of uint8

    def find_class(self, module: str, name: str):
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self._path}: refusing to load the global {module}.{name}: a tensor state "
                "dict only needs collections.OrderedDict, torch._utils._rebuild_tensor_v2 / "
                "_rebuild_parameter and torch.*Storage (the file may run code when unpickled)"
            ) from None

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid:
            raise ValueError(f"{self._path}: unexpected persistent id {pid!r}")
        kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if kind != "storage" or len(pid) not in (5, 6):
            raise ValueError(f"{self._path}: unsupported persistent id {pid[:1]!r}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise ValueError(f"{self._path}: storage of unknown type {storage_type!r}")
        key = key.decode("ascii") if isinstance(key, bytes) else str(key)
        numel = _int(numel, "storage size")
        view = pid[5] if len(pid) == 6 else None
        storage = self._storages.get(key)
        if storage is None:
            storage = _Storage(key, storage_type.dtype, numel)
            self._storages[key] = storage
            if self._storage_bytes is not None:  # zip: a member per storage
                raw = self._storage_bytes(key)
                nbytes = numel * storage.dtype.itemsize
                if raw.size < nbytes:
                    raise ValueError(
                        f"{self._path}: storage {key!r} has {raw.size} bytes, expected {nbytes} "
                        "(truncated or corrupted file)"
                    )
                storage.data = raw[:nbytes].view(storage.dtype)
        if view is None:
            return storage
        view_key, offset, view_size = view
        view_key = view_key.decode("ascii") if isinstance(view_key, bytes) else str(view_key)
        sub = self._storages.get(view_key)
        if sub is None:
            sub = _Storage(view_key, storage.dtype, _int(view_size, "view size"))
            sub.view = (storage, _int(offset, "view offset"))
            self._storages[view_key] = sub
        return sub


def read_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read the tensors of a PyTorch state dict file (``torch.save(model.state_dict())``).

    Both formats ``torch.save`` has written are read: the zip archive (torch >= 1.6) and the
    legacy stream of pickles. Nested dicts (``{"state_dict": {...}}``) are flattened with
    dotted keys; values that are not tensors (an epoch number, a name) are left out.

    Args:
      path: the ``.pth`` / ``.pt`` file.

    Returns:
      ``{key: np.ndarray}`` in the file's order, each array a copy in native byte order.

    Raises:
      UnsafePickleError: the pickle refers to any other global (it might execute code).
      ValueError: the file is truncated, corrupted or not a PyTorch file (naming the file).
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        blob = f.read()
    try:
        if blob[:4] == b"PK\x03\x04":
            obj = _load_zip(blob, path)
        else:
            obj = _load_legacy(blob, path)
    except UnsafePickleError:
        raise
    except (EOFError, pickle.UnpicklingError, zipfile.BadZipFile, struct.error,
            IndexError, KeyError, TypeError, AttributeError, ValueError,
            UnicodeDecodeError) as e:
        msg = str(e)
        if msg.startswith(path):
            raise ValueError(msg) from e
        raise ValueError(
            f"{path}: not a readable PyTorch state dict (truncated or corrupted?): "
            f"{type(e).__name__}: {e}"
        ) from e
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: holds a {type(obj).__name__}, expected a state dict")
    out: dict[str, np.ndarray] = {}
    try:
        _flatten(obj, "", out)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    if not out:
        raise ValueError(f"{path}: holds no tensors")
    return out


def _flatten(obj: Mapping, prefix: str, out: dict) -> None:
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, _TensorRef):
            a = v.array()
            out[key] = a.astype(a.dtype.newbyteorder("="), copy=False)
        elif isinstance(v, Mapping):
            _flatten(v, key + ".", out)


def _load_legacy(blob: bytes, path: str):
    """magic, protocol, sys info, the object, storage keys, then each storage's bytes."""
    f = io.BytesIO(blob)
    header = _RestrictedUnpickler(f, path)
    magic = header.load()
    if magic != LEGACY_MAGIC:
        raise ValueError(f"{path}: not a PyTorch file (magic number {magic!r})")
    protocol = _RestrictedUnpickler(f, path).load()
    if protocol != LEGACY_PROTOCOL:
        raise ValueError(f"{path}: legacy protocol {protocol!r}, expected {LEGACY_PROTOCOL}")
    sys_info = _RestrictedUnpickler(f, path).load()
    little = sys_info.get("little_endian", True) if isinstance(sys_info, dict) else True
    storages: dict[str, _Storage] = {}
    obj = _RestrictedUnpickler(f, path, storages).load()
    keys = _RestrictedUnpickler(f, path).load()
    if not isinstance(keys, list):
        raise ValueError(f"{path}: storage key list is a {type(keys).__name__}")
    order = "<" if little else ">"
    for key in keys:
        storage = storages.get(str(key))
        if storage is None:
            raise ValueError(f"{path}: storage {key!r} is listed but not used by the pickle")
        pos = f.tell()
        if pos + 8 > len(blob):
            raise ValueError(f"{path}: truncated before storage {key!r} (offset {pos})")
        (numel,) = struct.unpack(order + "q", blob[pos:pos + 8])
        if numel != storage.numel:
            raise ValueError(
                f"{path}: storage {key!r} holds {numel} elements, the pickle says {storage.numel}"
            )
        dtype = storage.dtype.newbyteorder(order)
        end = pos + 8 + numel * dtype.itemsize
        if end > len(blob):
            raise ValueError(
                f"{path}: truncated in storage {key!r} (needs bytes up to {end}, file has "
                f"{len(blob)})"
            )
        storage.data = np.frombuffer(blob, dtype, numel, pos + 8)
        f.seek(end)
    missing = [k for k, s in storages.items() if s.data is None and s.view is None]
    if missing:
        raise ValueError(f"{path}: storages {missing[:3]} have no data (truncated file?)")
    return obj


def _load_zip(blob: bytes, path: str):
    zf = zipfile.ZipFile(io.BytesIO(blob))
    pkls = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkls) != 1:
        raise ValueError(f"{path}: zip without a single <archive>/data.pkl (found {pkls})")
    root = pkls[0][: -len("data.pkl")]
    byteorder = "little"
    if f"{root}byteorder" in zf.namelist():
        byteorder = zf.read(f"{root}byteorder").decode("ascii").strip()
    if byteorder not in ("little", "big"):
        raise ValueError(f"{path}: unknown byteorder {byteorder!r}")
    order = "<" if byteorder == "little" else ">"

    def storage_bytes(key: str) -> np.ndarray:
        raw = zf.read(f"{root}data/{key}")
        return np.frombuffer(raw, np.uint8)

    storages: dict[str, _Storage] = {}
    unpickler = _RestrictedUnpickler(io.BytesIO(zf.read(pkls[0])), path, storages,
                                     storage_bytes)
    obj = unpickler.load()
    if order == ">":
        for s in storages.values():
            if s.data is not None:
                s.data = s.data.view(s.dtype.newbyteorder(">"))
    return obj


# ---------------------------------------------------------------------------------------------
# Copy a state dict into Flax modules.


def assign_torch_weights(
    layers: Mapping[str, Any],
    state: Mapping[str, np.ndarray],
    *,
    source: str,
    skip: Iterable[str] = (),
) -> None:
    """Copy PyTorch tensors into Flax modules, checking every key and shape first.

    Args:
      layers: ``{torch prefix: module}`` with ``nnx.Conv`` (OIHW -> HWIO; a depthwise
        ``(C, 1, k, k)`` kernel becomes ``(k, k, 1, C)``), ``nnx.BatchNorm`` (weight, bias,
        running_mean, running_var; ``num_batches_tracked`` is ignored) or ``nnx.Linear``
        (``(out, in)`` transposed).
      state: the state dict, e.g. from ``read_torch_state_dict``.
      source: the file name, quoted in errors.
      skip: prefixes not to load (a head of another size); their keys may be in the file.

    Raises:
      ValueError: naming ``source`` and the first key missing from the file, unexpected in
        it, or of the wrong shape. Nothing is assigned unless everything matches.
    """
    from flax import nnx

    skip = tuple(skip)
    plan: list[tuple[Any, np.ndarray]] = []
    used: set[str] = set()
    for prefix, module in layers.items():
        if prefix in skip:
            continue
        for name, var, convert in _module_vars(module, nnx):
            key = f"{prefix}.{name}"
            if key not in state:
                raise ValueError(f"{source}: missing key {key!r} (needed for the model's "
                                 f"{type(module).__name__} {prefix!r})")
            value = convert(np.asarray(state[key]))
            if value.shape != tuple(var.shape):
                raise ValueError(
                    f"{source}: {key!r} has shape {tuple(state[key].shape)} (as "
                    f"{value.shape} in Flax layout), the model expects {tuple(var.shape)}"
                )
            plan.append((var, value))
            used.add(key)
    skipped = {k for k in state if any(k.startswith(p + ".") for p in skip)}
    ignored = {k for k in state if k.endswith(".num_batches_tracked")}
    extra = [k for k in state if k not in used and k not in skipped and k not in ignored]
    if extra:
        raise ValueError(f"{source}: unexpected key {extra[0]!r} not in the model "
                         f"({len(extra)} unexpected in all)")
    for var, value in plan:
        var[...] = value.astype(var.dtype)


def _module_vars(module, nnx):
    """(torch name, nnx variable, torch->flax converter) for one module."""
    ident = lambda a: a  # noqa: E731
    if isinstance(module, nnx.Conv):
        yield "weight", module.kernel, lambda a: a.transpose(2, 3, 1, 0) if a.ndim == 4 else a
        if module.bias is not None:
            yield "bias", module.bias, ident
    elif isinstance(module, nnx.Linear):
        yield "weight", module.kernel, lambda a: a.T
        yield "bias", module.bias, ident
    elif isinstance(module, nnx.BatchNorm):
        if module.scale is not None:
            yield "weight", module.scale, ident
        if module.bias is not None:
            yield "bias", module.bias, ident
        yield "running_mean", module.mean, ident
        yield "running_var", module.var, ident
    else:
        raise TypeError(f"cannot load torch weights into a {type(module).__name__}")
