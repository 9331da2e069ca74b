"""Keras-2 ``.h5`` weight files: read, write, and load into Flax models built layer for layer.

A Keras-2 weights file (``model.save_weights("x.h5")``, and the files ``keras.applications``
downloads) holds, at its root (or under ``model_weights`` in a whole-model file), the attribute
``layer_names``; each layer is a group whose attribute ``weight_names`` lists its arrays, e.g.
``"conv1_conv/kernel:0"``, in Keras' legacy order (trainable weights, then non-trainable ones):

* ``Conv2D``: ``[kernel (h, w, in, out), bias?]``, the same layout as ``nnx.Conv``;
* ``BatchNormalization``: ``[gamma?, beta?, moving_mean, moving_variance]``;
* ``Dense``: ``[kernel (in, out), bias]``, the same layout as ``nnx.Linear``;
* ``DepthwiseConv2D``: ``[depthwise_kernel (h, w, in, multiplier), bias?]``;
* ``SeparableConv2D``: ``[depthwise_kernel, pointwise_kernel (1, 1, in * multiplier, out), bias?]``.

A model that is Keras-exact implements ``keras_layers()`` (Keras layer name -> its module) and
``load_weights(path)`` as ``load_keras_h5(self, path)``.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import zlib
from typing import Iterable, Mapping, Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx

from .layers import Conv, DepthwiseConv, glorot_uniform
from .weights_errors import WeightsFileError

# Layers that belong to Keras' ``include_top=True`` part. They may be absent from a file
# (``*_notop.h5``) or from the model (``num_classes=0``), or differ in shape (another number
# of classes): then they are skipped and the model keeps its own initialisation.
DEFAULT_TOP_LAYERS = ("predictions",)

# Layer names that only one keras.applications architecture has, to say in an error message
# which model a file seems to be for.
_SIGNATURES = (
    ("conv4_block23_1_conv", "a ResNet101/ResNet152 (keras.applications.ResNet101/152)"),
    ("conv2_block1_preact_bn", "a ResNetV2 (keras.applications.ResNet50V2/101V2/152V2)"),
    ("conv2_block1_1_conv", "ResNet50 (keras.applications.ResNet50)"),
    ("expanded_conv_project", "MobileNetV2 (keras.applications.MobileNetV2)"),
    ("conv_dw_1", "MobileNet (keras.applications.MobileNet)"),
    ("block14_sepconv2", "Xception (keras.applications.Xception)"),
    ("block35_1_conv", "InceptionResNetV2 (keras.applications.InceptionResNetV2)"),
    ("conv_7b", "InceptionResNetV2 (keras.applications.InceptionResNetV2)"),
    ("mixed10", "InceptionV3 (keras.applications.InceptionV3)"),
    ("block5_conv4", "VGG19 (keras.applications.VGG19)"),
    ("block5_conv3", "VGG16 (keras.applications.VGG16)"),
    ("stem_conv", "an EfficientNet (keras.applications.EfficientNetB*)"),
    ("conv1/conv", "a DenseNet (keras.applications.DenseNet*)"),
)


# --------------------------------------------------------------------------------------------
# Modules with Keras' depthwise / separable convolution semantics.


class SeparableConv(nnx.Module):
    """Keras ``SeparableConv2D``: a depthwise conv (with the strides), then a 1x1 pointwise
    conv; the bias, if any, is the pointwise conv's. Weights ``[depthwise, pointwise, bias?]``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int] = 3,
        strides: int | Sequence[int] = 1,
        padding: str = "SAME",
        depth_multiplier: int = 1,
        use_bias: bool = True,
        *,
        kernel_init=glorot_uniform,
        depthwise_impl: str | None = None,
        rngs: nnx.Rngs,
    ):
        self.depthwise = DepthwiseConv(
            in_features, depth_multiplier, kernel_size, strides, padding, use_bias=False,
            kernel_init=kernel_init, impl=depthwise_impl, rngs=rngs,
        )
        self.pointwise = Conv(
            in_features * depth_multiplier, out_features, (1, 1), use_bias=use_bias,
            kernel_init=kernel_init, rngs=rngs,
        )

    def __call__(self, x):
        return self.pointwise(self.depthwise(x))


# --------------------------------------------------------------------------------------------
# Module <-> Keras weight lists.


def _bn_roles(bn: nnx.BatchNorm) -> list[str]:
    roles = ["gamma"] if bn.scale is not None else []
    roles += ["beta"] if bn.bias is not None else []
    return roles + ["moving_mean", "moving_variance"]


