"""Read PyTorch ``.pth`` / ``.pt`` state dicts without torch and without running pickle code.

``torch.save`` writes a pickle whose only globals, for a state dict of tensors, are
``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2`` (or ``_rebuild_parameter``)
and the ``torch.*Storage`` types; storages are pickled by reference (``persistent_load``) and
their bytes stored after the pickle (legacy format, torch < 1.6) or as zip members
(``<archive>/data.pkl`` + ``<archive>/data/<key>``, torch >= 1.6). ``read_torch_state_dict``
unpickles with a ``pickle.Unpickler`` whose ``find_class`` resolves exactly those names to the
objects made for that one load (which refuse ``BUILD``, so one file cannot change how the next
is read) and refuses every other global with ``UnsafePickleError``. Before anything is
allocated, the pickle is walked opcode by opcode (bounded in size, opcodes and memo indices),
and each tensor's shape, strides and offset are checked against its storage (inside it, no
element twice), each storage against the bytes in the file (a compressed zip member may not
inflate past ``MAX_INFLATE_RATIO``), and the total against a budget of ``FILE_FACTOR`` times the
file's size (or the model's shapes, ``expected=``), so a file from a stranger can at worst fail
to load, with a one-line ``WeightsFileError``.

``assign_torch_weights`` copies such a state dict into Flax ``nnx.Conv`` / ``nnx.BatchNorm`` /
``nnx.Linear`` modules named by their PyTorch prefix, checking every key and shape.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import pickletools
import struct
import sys
import zipfile
import zlib
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .weights_errors import WeightsFileError

# First pickle of the legacy format (torch/serialization.py MAGIC_NUMBER, PROTOCOL_VERSION).
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# Limits on what a file may make the reader allocate. A state dict's pickle is ~100 bytes and
# ~15 opcodes per tensor (the 296-tensor EfficientNet-Lite0 file: 28 kB, 3,6k opcodes).
MAX_PICKLE_BYTES = 16 << 20
MAX_PICKLE_OPS = 1_000_000
MAX_NESTING = 16  # {"state_dict": {...}} and the like
MAX_NDIM = 32
# Everything the reader allocates for storages and tensors: FILE_FACTOR bytes per byte of the
# file plus BUDGET_MARGIN (a file holds each storage's bytes once; tensors copy them once).
FILE_FACTOR = 4
BUDGET_MARGIN = 16 << 20
# A compressed zip member (torch.save writes none) may inflate to at most this many times its
# compressed size, plus 64 KiB.
MAX_INFLATE_RATIO = 4


class UnsafePickleError(WeightsFileError):
    """The file's pickle asks for a global this reader does not allow (it may run code), or
    to set state on one."""


# torch storage type name -> numpy dtype name.
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


def _np_dtype(name: str) -> np.dtype:
    if name == "bfloat16":  # not a numpy type; ml_dtypes ships with jax
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


class _Frozen:
    """Base of every object a pickle can get hold of: created per load, and refusing ``BUILD``
    (``__setstate__``), so no pickle can change the reader or another load."""

    __slots__ = ()

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is read-only")

    def _init(self, **fields):
        for k, v in fields.items():
            object.__setattr__(self, k, v)

    def __setstate__(self, state):
        raise UnsafePickleError(
            f"{self._path}: the pickle sets state (BUILD) on {self._what()}, which a tensor state "
            "dict never does"
        )

    def _what(self) -> str:
        return type(self).__name__


class _StorageType(_Frozen):
    """Stands for ``torch.FloatStorage`` etc. inside one load."""

    __slots__ = ("name", "dtype", "_path")

    def __init__(self, name: str, path: str):
        self._init(name=name, dtype=_np_dtype(_STORAGE_DTYPES[name]), _path=path)

    def _what(self) -> str:
        return f"torch.{self.name}"


class _Global(_Frozen):
    """A whitelisted function or class (``_rebuild_tensor_v2``, ``OrderedDict``) for one load."""

    __slots__ = ("qualname", "func", "_path")

    def __init__(self, qualname: str, func, path: str):
        self._init(qualname=qualname, func=func, _path=path)

    def __call__(self, *args, **kwargs):
        return self.func(self._path, *args, **kwargs)

    def _what(self) -> str:
        return self.qualname


class _Storage(_Frozen):
    """A typed storage of ``numel`` elements; its bytes are read when a tensor needs them.

    ``root``/``offset``: a view into another storage (torch < 1.0). ``load(storage)``: returns
    the raw bytes (``np.uint8``), exactly ``numel * itemsize`` of them.
    """

    __slots__ = ("key", "dtype", "numel", "root", "offset", "_load", "_cache", "_path")

    def __init__(self, key, dtype, numel, path, *, load=None, root=None, offset=0):
        self._init(key=key, dtype=dtype, numel=numel, root=root, offset=offset, _load=load,
                   _cache=[], _path=path)

    def raw(self) -> np.ndarray:
        """The storage's bytes, 1-D ``uint8`` of ``numel * itemsize``."""
        size = self.dtype.itemsize
        if self.root is not None:
            return self.root.raw()[self.offset * size:(self.offset + self.numel) * size]
        if not self._cache:
            if self._load is None:
                raise WeightsFileError(f"{self._path}: storage {self.key!r} has no data in the "
                                       "file (truncated file?)")
            raw = self._load(self)
            if raw.dtype != np.uint8 or raw.size != self.numel * size:
                raise WeightsFileError(
                    f"{self._path}: storage {self.key!r} has {raw.size} bytes, expected "
                    f"{self.numel * size} (truncated or corrupted file)"
                )
            self._cache.append(raw)
        return self._cache[0]

    def _what(self) -> str:
        return f"storage {self.key!r}"


