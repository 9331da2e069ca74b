"""Re-evaluate a finished run: its saved weights on a split, or on perturbed test images.

``load_run`` rebuilds the model of ``OUT/runs/<run_id>`` from its ``config.json``, loads its
``weights.npz`` (the best-validation weights the run was scored with) and the same data split
from the prepared-data cache; ``predict`` gives log-probabilities; ``robustness`` repeats report
002's sensitivity check (test images randomly rotated, shifted and flipped).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from runtime import io as bio

# Report 002's sensitivity test (Keras ImageDataGenerator ranges applied to the test images):
# rotation range (degrees), height shift, width shift, horizontal flip, vertical flip.
REPORT002_PERTURBATIONS = (
    ("rot45 shift0.1/0.1", 45.0, 0.1, 0.1, False, False),
    ("rot45 shift0.1/0.1 flips", 45.0, 0.1, 0.1, True, True),
    ("rot180 shift0.3/0.4 flips", 180.0, 0.3, 0.4, True, True),
)


@dataclasses.dataclass
class LoadedRun:
    run_dir: Path
    record: dict
    config: Any  # RunConfig
    dataset: Any  # bench.data.Dataset
    steps: Any
    state: dict
    mesh: Any


def read_config(run_dir: str | Path):
    """The ``RunConfig`` a run was made with (its ``config.json``, any version: old flat
    files go through ``bench.config.migrate``)."""
    from .config import from_dict

    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found; expected a run directory "
                                f"(OUT/runs/<run_id>) written by `bench train` or `bench run`")
    try:
        return from_dict(bio.read_json(path))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None


def read_record(run_dir: str | Path) -> dict:
    path = Path(run_dir) / "record.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found; the run has not finished (rerun its "
                                f"command to resume it)")
    rec = bio.read_json(path)
    if rec.get("status") != "complete":
        raise ValueError(f"{path}: run status is {rec.get('status')!r}, expected 'complete'")
    return rec


def load_run(run_dir: str | Path, *, cache_dir=None, dataset=None,
             devices: int | None = None) -> LoadedRun:
    """Rebuild a finished run's model with its saved weights, and its data split."""
    import optax
    from flax import nnx

    import models

    from . import engine
    from . import normalize
    from .config import AugmentConfig

    run_dir = Path(run_dir)
    record = read_record(run_dir)
    cfg = read_config(run_dir)
    info = models.get_model_info(cfg.model.name)
    if dataset is None:
        from .data import load_dataset

        size = (record.get("image_size") or [cfg.data.image_size or info.input_size[0]])[0]
        dataset = load_dataset(cfg.data.dataset, size, cache_dir=cache_dir, seed=cfg.seed,
                               val_fraction=cfg.data.val_fraction,
                               test_fraction=cfg.data.test_fraction, progress=False,
                               max_per_class=cfg.data.max_per_class, exclude=cfg.data.exclude,
                               labels=cfg.data.labels, id_column=cfg.data.id_column,
                               label_column=cfg.data.label_column)
    fp = record.get("dataset", {}).get("fingerprint")
    if fp and dataset.fingerprint != fp:
        raise ValueError(f"{run_dir}: the data set {cfg.data.dataset!r} has changed since the run "
                         f"(fingerprint {dataset.fingerprint} != {fp})")
    from .train import build_model

    model = build_model(cfg, dataset)  # weights come from the run's weights.npz below
    mesh = engine.Mesh.create(devices or 1)
    steps = engine.build_steps(model, optax.identity(), num_classes=len(dataset.classes),
                               preprocessing=info.preprocessing, augment=AugmentConfig("none"),
                               label_smoothing=0.0, mesh=mesh, precision=cfg.precision,
                               normalize=cfg.data.normalize)
    _, params, rest = nnx.split(model, nnx.Param, ...)
    template = {"params": nnx.as_pure(params), "rest": nnx.as_pure(rest)}
    wpath = run_dir / "weights.npz"
    if not wpath.exists():
        raise FileNotFoundError(f"{wpath}: not found; expected the run's saved weights")
    arrays, _ = bio.load_arrays(wpath)
    try:
        state = engine.arrays_to_tree(template, arrays)
    except ValueError as e:
        raise ValueError(f"{wpath}: does not fit {cfg.model.name} ({e})") from None
    norm = normalize.load(run_dir / "normalize.npz")
    if cfg.data.normalize != "none":
        if norm is None:
            raise FileNotFoundError(f"{run_dir / 'normalize.npz'}: not found; the run was "
                                    f"trained with --normalize {cfg.data.normalize}")
        state["norm"] = norm
    return LoadedRun(run_dir, record, cfg, dataset, steps, engine.replicate(state, mesh), mesh)


def predict(run: LoadedRun, images: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    """Log-probabilities of uint8 NHWC ``images`` under the run's weights."""
    from . import engine

    return engine.predict_log_proba(run.steps, run.state, images,
                                    batch_size or run.config.eval_batch_size, run.mesh)


def split_log_proba(run_dir: str | Path, split: str, *, cache_dir=None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """``(log_proba, labels)`` of a run on ``split`` ('val' or 'test'): the saved
    ``<split>_log_proba.npy`` when the run wrote one, else recomputed from its weights."""
    run_dir = Path(run_dir)
    lp, lab = run_dir / f"{split}_log_proba.npy", run_dir / f"{split}_labels.npy"
    if lp.exists() and lab.exists():
        return np.load(lp), np.load(lab)
    run = load_run(run_dir, cache_dir=cache_dir)
    s = run.dataset.splits[split]
    if not len(s.labels):
        raise ValueError(f"{run_dir}: the run's {split} split is empty")
    return predict(run, s.images), s.labels


def perturb(images: np.ndarray, seed: int, rotation: float, height_shift: float,
            width_shift: float, hflip: bool, vflip: bool, batch: int = 256) -> np.ndarray:
    """Randomly rotate (+-``rotation`` degrees), shift and flip uint8 NHWC images (bilinear,
    nearest-edge fill as Keras' ImageDataGenerator), seeded; returns uint8."""
    import jax

    from .augment import affine

    fn = jax.jit(lambda k, x: affine(k, x, rotation, (height_shift, width_shift), 0.0,
                                     flip=hflip, vflip=vflip))
    out = []
    for i, start in enumerate(range(0, len(images), batch)):
        x = images[start:start + batch].astype(np.float32)
        y = fn(jax.random.fold_in(jax.random.key(seed), i), x)
        out.append(np.clip(np.rint(np.asarray(y)), 0, 255).astype(np.uint8))
    return np.concatenate(out) if out else images.copy()


def robustness(run: LoadedRun, perturbations=REPORT002_PERTURBATIONS, seed: int = 0
               ) -> list[dict]:
    """Test accuracy, top-5 and log-loss on the clean and on randomly perturbed test images."""
    from . import metrics as bm

    test = run.dataset.splits["test"]
    n_classes = len(run.dataset.classes)
    rows = []
    for name, *args in (("clean", None), *perturbations):
        images = test.images if args == [None] else perturb(test.images, seed, *args)
        logp = predict(run, images)
        m = bm.basic_metrics(logp, test.labels, n_classes)
        top5 = bm.top_k_accuracy(logp, test.labels, 5) if n_classes > 5 else None
        rows.append({"perturbation": name, "accuracy": m["accuracy"], "top5_accuracy": top5,
                     "log_loss": m["log_loss"]})
    return rows