def _slots(module) -> list[tuple[str, nnx.Variable, tuple[int, ...]]]:
    """``(keras weight name, variable, keras shape)`` of a module, in Keras' legacy order."""
    if isinstance(module, SeparableConv):
        dw, pw = module.depthwise, module.pointwise
        slots = [("depthwise_kernel", dw.kernel, _dw_keras_shape(dw)),
                 ("pointwise_kernel", pw.kernel, tuple(pw.kernel.shape))]
        if pw.bias is not None:
            slots.append(("bias", pw.bias, tuple(pw.bias.shape)))
        return slots
    if isinstance(module, DepthwiseConv):
        slots = [("depthwise_kernel", module.kernel, _dw_keras_shape(module))]
    elif isinstance(module, (nnx.Conv, nnx.Linear)):
        slots = [("kernel", module.kernel, tuple(module.kernel.shape))]
    elif isinstance(module, nnx.BatchNorm):
        by_role = {"gamma": module.scale, "beta": module.bias,
                   "moving_mean": module.mean, "moving_variance": module.var}
        return [(r, by_role[r], tuple(by_role[r].shape)) for r in _bn_roles(module)]
    else:
        raise TypeError(
            f"keras_layers() returned a {type(module).__name__}; expected nnx.Conv, "
            "nnx.BatchNorm, nnx.Linear, DepthwiseConv or SeparableConv"
        )
    if module.bias is not None:
        slots.append(("bias", module.bias, tuple(module.bias.shape)))
    return slots