class _TensorRef(_Frozen):
    """A tensor to materialise once every storage has its bytes."""

    __slots__ = ("storage", "offset", "size", "stride", "_path")

    def __init__(self, path, storage, offset, size, stride):
        if not isinstance(storage, _Storage):
            raise WeightsFileError(
                f"{path}: tensor rebuilt from {type(storage).__name__}, not a storage")
        if not isinstance(size, tuple) or not isinstance(stride, tuple):
            raise WeightsFileError(f"{path}: tensor size and stride must be tuples")
        if len(size) > MAX_NDIM or len(size) != len(stride):
            raise WeightsFileError(
                f"{path}: tensor size {size[:MAX_NDIM]} and stride {stride[:MAX_NDIM]} differ in "
                f"rank or exceed {MAX_NDIM} dimensions"
            )
        self._init(storage=storage, offset=_int(path, offset, "storage offset"),
                   size=tuple(_int(path, s, "size") for s in size),
                   stride=tuple(_int(path, s, "stride") for s in stride), _path=path)

    def _what(self) -> str:
        return "a tensor"

    def array(self, key: str, budget: "_Budget", expected: tuple | None = None) -> np.ndarray:
        """Check shape, strides and offset against the storage and the budget, then copy."""
        path, storage = self._path, self.storage
        shape, stride, offset = self.size, self.stride, self.offset
        where = f"{path}: tensor {key!r} (shape {shape}, stride {stride}, offset {offset})"
        if expected is not None and shape != tuple(expected):
            raise WeightsFileError(f"{where}: the model expects shape {tuple(expected)}")
        if any(s < 0 for s in shape + stride) or offset < 0:
            raise WeightsFileError(f"{where}: negative size, stride or offset")
        n = math.prod(shape)
        if n == 0:
            return np.zeros(shape, storage.dtype)
        # Elements offset + sum(i_k * stride_k) must lie in the storage ...
        last = offset + sum((sz - 1) * st for sz, st in zip(shape, stride))
        if last >= storage.numel:
            raise WeightsFileError(
                f"{where}: reads element {last} of a storage of {storage.numel} elements"
            )
        # ... and be distinct (no stride-0 broadcast, no overlap): sorted by stride, each
        # dimension's stride must step past everything the smaller ones reach.
        reach = 0
        for st, sz in sorted((st, sz) for sz, st in zip(shape, stride) if sz > 1):
            if st <= reach:
                raise WeightsFileError(
                    f"{where}: strides make elements overlap (a view repeating storage "
                    f"elements, e.g. stride 0); the reader needs each element stored once"
                )
            reach += (sz - 1) * st
        itemsize = storage.dtype.itemsize
        budget.spend(n * itemsize, f"tensor {key!r} ({n} elements of {storage.dtype})")
        raw = storage.raw()
        view = np.ndarray(shape, storage.dtype, buffer=raw, offset=offset * itemsize,
                          strides=tuple(st * itemsize for st in stride))
        out = view.copy()
        if budget.byteswap and itemsize > 1:
            out.byteswap(inplace=True)
        return out


