"""Model registry: builders registered by name, with per-model metadata (timm style)."""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Any, Callable

PREPROCESSING_MODES = ("caffe", "tf", "torch", "unit")


@dataclasses.dataclass(frozen=True)
class PretrainedFile:
    """One pretrained weights file a model can load.

    Either a downloadable file (``url`` plus a checksum) or one shipped inside an installed
    Python package (``package`` plus ``package_path`` relative to the package root).
    """

    filename: str
    url: str | None = None
    md5: str | None = None
    sha256: str | None = None
    size: int | None = None
    package: str | None = None
    package_path: str | None = None
    include_top: bool = False  # the file holds the 1000-class head too
    licence: str | None = None


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """Static metadata of a registered model (what timm calls a PretrainedCfg)."""

    name: str
    family: str
    input_size: tuple[int, int, int]  # (H, W, C) the model is defined or pretrained at
    num_classes: int  # default head size
    preprocessing: str  # one of PREPROCESSING_MODES
    source: str  # paper / Keras file / report the definition follows
    min_input_size: tuple[int, int] | None = None
    pretrained: dict[str, PretrainedFile] = dataclasses.field(default_factory=dict)
    description: str = ""

    def __post_init__(self):
        if self.preprocessing not in PREPROCESSING_MODES:
            raise ValueError(
                f"model {self.name!r}: preprocessing {self.preprocessing!r} is not one of "
                f"{PREPROCESSING_MODES}"
            )


@dataclasses.dataclass(frozen=True)
class _Entry:
    builder: Callable[..., Any]
    info: ModelInfo


_REGISTRY: dict[str, _Entry] = {}


def register_model(info: ModelInfo | None = None, **info_kwargs):
    """Decorator: register ``builder(num_classes=..., *, rngs, **overrides)`` under its name.

    Either pass a ``ModelInfo`` or its fields (``name`` defaults to the builder's name).
    """

    def decorator(fn):
        meta = info
        if meta is None:
            kwargs = dict(info_kwargs)
            kwargs.setdefault("name", fn.__name__)
            meta = ModelInfo(**kwargs)
        if meta.name in _REGISTRY:
            raise ValueError(f"model {meta.name!r} is registered twice")
        _REGISTRY[meta.name] = _Entry(fn, meta)
        return fn

    return decorator


def list_models(pattern: str = "*") -> list[str]:
    """Names of registered models matching an fnmatch ``pattern``, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def _entry(name: str) -> _Entry:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = fnmatch.filter(_REGISTRY, f"*{name}*")
        hint = f" Did you mean one of {close}?" if close else ""
        raise KeyError(
            f"unknown model {name!r}.{hint} Registered: {', '.join(list_models())}"
        ) from None


def get_model_info(name: str) -> ModelInfo:
    """The ``ModelInfo`` of a registered model."""
    return _entry(name).info


def get_builder(name: str) -> Callable[..., Any]:
    return _entry(name).builder