def _dw_keras_shape(dw: DepthwiseConv) -> tuple[int, ...]:
    h, w, _, c = dw.kernel.shape
    return (h, w, c // dw.multiplier, dw.multiplier)


def keras_weights_of(module) -> list[tuple[str, np.ndarray]]:
    """A module's weights as Keras stores them: ``[(name, array)]`` in Keras' order."""
    return [(name, np.asarray(var[...]).reshape(shape)) for name, var, shape in _slots(module)]


# --------------------------------------------------------------------------------------------
# The file format.

# What a file may make the readers allocate: arrays (declared shape * itemsize) of at most
# H5_FILE_FACTOR bytes per byte of the file plus H5_BUDGET_MARGIN, and, loading into a model,
# only the arrays of the model's shapes. Name lists (attributes) of at most MAX_H5_NAMES
# entries and MAX_H5_ATTR_BYTES bytes each.
H5_FILE_FACTOR = 4
H5_BUDGET_MARGIN = 16 << 20
MAX_H5_NAMES = 1_000_000
MAX_H5_ATTR_BYTES = 16 << 20


def _attr_list(group, name: str, path: str = "") -> list[str] | None:
    """A string-list attribute; Keras splits long ones into ``name0``, ``name1``, ..."""
    if name in group.attrs:
        parts = [name]
    elif f"{name}0" in group.attrs:
        parts, i = [], 0
        while f"{name}{i}" in group.attrs:
            parts.append(f"{name}{i}")
            i += 1
    else:
        return None
    values: list = []
    for part in parts:
        aid = group.attrs.get_id(part)
        count = math.prod(aid.shape or ())
        # HDF5 reports a storage size of 0 (an error in h5py) for an empty attribute.
        nbytes = aid.get_storage_size() if count else 0
        if len(values) + count > MAX_H5_NAMES or nbytes > MAX_H5_ATTR_BYTES:
            raise WeightsFileError(
                f"{path or group.file.filename}: attribute {part!r} of {group.name!r} holds "
                f"{count} entries / {nbytes} bytes, past the reader's limit of "
                f"{MAX_H5_NAMES} entries / {MAX_H5_ATTR_BYTES} bytes"
            )
        raw = group.attrs[part]
        values.extend(np.atleast_1d(raw).tolist() if isinstance(raw, np.ndarray) else [raw])
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def _local(group, relpath: str, path: str, what: str):
    """``group[relpath]`` through hard links only (Keras writes no other; an external link
    would open another file); ``None`` when absent."""
    import h5py

    obj = group
    for part in relpath.split("/"):
        if part in ("", "."):
            continue
        link = obj.get(part, getlink=True)
        if link is None:
            return None
        if not isinstance(link, h5py.HardLink):
            raise WeightsFileError(
                f"{path}: {what} {relpath!r} is reached through a {type(link).__name__}; "
                "Keras writes only hard links and the reader follows no other"
            )
        obj = obj[part]
    return obj


class _H5Budget:
    """Bytes the readers may still allocate for one file's arrays."""

    def __init__(self, path: str, limit: int):
        self.path, self.limit, self.used = path, limit, 0

    def spend(self, nbytes: int, what: str) -> None:
        if self.used + nbytes > self.limit:
            raise WeightsFileError(
                f"{self.path}: {what} needs {nbytes} bytes, past the reader's limit of "
                f"{self.limit} bytes for this file ({self.used} already used)"
            )
        self.used += nbytes


def _h5_budget(path: str) -> _H5Budget:
    return _H5Budget(path, H5_FILE_FACTOR * os.path.getsize(path) + H5_BUDGET_MARGIN)


def _read_dataset(ds, path: str, what: str, budget: _H5Budget) -> np.ndarray:
    """A weight array, its declared size checked (and charged) before anything is read.

    Chunked datasets are read chunk by chunk here, not by HDF5: its deflate filter grows its
    output buffer until the stream ends, so a few-kB chunk of a small dataset could inflate to
    gigabytes. Only the filters h5py writes for weights (gzip, shuffle) are accepted, and each
    chunk must inflate to exactly its declared size.
    """
    import h5py

    shape, dtype = ds.shape, ds.dtype
    where = f"{path}: {what}"
    if shape is None or dtype.kind not in "fiub" or dtype.itemsize > 8 or dtype.fields:
        raise WeightsFileError(
            f"{where} is a {dtype} dataset of shape {shape}; weights are numbers")
    nbytes = math.prod(shape) * dtype.itemsize
    budget.spend(nbytes, f"{what} (shape {shape}, {dtype})")
    if ds.is_virtual or ds.external:
        raise WeightsFileError(
            f"{where} keeps its data outside the file (virtual or external storage)")
    if ds.chunks is None:
        if ds.id.get_create_plist().get_nfilters():
            raise WeightsFileError(f"{where} has filters but is not chunked")
        return np.asarray(ds[()]).astype(dtype.newbyteorder("="), copy=False)
    return _read_chunked(ds, where, nbytes, h5py)


def _read_chunked(ds, where: str, nbytes: int, h5py) -> np.ndarray:
    shape, dtype, chunks = ds.shape, ds.dtype, ds.chunks
    dcpl = ds.id.get_create_plist()
    filters = []
    for i in range(dcpl.get_nfilters()):
        code, _flags, values, _name = dcpl.get_filter(i)
        if code not in (h5py.h5z.FILTER_DEFLATE, h5py.h5z.FILTER_SHUFFLE):
            raise WeightsFileError(
                f"{where} uses HDF5 filter {code}; the reader accepts only gzip and shuffle")
        filters.append((i, code))
    chunk_bytes = math.prod(chunks) * dtype.itemsize
    if chunk_bytes > nbytes + (1 << 20):
        raise WeightsFileError(
            f"{where}: chunks of {chunks} ({chunk_bytes} bytes) for a dataset of {shape} "
            f"({nbytes} bytes), past the reader's limit of {nbytes + (1 << 20)}"
        )
    out = np.full(shape, ds.fillvalue, dtype)
    file_size = os.path.getsize(ds.file.filename)
    for n in range(ds.id.get_num_chunks()):
        info = ds.id.get_chunk_info(n)
        offset = tuple(info.chunk_offset)
        if (info.size > file_size or len(offset) != len(shape)
                or any(o % c or o >= s for o, c, s in zip(offset, chunks, shape))):
            raise WeightsFileError(
                f"{where}: chunk {n} at {offset} of {info.size} bytes does not fit the dataset "
                f"{shape} / chunks {chunks} in a file of {file_size} bytes")
        mask, data = ds.id.read_direct_chunk(offset)
        for i, code in reversed(filters):
            if mask & (1 << i):
                continue
            if code == h5py.h5z.FILTER_DEFLATE:
                d = zlib.decompressobj()
                try:
                    data = d.decompress(data, chunk_bytes)
                except zlib.error as e:
                    raise WeightsFileError(f"{where}: chunk {n} is not valid gzip ({e})")
                if not d.eof or d.unconsumed_tail or len(data) != chunk_bytes:
                    raise WeightsFileError(
                        f"{where}: chunk {n} does not inflate to exactly its {chunk_bytes} "
                        "bytes (refused at that limit)")
            else:  # shuffle: byte k of every element, then byte k + 1, ...
                if len(data) != chunk_bytes:
                    raise WeightsFileError(f"{where}: chunk {n} has {len(data)} bytes, "
                                           f"expected {chunk_bytes}")
                data = (np.frombuffer(data, np.uint8).reshape(dtype.itemsize, -1).T.tobytes())
        if len(data) != chunk_bytes:
            raise WeightsFileError(
                f"{where}: chunk {n} has {len(data)} bytes, expected {chunk_bytes}")
        block = np.frombuffer(data, dtype).reshape(chunks)
        region = tuple(slice(o, min(o + c, s)) for o, c, s in zip(offset, chunks, shape))
        out[region] = block[tuple(slice(0, r.stop - r.start) for r in region)]
    return out.astype(dtype.newbyteorder("="), copy=False)


_Named = dict[str, list[tuple[str, np.ndarray]]]  # layer -> [(weight name, array)]


@contextlib.contextmanager
def _open_named(path: str):
    """Open a Keras-2 file: all its layer names, and ``{layer: [(weight name, dataset)]}`` for
    those that have weights. Datasets are h5py objects, not read yet (their ``shape`` is the
    declared one); valid while the ``with`` block lasts."""
    import h5py

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such weights file")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise WeightsFileError(
            f"{path}: not an HDF5 file ({e}); expected a Keras-2 .h5 weights file"
        ) from None
    with f:
        root = f
        if _attr_list(f, "layer_names", path) is None and "model_weights" in f:
            root = _local(f, "model_weights", path, "group")  # a model.save("x.h5") file
        names = _attr_list(root, "layer_names", path)
        if names is None:
            hint = ""
            if "layers" in f or "vars" in f:
                hint = (" It looks like a Keras 3 '.weights.h5' file: save with "
                        "keras.src.legacy.saving.legacy_h5_format or Keras 2.")
            raise WeightsFileError(
                f"{path}: an HDF5 file but not in the Keras-2 weights layout (no 'layer_names' "
                f"attribute at its root or under 'model_weights'; top-level keys: "
                f"{sorted(f.keys())[:8]}).{hint}"
            )
        layers: dict[str, list] = {}
        for name in names:
            group = _local(root, name, path, "layer")
            if not isinstance(group, h5py.Group):
                raise WeightsFileError(
                    f"{path}: layer {name!r} is listed in 'layer_names' but has no group"
                )
            weight_names = _attr_list(group, "weight_names", path) or []
            weights = []
            for w in weight_names:
                ds = _local(group, w, path, f"layer {name!r}: weight")
                if not isinstance(ds, h5py.Dataset):
                    raise WeightsFileError(
                        f"{path}: layer {name!r}: weight {w!r} is listed in its "
                        "'weight_names' but the file has no such dataset"
                    )
                weights.append((w, ds))
            if weights:
                layers[name] = weights
        yield names, layers