def _int(path, v, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise WeightsFileError(f"{path}: tensor {what} must be an int, got {type(v).__name__}")
    return v


class _Budget:
    """Bytes the reader may still allocate for one file."""

    def __init__(self, path: str, limit: int, byteswap: bool = False):
        self.path, self.limit, self.used, self.byteswap = path, limit, 0, byteswap

    def spend(self, nbytes: int, what: str) -> None:
        if self.used + nbytes > self.limit:
            raise WeightsFileError(
                f"{self.path}: {what} needs {nbytes} bytes, past the reader's limit of "
                f"{self.limit} bytes for this file ({self.used} already used; "
                "read_torch_state_dict(max_bytes=...) raises it)"
            )
        self.used += nbytes


def _rebuild_tensor(path, storage, storage_offset, size, stride):
    return _TensorRef(path, storage, storage_offset, size, stride)


def _rebuild_tensor_v2(path, storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    return _TensorRef(path, storage, storage_offset, size, stride)


def _rebuild_parameter(path, data, requires_grad=False, backward_hooks=None, state=None):
    if not isinstance(data, _TensorRef):
        raise WeightsFileError(
            f"{path}: parameter rebuilt from {type(data).__name__}, not a tensor")
    return data


def _ordered_dict(path, *args):
    if len(args) > 1:
        raise WeightsFileError(f"{path}: OrderedDict called with {len(args)} arguments")
    return collections.OrderedDict(*args)


# (module, name) -> the function a per-load _Global calls; storage types are per-load too.
_SAFE_FUNCTIONS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}

_PUT_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})


