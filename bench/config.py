"""One configuration tree for a run: data, model, optim, augment and precision.

Every option is a field here, once, with its help text, choices, parser and check in the
field's metadata. From this tree come the ``bench train`` flags (``add_arguments``), the run's
``config.json`` (``to_dict``), its id (``run_id``) and the flat keyword form that suites and the
library use (``make(model="resnet20", epochs=3)``, ``cfg.replace(lr=0.1)``). Adding an option
is one field (plus its test); the engine reads it from the part it belongs to.

Old flat ``config.json`` files (record version 1) load through ``migrate``.

Only the standard library is imported here, so ``bench --help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from typing import Any, Callable, Iterator

CONFIG_VERSION = 2

OPTIMIZERS = ("sgd", "nesterov", "adam", "adamw", "radam", "rmsprop", "adadelta")
SCHEDULES = ("constant", "step", "cosine", "onecycle")
AUGMENTS = ("none", "flip", "crop_flip", "affine")
PRECISIONS = ("fp32", "bf16")
PLACEMENTS = ("auto", "device", "stream")
NORMALIZATIONS = ("none", "featurewise", "zca")


class ConfigError(ValueError):
    """A value no run accepts; the message is one line naming the flag, value and the rule."""


def _opt(default=None, help: str = "", *, flag: str | None = None, choices=None,
         parse: Callable | None = None, check: Callable[[Any], str | None] | None = None,
         cli: bool = True, metavar: str | None = None, legacy: bool = True,
         in_id: bool = True):
    """A config field. ``flag``: the CLI/flat name (default: the field name); ``parse``: str ->
    value for argparse; ``check(value) -> reason or None``; ``cli=False``: library only;
    ``legacy``: the field existed in config version 1 (it is always part of the run id;
    newer fields join the id only when they differ from their default, so old ids hold);
    ``in_id=False``: never part of the run id (how a run executes, not what it computes:
    changing it resumes the same run)."""
    meta = dict(help=help, flag=flag, choices=choices, parse=parse, check=check, cli=cli,
                metavar=metavar, legacy=legacy, in_id=in_id)
    if isinstance(default, (list, dict)):
        raise TypeError("mutable defaults are not allowed in a frozen config")
    return dataclasses.field(default=default, metadata=meta)


def _positive(v):
    return None if v is None or v >= 1 else "expected a positive integer"


def _positive_or_none(v):
    return None if v is None or v >= 1 else "expected a positive integer (or leave it unset)"


def _non_negative(v):
    return None if v >= 0 else "expected a number >= 0"


def _fraction(v):
    return None if 0 <= v < 1 else "expected a fraction in [0, 1)"


def _positive_float(v):
    return None if v > 0 else "expected a number > 0"


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated numbers") from None


def _model_args(items) -> tuple[tuple[str, Any], ...]:
    """``["depth=3", "width=64"]`` -> ``(("depth", 3), ("width", 64))``, values as Python
    literals where they parse, else strings; sorted, so equal overrides give one run id."""
    import ast

    out = {}
    for item in items:
        if isinstance(item, (tuple, list)) and len(item) == 2:
            out[str(item[0])] = item[1]
            continue
        if "=" not in item:
            raise ConfigError(f"--model-arg {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = ast.literal_eval(v.strip())
        except (ValueError, SyntaxError):
            out[k.strip()] = v.strip()
    return tuple(sorted(out.items()))


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which images, at what size, split how, normalised how."""

    dataset: str = _opt("digits", "'digits' (bundled), a folder or .zip of images, or tfds:NAME")
    image_size: int | None = _opt(None, "square input size (default: the model's, or for small "
                                  "images the data's own size within the model's minimum)",
                                  parse=int, check=_positive_or_none)
    val_fraction: float = _opt(0.1, "validation fraction per class where no val split is given",
                               parse=float, check=_fraction)
    test_fraction: float = _opt(0.2, "test fraction per class where no test split is given",
                                parse=float, check=_fraction)
    max_per_class: int | None = _opt(None, "use at most N images per class", parse=int,
                                     check=_positive_or_none)
    normalize: str = _opt("none", "input normalisation fit on the training split (report 002): "
                          "'featurewise' per-channel mean/std, 'zca' whitening; replaces the "
                          "model's own preprocessing", choices=NORMALIZATIONS, legacy=False)
    exclude: str | None = _opt(None, "a file list of images to leave out (one source-relative "
                               "path a line, e.g. `bench inspect`'s exclusions.txt)",
                               legacy=False)
    labels: str | None = _opt(None, "a .csv (or .jsonl) naming each image of --dataset and its "
                              "label (default: a labels.csv, train.csv, train_labels.csv or "
                              "metadata.csv found in the folder)", legacy=False,
                              metavar="FILE")
    id_column: str | None = _opt(None, "--labels' id/file column (default: id, image_id, image, "
                                 "file, filename, file_name or path)", legacy=False,
                                 metavar="COLUMN")
    label_column: str | None = _opt(None, "the label column of --labels or of Hugging Face "
                                    "files (default: label, class, category, target, breed or "
                                    "species)", legacy=False, metavar="COLUMN")
    # How the training set reaches the devices (bench.stream); none of these changes what a
    # run computes (the batch order is the same), so none is part of the run id.
    data_placement: str = _opt(
        "auto", "'device': the whole training set replicated on every device, batches "
        "gathered inside the step; 'stream': batches read from host memory or the decoded "
        "cache's memmap by a prefetching thread, each process reading its own shard; 'auto': "
        "stream when the training set would take more than half of the smallest device's "
        "memory (or more than --placement-budget-mb)", choices=PLACEMENTS, legacy=False,
        in_id=False)
    placement_budget_mb: float | None = _opt(
        None, "auto placement: the MB of training images a device may hold (default: half "
        "of the smallest device's memory; on CPU, of host RAM over the local devices)",
        parse=float, check=_positive_float, legacy=False, in_id=False)
    checkpoint_every: int = _opt(
        0, "also checkpoint every N steps inside an epoch, resumable at that step (0: in "
        "stream placement every 5 minutes, otherwise only after each epoch)", parse=int,
        check=_non_negative, legacy=False, in_id=False)

    def __post_init__(self):
        if self.val_fraction + self.test_fraction >= 1:
            raise ConfigError(f"--val-fraction {self.val_fraction} and --test-fraction "
                              f"{self.test_fraction}: their sum must be below 1")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which architecture, from which weights, with which blocks frozen."""

    name: str = _opt("", "a name from `bench models`", flag="model")
    weights: str | None = _opt(None, "a weights file (.h5 Keras 2, .pth) or 'imagenet'")
    freeze: str | None = _opt(None, "freeze blocks up to this one ('backbone': all but the "
                              "head)")
    model_args: tuple[tuple[str, Any], ...] = _opt(
        (), "architecture override, e.g. --model-arg dropout=0.3 (repeatable)",
        flag="model_arg", parse=str, metavar="KEY=VALUE")
    init_from: str | None = _opt(None, "start from the weights.npz of an earlier run")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """How long and how the weights move. Units: lr per global batch."""

    optimizer: str = _opt("sgd", "optimizer", choices=OPTIMIZERS)
    lr: float = _opt(0.025, "peak learning rate (per global batch)", parse=float,
                     check=_positive_float)
    momentum: float = _opt(0.9, "momentum (sgd, nesterov, rmsprop)", parse=float,
                           check=_non_negative)
    weight_decay: float = _opt(5e-4, "L2 weight decay on kernels", parse=float,
                               check=_non_negative)
    schedule: str = _opt("cosine", "learning-rate schedule", choices=SCHEDULES)
    warmup_epochs: float = _opt(0.2, "linear warm-up, in epochs", parse=float,
                                check=_non_negative)
    step_epochs: tuple[float, ...] = _opt((), "'step' schedule: comma-separated epochs, lr /10 "
                                          "at each", parse=_floats)
    step_factor: float = _opt(10.0, "'step' schedule: divide lr by this at each step",
                              cli=False, legacy=False)
    label_smoothing: float = _opt(0.0, "label smoothing", parse=float, check=_fraction)
    grad_clip: float = _opt(0.0, "global-norm gradient clip (0: off)", parse=float,
                            check=_non_negative)
    epochs: int = _opt(10, "training epochs", parse=int, check=_positive)
    # Defaults: SGD + momentum with He et al.'s CIFAR rate (0.1 per 128 images) scaled to
    # Keras' default batch of 32, cosine decay, flips. Measured on CIFAR-10 (JPEG copy),
    # ResNet-20, 3 epochs: batch 128 + crop/flip 69.04%, batch 64 + flip 74.42%, these 75.48%
    # (short schedules favour more steps and milder augmentation; results/examples/).
    batch_size: int = _opt(32, "global batch size, split over the devices", parse=int,
                           check=_positive)
    patience: int = _opt(0, "early stopping on validation loss (0: off)", parse=int,
                         check=_non_negative)


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """On-device augmentation inside the jitted step (``bench.augment``)."""

    policy: str = _opt("flip", "augmentation inside the jitted step", flag="augment",
                       choices=AUGMENTS)
    pad: int = _opt(4, "crop_flip: pixels of padding", cli=False, legacy=False)
    flip: bool = _opt(True, "horizontal flips", cli=False, legacy=False)
    rotation: float = _opt(15.0, "affine: degrees", cli=False, legacy=False)
    shift: float = _opt(0.1, "affine: fraction of height/width", cli=False, legacy=False)
    zoom: float = _opt(0.1, "affine: zoom range", cli=False, legacy=False)


PARTS = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig,
         "augment": AugmentConfig}


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run (and so its id)."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    precision: str = _opt("fp32", "fp32, or bf16: bf16 compute with fp32 master weights, "
                          "optimizer state, loss and BatchNorm statistics", choices=PRECISIONS,
                          legacy=False)
    seed: int = _opt(0, "seed of the split, the initialisation, the batch order and the "
                     "augmentation", parse=int)
    devices: int | None = _opt(None, "use the first N local devices (default: all)", parse=int,
                               check=_positive_or_none)
    eval_batch_size: int = _opt(256, "batch size of evaluation and prediction", parse=int,
                                check=_positive)
    tag: str | None = _opt(None, "row label in the results table")
    profile: int = _opt(0, "write a jax.profiler trace of this many training steps (from the "
                        "second step on) into the run folder, for TensorBoard's profile "
                        "plugin and XProf (0: off)", parse=int, check=_non_negative,
                        legacy=False, in_id=False, metavar="STEPS")

    def __post_init__(self):
        for f, value in _own_leaves(self):
            _check(f, value)
        for name, part in PARTS.items():
            for f, value in _own_leaves(getattr(self, name)):
                _check(f, value)

    # -- the flat form ---------------------------------------------------------------------
    def replace(self, **flat) -> "RunConfig":
        """A copy with options changed by their flat names (``cfg.replace(epochs=3)``)."""
        return _build(self, flat)

    def flat(self) -> dict[str, Any]:
        """``{flat name: value}`` over every option."""
        out = {}
        for part, f, value in _leaves(self):
            out[_flat_name(f)] = value
        return out

    def run_id(self, dataset_name: str, n_devices: int) -> str:
        """``<tag>-<dataset>-<n>dev-<hash of the config>``: the same command (and device
        count) finds its run again; another device count is another run, for comparison.
        The hash is over the version-1 flat keys, plus newer options where they differ from
        their defaults, so runs made before those options existed keep their ids."""
        d = {}
        for part, f, value in _leaves(self):
            key = "model_args" if f.name == "model_args" else _flat_name(f)  # version-1 key
            if key == "devices" or not f.metadata.get("in_id", True):
                continue
            if f.metadata.get("legacy", True) or value != f.default:
                d[key] = value
        digest = hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()
        label = _slug(self.tag or self.model.name)
        return f"{label}-{_slug(dataset_name)}-{n_devices}dev-{digest[:8]}"


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s)[:40]


def _flat_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or f.name


def _own_leaves(obj) -> Iterator[tuple[dataclasses.Field, Any]]:
    for f in dataclasses.fields(obj):
        if f.name not in PARTS or not isinstance(obj, RunConfig):
            yield f, getattr(obj, f.name)


def _leaves(cfg: RunConfig) -> Iterator[tuple[str | None, dataclasses.Field, Any]]:
    """``(part or None, field, value)`` over every option, parts first, in declaration order."""
    for name in PARTS:
        part = getattr(cfg, name)
        for f in dataclasses.fields(part):
            yield name, f, getattr(part, f.name)
    for f, value in _own_leaves(cfg):
        yield None, f, value


def _check(f: dataclasses.Field, value) -> None:
    flag = "--" + _flat_name(f).replace("_", "-")
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{flag} {value!r}: expected one of {', '.join(choices)}")
    check = f.metadata.get("check")
    if check is not None and value is not None:
        try:
            reason = check(value)
        except TypeError:
            reason = f"expected a {f.type}"
        if reason:
            raise ConfigError(f"{flag} {value!r}: {reason}")


def _index() -> dict[str, tuple[str | None, str]]:
    """Flat name -> (part or None, field name); flat names are unique over the tree."""
    out = {}
    for part, f, _ in _leaves(RunConfig()):
        key = _flat_name(f)
        assert key not in out, f"duplicate flat option name {key!r}"
        out[key] = (part, f.name)
    return out


def _normalise(key: str, value):
    if key == "model_arg":
        return _model_args(value)
    if key == "step_epochs":
        return tuple(float(v) for v in value)
    return value


def _build(base: RunConfig, flat: dict) -> RunConfig:
    index = _index()
    changes: dict[str | None, dict] = {}
    for key, value in flat.items():
        key = {"model_args": "model_arg"}.get(key, key)
        if key not in index:
            raise ConfigError(f"unknown option {key!r}; options are {', '.join(sorted(index))}")
        part, field = index[key]
        changes.setdefault(part, {})[field] = _normalise(key, value)
    top = dict(changes.pop(None, {}))
    for part, fields in changes.items():
        top[part] = dataclasses.replace(getattr(base, part), **fields)
    return dataclasses.replace(base, **top)


def make(**flat) -> RunConfig:
    """A ``RunConfig`` from flat option names: ``make(model="resnet20", epochs=3)``."""
    return _build(RunConfig(), flat)


# -- config.json --------------------------------------------------------------------------------

def to_dict(cfg: RunConfig) -> dict:
    """The nested JSON form written to ``config.json``."""
    d = dataclasses.asdict(cfg)
    d["config_version"] = CONFIG_VERSION
    return d


def migrate(d: dict) -> dict:
    """Any saved config (version 1: one flat dict; version 2: nested) -> the current nested
    form. The one place where old files are read."""
    d = dict(d)
    version = d.pop("config_version", 1)
    if version == 1:
        flat = dict(d)
        if "model" in flat:
            flat["model_arg"] = flat.pop("model_args", ())
        nested = to_dict(make(**flat))
        nested.pop("config_version")
        return nested
    if version != CONFIG_VERSION:
        raise ConfigError(f"config version {version}: this bench reads versions 1 to "
                          f"{CONFIG_VERSION}")
    return d


def from_dict(d: dict) -> RunConfig:
    """Inverse of ``to_dict``; older versions are migrated first."""
    d = migrate(d)
    parts = {}
    for name, cls in PARTS.items():
        sub = dict(d.pop(name, {}) or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(sub) - names
        if unknown:
            raise ConfigError(f"unknown {name} config keys {sorted(unknown)}")
        if name == "model":
            sub["model_args"] = tuple(tuple(kv) for kv in sub.get("model_args") or ())
        if name == "optim":
            sub["step_epochs"] = tuple(sub.get("step_epochs") or ())
        parts[name] = cls(**sub)
    names = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = set(d) - names
    if unknown:
        raise ConfigError(f"unknown config keys {sorted(unknown)}")
    return RunConfig(**parts, **d)


# -- the command line ---------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser, *, only: tuple[str, ...] | None = None,
                  skip: tuple[str, ...] = (), required: tuple[str, ...] = (),
                  defaults: RunConfig | None = None) -> None:
    """Add a flag per option (``--batch-size`` for ``batch_size``), its help, choices, type and
    default taken from the field; ``only``/``skip`` select options by flat name."""
    defaults = defaults or RunConfig()
    values = defaults.flat()
    groups: dict[str, argparse._ArgumentGroup] = {}
    for part, f, _ in _leaves(defaults):
        key = _flat_name(f)
        if not f.metadata.get("cli", True) or key in skip or (only is not None
                                                             and key not in only):
            continue
        title = (PARTS[part].__doc__ or part).strip().splitlines()[0].rstrip(".") if part else ""
        g = groups.get(part) or groups.setdefault(
            part, parser.add_argument_group(f"{part} ({title})" if part else "run"))
        flag = "--" + key.replace("_", "-")
        kw: dict[str, Any] = dict(dest=key, help=f.metadata.get("help") or None)
        if key == "model_arg":
            kw.update(action="append", default=[], metavar="KEY=VALUE")
        else:
            kw["default"] = values[key]
            if f.metadata.get("choices"):
                kw["choices"] = f.metadata["choices"]
            if f.metadata.get("parse"):
                kw["type"] = f.metadata["parse"]
            if f.metadata.get("metavar"):
                kw["metavar"] = f.metadata["metavar"]
            if key in required:
                kw["required"] = True
                kw.pop("default")
            elif kw["help"] is not None and values[key] not in (None, (), ""):
                kw["help"] += f" (default: {values[key]})"
        g.add_argument(flag, **kw)


def from_args(args: argparse.Namespace, *, base: RunConfig | None = None) -> RunConfig:
    """The ``RunConfig`` of parsed flags (those ``add_arguments`` added)."""
    index = _index()
    flat = {k: v for k, v in vars(args).items() if k in index}
    return _build(base or RunConfig(), flat)


def option_names() -> list[str]:
    return sorted(_index())