def read_keras_h5(path: str | os.PathLike) -> dict[str, list[np.ndarray]]:
    """Read a Keras-2 ``.h5`` weights file.

    Args:
      path: the file (``save_weights`` output, a ``keras.applications`` download, or a whole
        model saved as ``.h5``).

    Returns:
      ``{layer name: [arrays in Keras order]}`` for every layer that has weights, in file order.

    Raises:
      WeightsFileError: (a ``ValueError``) naming the file, when it is not HDF5, not in the
        Keras-2 layout, lacks a listed weight, or declares more data than
        ``H5_FILE_FACTOR`` times its size (a compressed bomb).
    """
    path = os.fspath(path)
    budget = _h5_budget(path)
    with _open_named(path) as (_, layers):
        return {name: [_read_dataset(ds, path, f"layer {name!r}: weight {w!r}", budget)
                       for w, ds in ws] for name, ws in layers.items()}


def guess_architecture(layer_names: Iterable[str]) -> str | None:
    """Which ``keras.applications`` model a list of layer names seems to come from."""
    names = set(layer_names)
    for marker, arch in _SIGNATURES:
        if marker in names:
            return arch
    return None


def write_keras_h5(
    path: str | os.PathLike,
    layers: Mapping[str, Sequence[np.ndarray]],
    weight_names: Mapping[str, Sequence[str]] | None = None,
    *,
    extra_layer_names: Sequence[str] = (),
) -> None:
    """Write ``{layer: [arrays]}`` in the Keras-2 weights layout, as Keras 2's ``save_weights``.

    Args:
      weight_names: per layer, the short weight names (``"kernel"``, ``"gamma"``, ...); stored
        as ``"<layer>/<name>:0"``. By default ``"weight_<i>"``.
      extra_layer_names: layers without weights to list too (Keras lists every layer).
    """
    import h5py

    with h5py.File(os.fspath(path), "w") as f:
        all_names = list(layers) + [n for n in extra_layer_names if n not in layers]
        # Fixed-length byte strings (numpy "S"), as Keras 2 stores them.
        f.attrs["layer_names"] = np.asarray([n.encode("utf8") for n in all_names])
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.2.4"
        for name in sorted(all_names):  # Keras writes groups sorted by name
            group = f.create_group(name)
            arrays = list(layers.get(name, ()))
            short = list(weight_names[name]) if weight_names and name in weight_names else [
                f"weight_{i}" for i in range(len(arrays))
            ]
            if len(short) != len(arrays):
                raise ValueError(f"layer {name!r}: {len(arrays)} arrays but {len(short)} names")
            full = [f"{name}/{s}:0" for s in short]
            group.attrs["weight_names"] = np.asarray([w.encode("utf8") for w in full], dtype="S")
            for w, a in zip(full, arrays):
                group.create_dataset(w, data=np.asarray(a, np.float32))