def _scan_pickle(f: io.BytesIO, path: str, what: str) -> None:
    """Walk one pickle's opcodes (no objects built) before unpickling it: bounded in bytes and
    opcodes, every declared length present, memo indices sequential (a huge ``LONG_BINPUT``
    index makes the C unpickler allocate and zero a memo table of that size)."""
    start = f.tell()
    total = len(f.getbuffer())
    ops = puts = 0
    try:
        for op, arg, pos in pickletools.genops(f):
            ops += 1
            if ops > MAX_PICKLE_OPS or pos - start > MAX_PICKLE_BYTES:
                raise WeightsFileError(
                    f"{path}: {what} is over the reader's limit of {MAX_PICKLE_OPS} opcodes / "
                    f"{MAX_PICKLE_BYTES} bytes (at byte {pos - start}, opcode {ops})"
                )
            if op.name in _PUT_OPS:
                if arg > puts:
                    raise WeightsFileError(
                        f"{path}: {what} stores memo entry {arg} after {puts} entries (a "
                        "pickler numbers them in order)"
                    )
                puts += 1
            elif op.name == "MEMOIZE":
                puts += 1
            elif op.name == "FRAME" and arg > total - f.tell():
                raise WeightsFileError(
                    f"{path}: {what} declares a frame of {arg} bytes, {total - f.tell()} remain")
    except ValueError as e:
        if isinstance(e, WeightsFileError):
            raise
        raise WeightsFileError(f"{path}: {what} is not a readable pickle (truncated or "
                               f"corrupted?): {e}") from None
    f.seek(start)


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals of a tensor state dict, to objects made for this load;
    storages via ``persistent_load``."""

    def __init__(self, file, path: str, storages: dict[str, _Storage] | None = None,
                 load_storage=None, what: str = "the pickle"):
        _scan_pickle(file, path, what)
        super().__init__(file, encoding="latin1")
        self._path = path
        self._storages = storages if storages is not None else {}
        self._load_storage = load_storage  # zip format: storage -> its bytes
        self._globals: dict[tuple[str, str], Any] = {}

    def find_class(self, module: str, name: str):
        key = (module, name)
        if key not in self._globals:
            if module == "torch" and name in _STORAGE_DTYPES:
                self._globals[key] = _StorageType(name, self._path)
            elif key in _SAFE_FUNCTIONS:
                self._globals[key] = _Global(f"{module}.{name}", _SAFE_FUNCTIONS[key],
                                             self._path)
            else:
                raise UnsafePickleError(
                    f"{self._path}: refusing to load the global {module}.{name}: a tensor "
                    "state dict only needs collections.OrderedDict, "
                    "torch._utils._rebuild_tensor_v2 / _rebuild_parameter and torch.*Storage "
                    "(the file may run code when unpickled)"
                )
        return self._globals[key]

    def persistent_load(self, pid):
        path = self._path
        if not isinstance(pid, tuple) or not pid:
            raise WeightsFileError(f"{path}: unexpected persistent id {str(pid)[:80]!r}")
        kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if kind != "storage" or len(pid) not in (5, 6):
            raise WeightsFileError(f"{path}: unsupported persistent id {str(pid[:1])[:80]!r}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise WeightsFileError(f"{path}: storage of unknown type {str(storage_type)[:80]!r}")
        key = key.decode("ascii") if isinstance(key, bytes) else str(key)
        numel = _int(path, numel, "storage size")
        if numel < 0:
            raise WeightsFileError(f"{path}: storage {key!r} has {numel} elements")
        view = pid[5] if len(pid) == 6 else None
        storage = self._storages.get(key)
        if storage is None:
            storage = _Storage(key, storage_type.dtype, numel, path, load=self._load_storage)
            self._storages[key] = storage
        elif storage.dtype != storage_type.dtype or storage.numel != numel:
            raise WeightsFileError(
                f"{path}: storage {key!r} is referred to as {numel} {storage_type.dtype} "
                f"elements and as {storage.numel} {storage.dtype}"
            )
        if view is None:
            return storage
        if not isinstance(view, tuple) or len(view) != 3:
            raise WeightsFileError(f"{path}: storage {key!r}: malformed view {str(view)[:80]!r}")
        view_key, offset, view_size = view
        view_key = view_key.decode("ascii") if isinstance(view_key, bytes) else str(view_key)
        offset, view_size = _int(path, offset, "view offset"), _int(path, view_size, "view size")
        if offset < 0 or view_size < 0 or offset + view_size > numel:
            raise WeightsFileError(
                f"{path}: view {view_key!r} of {view_size} elements at offset {offset} lies "
                f"outside storage {key!r} of {numel} elements"
            )
        sub = self._storages.get(view_key)
        if sub is None:
            sub = _Storage(view_key, storage.dtype, view_size, path, root=storage, offset=offset)
            self._storages[view_key] = sub
        return sub


def read_torch_state_dict(
    path: str | os.PathLike,
    *,
    expected: Mapping[str, Sequence[int]] | None = None,
    max_bytes: int | None = None,
) -> dict[str, np.ndarray]:
    """Read the tensors of a PyTorch state dict file (``torch.save(model.state_dict())``).

    Both formats ``torch.save`` has written are read: the zip archive (torch >= 1.6) and the
    legacy stream of pickles. Nested dicts (``{"state_dict": {...}}``) are flattened with
    dotted keys; values that are not tensors (an epoch number, a name) are left out.

    Nothing is allocated before it is checked: the pickle's size and opcodes; each tensor's
    shape, strides and offset against its storage's size (every element inside the storage and
    stored once); each storage's bytes against the file; and the total the reader allocates
    against ``max_bytes``.

    Args:
      path: the ``.pth`` / ``.pt`` file.
      expected: ``{key: shape}`` (PyTorch layout) the model being loaded needs; a tensor of
        such a key with another shape is refused before its bytes are read. Keys not named
        are only bounded by ``max_bytes``.
      max_bytes: the most the reader may allocate for storages and tensors; by default
        ``FILE_FACTOR`` times the file's size plus ``BUDGET_MARGIN``.

    Returns:
      ``{key: np.ndarray}`` in the file's order, each array a copy in native byte order.

    Raises:
      UnsafePickleError: the pickle refers to any other global (it might execute code) or
        sets state on one.
      WeightsFileError: (a ``ValueError``) the file is truncated, corrupted, not a PyTorch
        file, or over a limit; a one-line message naming the file, the tensor and the limit.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        blob = f.read()
    if max_bytes is None:
        max_bytes = FILE_FACTOR * len(blob) + BUDGET_MARGIN
    try:
        if blob[:4] == b"PK\x03\x04":
            obj, byteswap = _load_zip(blob, path, lambda: budget)
        else:
            obj, byteswap = _load_legacy(blob, path)
        budget = _Budget(path, max_bytes, byteswap)
        if not isinstance(obj, Mapping):
            raise WeightsFileError(f"{path}: holds a {type(obj).__name__}, expected a state dict")
        out: dict[str, np.ndarray] = {}
        _flatten(obj, "", out, budget, expected or {}, 0)
    except WeightsFileError:
        raise
    except (EOFError, pickle.UnpicklingError, zipfile.BadZipFile, zipfile.LargeZipFile,
            struct.error, IndexError, KeyError, TypeError, AttributeError, ValueError,
            UnicodeDecodeError, OverflowError, MemoryError, RecursionError,
            NotImplementedError, zlib.error) as e:
        raise WeightsFileError(
            f"{path}: not a readable PyTorch state dict (truncated or corrupted?): "
            f"{type(e).__name__}: {str(e)[:200]}"
        ) from None
    if not out:
        raise WeightsFileError(f"{path}: holds no tensors")
    return out


