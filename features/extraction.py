"""Run a frozen backbone over a dataset once and cache the pooled embeddings in HDF5.

Batches are uint8 on the host, sharded over the local devices along the batch axis; resizing
(when the dataset's images are not the backbone's input size), preprocessing and the forward
pass all run on device in one jitted function. Every batch has the same shape (the last one is
padded, then trimmed), so each extraction compiles once.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import os
import platform
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

import models

from .store import FORMAT_VERSION, atomic_h5, feature_path, reuse_problem

RANDOM_INIT_SEED = 0  # the seed models.create_model uses when no weights are given


def extract(
    backbone: str,
    dataset,
    out_dir,
    *,
    weights: str | os.PathLike | None = "imagenet",
    batch_size: int = 64,
    devices: int | Sequence[Any] | None = None,
    progress: bool = True,
    weights_dir: str | os.PathLike | None = None,
    image_size: Sequence[int] | None = None,
    force: bool = False,
    model=None,
) -> Path:
    """Compute (or reuse) the features of ``backbone`` on every split of ``dataset``.

    Args:
      backbone: a registered model name (``models.list_models()``); gives the preprocessing
        and the default input size.
      dataset: has ``name``, ``fingerprint`` (str), ``classes``, ``image_size`` (H, W) and
        ``splits`` {name: split} where ``split.images`` is uint8 (N, H, W, 3) (anything
        sliceable to numpy, e.g. an h5py dataset) and ``split.labels`` int (N,).
      out_dir: root folder of the feature files (see ``feature_path``).
      weights: a pretrained tag of the backbone (``"imagenet"``), a weights file, or ``None``
        for random initialisation (seed 0). With ``model`` given it is only a label.
      batch_size: images per step over all devices (rounded up to a multiple of the device
        count, and down to the largest split).
      devices: ``None`` for all local devices, a count (the first n), or a list of devices.
      progress: show a progress bar on stderr.
      weights_dir: where to look for pretrained files first (see ``models.resolve_pretrained``).
      image_size: (H, W) to compute features at; default the backbone's input size. Images of
        another size are resized on device (bilinear, antialiased).
      force: recompute even when a matching file exists.
      model: an already built backbone to use instead of ``models.create_model`` (it is put in
        eval mode); its parameters' checksum then identifies the weights.

    Returns:
      The path of the HDF5 file (``features.load`` reads it). An existing file is reused when
      its backbone, weights checksum, input size and dataset fingerprint all match; otherwise
      (or when unreadable) it is recomputed with a warning. The file appears atomically.
    """
    info = models.get_model_info(backbone)
    size = _checked_size(backbone, info, image_size, batch_size)
    input_size = (*size, info.input_size[2])
    split_sizes = {name: len(split.labels) for name, split in dataset.splits.items()}
    weights_label, weights_file, checksum = _weights_identity(info, weights, weights_dir, model)
    path = feature_path(out_dir, backbone, dataset.name, dataset.fingerprint, size)
    identity = {
        "format_version": FORMAT_VERSION,
        "backbone": backbone,
        "weights_sha256": checksum,
        "input_size": input_size,
        "dataset_fingerprint": str(dataset.fingerprint),
    }
    if path.exists() and not force:
        problem = reuse_problem(path, identity, split_sizes)
        if problem is None:
            return path
        warnings.warn(f"{path}: {problem}; recomputing the features", stacklevel=2)

    if model is None:
        model = models.create_model(backbone, num_classes=0, weights=weights_file,
                                    seed=RANDOM_INIT_SEED)
    model.eval()
    devs = _devices(devices)
    largest = max(split_sizes.values(), default=0)
    step = min(_round_up(batch_size, len(devs)), max(_round_up(largest, len(devs)), len(devs)))
    data_size = tuple(int(v) for v in dataset.image_size)[:2]
    forward, state, data_sharding = _compile_forward(backbone, model, devs, size)
    dim = _feature_dim(backbone, forward, state, (step, *data_size, input_size[2]))
    attrs = _file_attrs(identity, info, dataset, weights_label=weights_label,
                        weights_file=weights_file, data_size=data_size, size=size, dim=dim,
                        split_sizes=split_sizes, n_dev=len(devs), step=step)
    t0 = time.perf_counter()
    with atomic_h5(path) as f, _progress_bar(progress) as bar:
        task = bar.add_task(backbone, total=sum(split_sizes.values()))
        for name, split in dataset.splits.items():
            bar.update(task, description=f"{backbone} {name}")
            feats = f.create_dataset(name, shape=(split_sizes[name], dim), dtype=np.float32)
            f.create_dataset(f"{name}_labels", data=np.asarray(split.labels, np.int32))
            for start, rows in _run_split(forward, state, data_sharding, split, name, step):
                feats[start:start + len(rows)] = rows
                bar.advance(task, len(rows))
        attrs["seconds"] = round(time.perf_counter() - t0, 3)
        for key, value in attrs.items():
            f.attrs[key] = value
    return path


def _checked_size(backbone: str, info, image_size, batch_size: int) -> tuple[int, ...]:
    """The (H, W) to extract at (default the backbone's), checked with ``batch_size``."""
    size = tuple(int(v) for v in (image_size or info.input_size[:2]))[:2]
    if info.min_input_size and (size[0] < info.min_input_size[0]
                                or size[1] < info.min_input_size[1]):
        raise ValueError(f"image_size={size} is below {backbone}'s minimum "
                         f"{tuple(info.min_input_size)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return size


def _feature_dim(backbone: str, forward, state, batch_shape: tuple[int, ...]) -> int:
    """The embedding's width, from the forward pass's abstract output (nothing computed)."""
    import jax

    out_shape = jax.eval_shape(forward, state, jax.ShapeDtypeStruct(batch_shape, np.uint8))
    if len(out_shape.shape) != 2:
        raise ValueError(f"{backbone}: the embedding must be (N, D), got shape {out_shape.shape}"
                         " (was the model built with num_classes=0 and global pooling?)")
    return int(out_shape.shape[1])


def _file_attrs(identity: dict, info, dataset, *, weights_label, weights_file, data_size,
                size, dim: int, split_sizes: dict, n_dev: int, step: int) -> dict:
    """The feature file's attributes: its identity (what reuse checks) and its provenance."""
    resize = ("none" if data_size == size else
              f"{data_size[0]}x{data_size[1]} -> {size[0]}x{size[1]} on device "
              f"(jax.image.resize bilinear, antialias=True)")
    attrs = dict(identity)
    attrs.update(
        weights=weights_label,
        weights_file=weights_file or "",
        input_size=np.asarray(identity["input_size"], np.int64),
        dataset=str(dataset.name),
        dataset_image_size=np.asarray(data_size, np.int64),
        classes=json.dumps([str(c) for c in dataset.classes]),
        feature_dim=dim,
        preprocessing=info.preprocessing,
        resize=resize,
        splits=json.dumps(list(split_sizes)),
        num_devices=n_dev,
        batch_size=step,
        versions=json.dumps(_versions()),
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    return attrs


def _run_split(forward, state, data_sharding, split, name: str, step: int):
    """Yield ``(start, features)`` per batch; batch i+1 is dispatched before i is fetched."""
    import jax

    n = len(split.labels)
    pending = None
    for start in range(0, n, step):
        batch = np.asarray(split.images[start:start + step])
        if batch.dtype != np.uint8 or batch.ndim != 4:
            raise ValueError(f"split {name!r}: images must be uint8 (N, H, W, C), got "
                             f"{batch.dtype} {batch.shape}")
        k = len(batch)
        if k < step:  # pad to the compiled shape; the padded rows are dropped below
            batch = np.concatenate([batch, np.zeros((step - k, *batch.shape[1:]), np.uint8)])
        out = forward(state, jax.device_put(batch, data_sharding))
        if pending is not None:
            yield pending[0], np.asarray(pending[1])[:pending[2]]
        pending = (start, out, k)
    if pending is not None:
        yield pending[0], np.asarray(pending[1])[:pending[2]]


def _compile_forward(backbone: str, model, devs, size):
    """A jitted ``forward(state, uint8 images) -> embeddings``, data-parallel over ``devs``."""
    import jax
    from flax import nnx
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

    # Auto axes: plain GSPMD propagation, so the model code needs no sharding annotations.
    mesh = jax.make_mesh((len(devs),), ("data",), axis_types=(AxisType.Auto,), devices=devs)
    graphdef, state = nnx.split(model)
    state = jax.device_put(state, NamedSharding(mesh, P()))
    return _jitted_forward(backbone, graphdef, mesh, tuple(size)), state, NamedSharding(
        mesh, P("data"))


@functools.lru_cache(maxsize=8)
def _jitted_forward(backbone: str, graphdef, mesh, size: tuple[int, int]):
    """One jitted function per architecture, mesh and size, so that extracting several
    datasets (or weights) with one backbone in a process compiles once per batch shape."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec as P

    def forward(state, images):
        net = nnx.merge(graphdef, state)
        x = images.astype(jnp.float32)
        if tuple(x.shape[1:3]) != size:
            x = jax.image.resize(x, (x.shape[0], *size, x.shape[3]), "bilinear", antialias=True)
        x = models.preprocess(backbone, x)
        return net.embed(x) if hasattr(net, "embed") else net(x)

    data = NamedSharding(mesh, P("data"))
    return jax.jit(forward, in_shardings=(NamedSharding(mesh, P()), data), out_shardings=data)


def _weights_identity(info, weights, weights_dir, model) -> tuple[str, str | None, str]:
    """(label, file to load or None, checksum) of the weights the features come from."""
    if model is not None:
        return f"model passed in (weights={weights!r})", None, _state_sha256(model)
    if weights is None:
        return "none", None, f"random-init seed {RANDOM_INIT_SEED}"
    if isinstance(weights, str) and weights in info.pretrained:
        path = models.resolve_pretrained(info, weights, weights_dir=weights_dir)
        return weights, os.fspath(path), _file_sha256(path)
    if not os.path.isfile(weights):
        have = ", ".join(info.pretrained) or "none"
        raise ValueError(f"weights={weights!r}: not a file and not a pretrained tag of "
                         f"{info.name!r} (tags: {have})")
    return os.fspath(weights), os.fspath(weights), _file_sha256(weights)


def _file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _state_sha256(model) -> str:
    """sha256 over the parameter and statistic arrays (with their paths) of a built model."""
    import jax
    from flax import nnx

    state = nnx.state(model, nnx.Param, nnx.BatchStat)
    h = hashlib.sha256()
    for keypath, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        arr = np.asarray(leaf)
        h.update(f"{jax.tree_util.keystr(keypath)}:{arr.dtype}:{arr.shape};".encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return "params-sha256:" + h.hexdigest()


def _devices(devices) -> list:
    import jax

    local = jax.local_devices()
    if devices is None:
        return local
    if isinstance(devices, int):
        if not 1 <= devices <= len(local):
            raise ValueError(f"devices={devices}: between 1 and {len(local)} local devices")
        return local[:devices]
    devs = list(devices)
    if not devs:
        raise ValueError("devices=[]: give at least one device")
    return devs


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _progress_bar(enabled: bool):
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), disable=not enabled)


def _versions() -> dict[str, str]:
    import flax
    import h5py
    import jax
    import jaxlib

    return {"python": platform.python_version(), "jax": jax.__version__,
            "jaxlib": jaxlib.__version__, "flax": flax.__version__,
            "numpy": np.__version__, "h5py": h5py.__version__}