def save_keras_h5(model, path: str | os.PathLike) -> None:
    """Write a model that has ``keras_layers()`` as a Keras-2 ``.h5`` weights file."""
    layers, names = {}, {}
    for name, module in model.keras_layers().items():
        pairs = keras_weights_of(module)
        layers[name] = [a for _, a in pairs]
        names[name] = [n for n, _ in pairs]
    write_keras_h5(path, layers, names)


# --------------------------------------------------------------------------------------------
# Loading into a model.


def load_keras_h5(model, path: str | os.PathLike) -> list[str]:
    """Assign every weight of a Keras-2 ``.h5`` file to ``model.keras_layers()``.

    Every layer of the model must be in the file, every layer of the file that has weights must
    be in the model, and shapes must agree. The exception is the Keras top (``include_top=True``)
    layers, ``model.keras_top_layers`` (default ``("predictions",)``): they are skipped, keeping
    the model's own initialisation, when the file is a ``*_notop`` file, when the model has no
    head (``num_classes=0``), or when the model's head has another number of classes.

    Nothing is assigned unless the whole file matches.

    Returns:
      The names of the top layers that were skipped.

    Raises:
      WeightsFileError: (a ``ValueError``) naming the file and the first mismatching layer
        (and the architecture the file seems to be for), or a weight it cannot read safely.
        Only datasets of exactly the model's shapes are read.
    """
    path = os.fspath(path)
    budget = _h5_budget(path)
    with _open_named(path) as (all_names, file_layers):
        return _load_named(model, path, all_names, file_layers, budget)


def _load_named(model, path: str, all_names, file_layers, budget) -> list[str]:
    """``load_keras_h5`` on an open file: match every layer's declared shapes to the model,
    then read only the datasets that will be assigned (each of its slot's exact shape)."""
    model_layers = model.keras_layers()
    top = set(getattr(model, "keras_top_layers", DEFAULT_TOP_LAYERS))
    arch = guess_architecture(all_names)
    model_name = type(model).__name__

    def fail(msg: str):
        seems = f" The file seems to be for {arch}." if arch else ""
        raise WeightsFileError(f"{path}: {msg} (loading into {model_name}).{seems}")

    plan: list[tuple[nnx.Variable, str, object]] = []
    skipped: list[str] = []
    for name, module in model_layers.items():
        slots = _slots(module)
        if name not in file_layers:
            if name in top:
                skipped.append(name)
                continue
            fail(f"layer {name!r} of the model is missing from the file")
        weights = _in_role_order(file_layers[name], [r for r, _, _ in slots])
        expected = [s for _, _, s in slots]
        got = [tuple(ds.shape) if ds.shape is not None else None for _, ds in weights]
        if expected != got:
            if name in top:
                skipped.append(name)
                continue
            fail(
                f"layer {name!r}: the file has weights {_fmt(weights)}, the model expects "
                f"{[(r, s) for r, _, s in slots]}"
            )
        for (_, var, _), (w, ds) in zip(slots, weights):
            plan.append((var, f"layer {name!r}: weight {w!r}", ds))
    for name in file_layers:
        if name not in model_layers:
            if name in top:
                skipped.append(name)
                continue
            fail(f"the file has layer {name!r}, which the model does not have")
    arrays = [(var, _read_dataset(ds, path, what, budget)) for var, what, ds in plan]
    for var, arr in arrays:
        var[...] = jnp.asarray(arr.reshape(var.shape), dtype=var.dtype)
    return skipped