def _flatten(obj: Mapping, prefix: str, out: dict, budget: _Budget, expected, depth) -> None:
    if depth > MAX_NESTING:
        raise WeightsFileError(
            f"{budget.path}: dicts nested deeper than {MAX_NESTING} levels at {prefix[:80]!r}")
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, _TensorRef):
            out[key] = v.array(key, budget, expected.get(key))
        elif isinstance(v, Mapping):
            _flatten(v, key + ".", out, budget, expected, depth + 1)


def _load_legacy(blob: bytes, path: str):
    """magic, protocol, sys info, the object, storage keys, then each storage's bytes."""
    f = io.BytesIO(blob)
    magic = _RestrictedUnpickler(f, path, what="the magic-number pickle").load()
    if magic != LEGACY_MAGIC:
        raise WeightsFileError(f"{path}: not a PyTorch file (magic number {str(magic)[:40]!r})")
    protocol = _RestrictedUnpickler(f, path, what="the protocol pickle").load()
    if protocol != LEGACY_PROTOCOL:
        raise WeightsFileError(
            f"{path}: legacy protocol {str(protocol)[:40]!r}, expected {LEGACY_PROTOCOL}")
    sys_info = _RestrictedUnpickler(f, path, what="the system-info pickle").load()
    little = sys_info.get("little_endian", True) if isinstance(sys_info, dict) else True
    storages: dict[str, _Storage] = {}
    obj = _RestrictedUnpickler(f, path, storages, what="the state-dict pickle").load()
    keys = _RestrictedUnpickler(f, path, what="the storage-key pickle").load()
    if not isinstance(keys, list):
        raise WeightsFileError(f"{path}: storage key list is a {type(keys).__name__}")
    order = "<" if little else ">"
    data: dict[str, np.ndarray] = {}
    pos = f.tell()
    for key in keys:
        key = str(key)
        storage = storages.get(key)
        if storage is None or storage.root is not None:
            raise WeightsFileError(
                f"{path}: storage {key[:80]!r} is listed but not used by the pickle")
        if pos + 8 > len(blob):
            raise WeightsFileError(
                f"{path}: truncated before storage {key!r} (offset {pos})")
        (numel,) = struct.unpack(order + "q", blob[pos:pos + 8])
        if numel != storage.numel:
            raise WeightsFileError(
                f"{path}: storage {key!r} holds {numel} elements, the pickle says {storage.numel}"
            )
        end = pos + 8 + numel * storage.dtype.itemsize
        if end > len(blob):
            raise WeightsFileError(
                f"{path}: truncated in storage {key!r} (needs bytes up to {end}, file has "
                f"{len(blob)})"
            )
        data[key] = np.frombuffer(blob, np.uint8, end - pos - 8, pos + 8)  # a view, no copy
        pos = end
    for key, storage in storages.items():
        if storage.root is None:
            if key not in data:
                raise WeightsFileError(
                    f"{path}: storage {key!r} has no data (truncated file?)")
            object.__setattr__(storage, "_load", lambda s: data[s.key])
    return obj, order != _NATIVE


_NATIVE = "<" if sys.byteorder == "little" else ">"


def _load_zip(blob: bytes, path: str, budget):
    """``budget()`` gives the load's ``_Budget`` when storages are read (after the pickle)."""
    zf = zipfile.ZipFile(io.BytesIO(blob))
    names = zf.namelist()
    pkls = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkls) != 1:
        raise WeightsFileError(
            f"{path}: zip without a single <archive>/data.pkl (found {pkls[:4]})")
    root = pkls[0][: -len("data.pkl")]

    def member(name: str, nbytes: int, what: str) -> bytes:
        """Exactly ``nbytes`` of member ``name``, refused before inflating past a limit."""
        try:
            info = zf.getinfo(name)
        except KeyError:
            raise WeightsFileError(f"{path}: {what} is missing from the archive ({name!r})")
        if info.file_size < nbytes:
            raise WeightsFileError(
                f"{path}: {what} has {info.file_size} bytes, expected {nbytes} (truncated or "
                "corrupted file)"
            )
        if info.compress_type != zipfile.ZIP_STORED:
            limit = MAX_INFLATE_RATIO * info.compress_size + (64 << 10)
            if nbytes > limit:
                raise WeightsFileError(
                    f"{path}: {what} is compressed to {info.compress_size} bytes and would "
                    f"inflate to {nbytes}, past the reader's limit of {limit} "
                    f"({MAX_INFLATE_RATIO}x; torch.save does not compress)"
                )
        with zf.open(info) as fh:
            raw = fh.read(nbytes)
        if len(raw) != nbytes:
            raise WeightsFileError(
                f"{path}: {what} has {len(raw)} bytes, expected {nbytes} (truncated or "
                "corrupted file)"
            )
        return raw

    byteorder = "little"
    if f"{root}byteorder" in names:
        info = zf.getinfo(f"{root}byteorder")
        byteorder = member(info.filename, min(info.file_size, 16), "the byteorder record")
        byteorder = byteorder.decode("ascii").strip()
    if byteorder not in ("little", "big"):
        raise WeightsFileError(f"{path}: unknown byteorder {byteorder!r}")
    info = zf.getinfo(pkls[0])
    if info.file_size > MAX_PICKLE_BYTES:
        raise WeightsFileError(
            f"{path}: {pkls[0]} has {info.file_size} bytes, past the reader's limit of "
            f"{MAX_PICKLE_BYTES}"
        )
    pkl = member(pkls[0], info.file_size, pkls[0])

    def load_storage(storage: _Storage) -> np.ndarray:
        nbytes = storage.numel * storage.dtype.itemsize
        budget().spend(nbytes, f"storage {storage.key!r}")  # members may overlap in a zip
        raw = member(f"{root}data/{storage.key}", nbytes, f"storage {storage.key!r}")
        return np.frombuffer(raw, np.uint8)

    storages: dict[str, _Storage] = {}
    obj = _RestrictedUnpickler(io.BytesIO(pkl), path, storages, load_storage,
                               what=pkls[0]).load()
    return obj, ("<" if byteorder == "little" else ">") != _NATIVE


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
        for name, var, convert, _ in _module_vars(module, nnx):
            key = f"{prefix}.{name}"
            if key not in state:
                raise WeightsFileError(f"{source}: missing key {key!r} (needed for the model's "
                                 f"{type(module).__name__} {prefix!r})")
            value = convert(np.asarray(state[key]))
            if value.shape != tuple(var.shape):
                raise WeightsFileError(
                    f"{source}: {key!r} has shape {tuple(state[key].shape)} (as "
                    f"{value.shape} in Flax layout), the model expects {tuple(var.shape)}"
                )
            plan.append((var, value))
            used.add(key)
    skipped = {k for k in state if any(k.startswith(p + ".") for p in skip)}
    ignored = {k for k in state if k.endswith(".num_batches_tracked")}
    extra = [k for k in state if k not in used and k not in skipped and k not in ignored]
    if extra:
        raise WeightsFileError(f"{source}: unexpected key {extra[0]!r} not in the model "
                         f"({len(extra)} unexpected in all)")
    for var, value in plan:
        var[...] = value.astype(var.dtype)