def _short(weight_name: str) -> str:
    """``"conv1_bn/gamma:0"`` -> ``"gamma"``."""
    return weight_name.rsplit("/", 1)[-1].split(":", 1)[0]


def _in_role_order(weights: list[tuple[str, np.ndarray]], roles: list[str]):
    """The file's weights in the module's order, when the file names them by role (Keras 2
    and 3 do) in another order; otherwise as they are (Keras' legacy order)."""
    names = [_short(w) for w, _ in weights]
    if names == roles or sorted(names) != sorted(roles):
        return weights
    by_name = dict(zip(names, weights))
    return [by_name[r] for r in roles]


def _fmt(weights) -> list[tuple[str, tuple[int, ...] | None]]:
    return [(_short(w), None if a.shape is None else tuple(a.shape)) for w, a in weights]


# Keras' automatic layer names (InceptionV3, InceptionResNetV2 and Xception leave their
# convolutions unnamed).

# Layer classes whose unnamed instances these models have; Keras names them ``prefix``,
# ``prefix_1``, ... in the order it creates them within a session.
KERAS_AUTO_PREFIXES = ("conv2d", "batch_normalization")
_AUTO_NAME = re.compile(r"^(conv2d|batch_normalization)(?:_(\d+))?$")


def keras_auto_name(prefix: str, index: int) -> str:
    """The name a fresh Keras 3 (or tf.keras) session gives the ``index``-th unnamed layer."""
    return prefix if index == 0 else f"{prefix}_{index}"


def keras_h5_layer_names(path: str | os.PathLike) -> list[str] | None:
    """The ``layer_names`` of a Keras-2 ``.h5`` file (no arrays read); ``None`` if it is not
    one (``load_keras_h5`` then says why)."""
    import h5py

    try:
        f = h5py.File(os.fspath(path), "r")
    except OSError:
        return None
    with f:
        for root in (f, f.get("model_weights")):
            names = None if root is None else _attr_list(root, "layer_names")
            if names:
                return names
    return None


def _auto_by_prefix(names) -> dict[str, list[str]]:
    """Auto-named layers grouped by class prefix, each group in creation (number) order."""
    groups: dict[str, list[tuple[int, str]]] = {p: [] for p in KERAS_AUTO_PREFIXES}
    for name in names:
        m = _AUTO_NAME.match(name)
        if m:
            groups[m.group(1)].append((int(m.group(2) or 0), name))
    return {p: [n for _, n in sorted(g)] for p, g in groups.items()}


class _Renamed:
    """A model seen under other Keras layer names, for ``load_keras_h5``."""

    def __init__(self, model, renames: dict[str, str]):
        self._model = model
        self._renames = renames
        self.keras_top_layers = getattr(model, "keras_top_layers", ("predictions",))

    def keras_layers(self) -> dict:
        return {self._renames.get(k, k): v for k, v in self._model.keras_layers().items()}


def load_keras_h5_by_creation_order(model, path: str | os.PathLike) -> list[str]:
    """``load_keras_h5``, with unnamed layers (``conv2d_<i>``, ``batch_normalization_<i>``)
    matched by their creation order rather than their exact number.

    Keras numbers unnamed layers per session: a fresh Keras 3 or tf.keras session starts at
    ``conv2d``, Keras 2.0 (which saved the official ImageNet files) at ``conv2d_1``, and a
    session that built other models before goes on from their count. When the file has as
    many such layers as the model, the k-th lowest number in the file is taken for the model's
    k-th; otherwise the names are used as they are, and ``load_keras_h5`` reports the mismatch.
    """
    path = os.fspath(path)
    file_names = keras_h5_layer_names(path)
    renames: dict[str, str] = {}
    if file_names is not None:
        ours = _auto_by_prefix(model.keras_layers())
        theirs = _auto_by_prefix(file_names)
        for prefix in KERAS_AUTO_PREFIXES:
            if len(ours[prefix]) == len(theirs[prefix]):
                renames.update((a, b) for a, b in zip(ours[prefix], theirs[prefix]) if a != b)
    if not renames:
        return load_keras_h5(model, path)
    # Named after the model's class: load_keras_h5's errors say what it was loading into.
    view = type(type(model).__name__, (_Renamed,), {})(model, renames)
    return load_keras_h5(view, path)