def torch_shapes(layers: Mapping[str, Any], skip: Iterable[str] = ()) -> dict[str, tuple]:
    """``{torch key: shape in PyTorch layout}`` that ``layers`` need, for
    ``read_torch_state_dict(expected=...)``."""
    from flax import nnx

    skip = tuple(skip)
    return {f"{prefix}.{name}": shape
            for prefix, module in layers.items() if prefix not in skip
            for name, _, _, shape in _module_vars(module, nnx)}


def load_torch_file(
    layers: Mapping[str, Any],
    path: str | os.PathLike,
    *,
    optional: Iterable[str] = (),
) -> list[str]:
    """Read a ``.pth`` file with the model's shapes as limits, then ``assign_torch_weights``.

    Every tensor the model needs is checked against its shape before its bytes are read; the
    file's other tensors are bounded by the reader's budget. ``optional`` prefixes (a
    classifier head) are skipped when the model lacks them or the file's differ in shape.

    Returns:
      The optional prefixes that were skipped.

    Raises:
      WeightsFileError: naming the file and the first tensor that is refused.
    """
    from flax import nnx

    path = os.fspath(path)
    optional = tuple(optional)
    state = read_torch_state_dict(path, expected=torch_shapes(layers, skip=optional))
    skipped = []
    for prefix in optional:
        module = layers.get(prefix)
        if module is None or any(
            f"{prefix}.{name}" in state and tuple(state[f"{prefix}.{name}"].shape) != shape
            for name, _, _, shape in _module_vars(module, nnx)
        ):
            skipped.append(prefix)
    assign_torch_weights(layers, state, source=path, skip=skipped)
    return skipped


def _module_vars(module, nnx):
    """(torch name, nnx variable, torch->flax converter, torch shape) for one module."""
    ident = lambda a: a  # noqa: E731
    same = tuple
    if isinstance(module, nnx.Conv):
        k = tuple(module.kernel.shape)
        yield ("weight", module.kernel, lambda a: a.transpose(2, 3, 1, 0) if a.ndim == 4 else a,
               (k[3], k[2], k[0], k[1]) if len(k) == 4 else k)
        if module.bias is not None:
            yield "bias", module.bias, ident, same(module.bias.shape)
    elif isinstance(module, nnx.Linear):
        yield "weight", module.kernel, lambda a: a.T, tuple(module.kernel.shape)[::-1]
        yield "bias", module.bias, ident, same(module.bias.shape)
    elif isinstance(module, nnx.BatchNorm):
        if module.scale is not None:
            yield "weight", module.scale, ident, same(module.scale.shape)
        if module.bias is not None:
            yield "bias", module.bias, ident, same(module.bias.shape)
        yield "running_mean", module.mean, ident, same(module.mean.shape)
        yield "running_var", module.var, ident, same(module.var.shape)
    else:
        raise TypeError(f"cannot load torch weights into a {type(module).__name__}")
