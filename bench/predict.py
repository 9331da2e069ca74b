"""Exported predictors: a zoo leaderboard row as a self-contained folder, loaded without the
training data, and ``bench predict``.

An exported folder holds ``predictor.json`` (what the pipeline is: ``network``, ``head`` or
``ensemble``; class names; image size; preprocessing) and ``.npz`` arrays read with
``allow_pickle=False``; no pickle anywhere:

* ``network``: a trained run's ``weights.npz`` and ``config.json`` (and ``normalize.npz``);
  the model is rebuilt with ``models.create_model`` and the run's evaluation step
  (``bench.engine.build_steps``).
* ``head``: frozen backbone(s) + a logistic head: each backbone's weights
  (``backbones/<name>.npz``, the leaves of its ``nnx`` state) and ``head.npz`` (coefficients
  and intercept in feature units); features are computed with the same jitted forward pass
  and batch size as ``features.extract``.
* ``ensemble``: ``members/<i>/`` (each a pipeline as above) and the combiner: weights
  (average, greedy selection) or a level-1 logistic head on the members' log-probabilities
  (``stack.npz``). Backbones are stored once, in the top folder's ``backbones/``.

Images are decoded by ``bench.data.decode_image`` at each pipeline's own size, as training
decoded them, so predicting on a split's files reproduces the leaderboard's scores.

>>> p = bench.load_predictor("results/zoo/best")              # doctest: +SKIP
>>> p.predict(["a.jpg", "b.jpg"]), p.predict_proba(images_uint8)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np

from runtime import io as bio

FORMAT = "bench predictor v1"


# ---------------------------------------------------------------------------------------------
# Export


def export(zoo_out, name: str, dest) -> Path:
    """Write leaderboard row ``name`` of the zoo run in ``zoo_out`` as a predictor folder
    ``dest`` (replaced atomically: written beside it, then renamed). Returns ``dest``."""
    from .report.leaderboard import find_row, load_board

    zoo_out, dest = Path(zoo_out), Path(dest)
    board = load_board(zoo_out)
    row = find_row(board, name)
    tmp = dest.parent / f".{dest.name}.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    _export_row(zoo_out, board, row, tmp, tmp)
    meta = bio.read_json(tmp / "predictor.json")
    meta.update(format=FORMAT, name=row["name"], kind=row["kind"], classes=board["classes"],
                leaderboard={k: row.get(k) for k in ("rank", "accuracy", "log_loss", "ece",
                                                     "val_log_loss", "recommended")},
                dataset=board["dataset"])
    bio.write_json(tmp / "predictor.json", meta)
    old = dest.parent / f".{dest.name}.old"
    if dest.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(dest, old)
    os.replace(tmp, dest)
    if old.exists():
        shutil.rmtree(old)
    return dest


def _export_row(zoo_out: Path, board: dict, row: dict, folder: Path, root: Path) -> None:
    src = row["source"]
    folder.mkdir(parents=True, exist_ok=True)
    if src["type"] == "run":
        rd = zoo_out / src["run_dir"]
        rec = bio.read_json(rd / "record.json")
        for f in ("weights.npz", "config.json", "normalize.npz"):
            if (rd / f).exists():
                shutil.copyfile(rd / f, folder / f)
        bio.write_json(folder / "predictor.json", {
            "type": "network", "model": rec["model"], "num_classes": rec["num_classes"],
            "image_size": rec["image_size"], "classes": rec["classes"],
            "batch_size": rec["config"].get("eval_batch_size", 256) if isinstance(
                rec.get("config"), dict) else 256})
    elif src["type"] == "head":
        import features

        files = []
        batch = 64
        for b, fpath in zip(src["backbones"], src["features"]):
            target = root / "backbones" / f"{b}.npz"
            if not target.exists():
                _save_backbone(b, target)
            files.append(os.path.relpath(target, folder))
            batch = int(features.read_attrs(zoo_out / fpath).get("batch_size") or batch)
        shutil.copyfile(zoo_out / src["head"], folder / "head.npz")
        bio.write_json(folder / "predictor.json", {
            "type": "head", "backbones": src["backbones"], "backbone_files": files,
            "image_size": [src["size"], src["size"]], "batch_size": batch,
            "classes": board["classes"]})
    elif src["type"] == "ensemble":
        from .report.leaderboard import find_row

        dirs = []
        for i, m in enumerate(src["members"]):
            sub = folder / "members" / f"{i:02d}"
            _export_row(zoo_out, board, find_row(board, m), sub, root)
            dirs.append(os.path.relpath(sub, folder))
        meta = {"type": "ensemble", "combiner": src["combiner"], "members": dirs,
                "member_names": src["members"], "weights": src["weights"],
                "classes": board["classes"]}
        if src.get("temperatures"):  # members temperature-scaled before the weighted mean
            meta["temperatures"] = src["temperatures"]
        if src["combiner"] == "stack":
            shutil.copyfile(zoo_out / src["stack"], folder / "stack.npz")
            meta["log_eps"] = src["log_eps"]
        bio.write_json(folder / "predictor.json", meta)
    else:
        raise ValueError(f"row {row['name']!r}: unknown source type {src['type']!r}")


def _save_backbone(name: str, path: Path) -> None:
    from flax import nnx

    from . import engine

    import models

    model = models.create_model(name, num_classes=0, weights="imagenet")
    _, state = nnx.split(model)
    bio.save_arrays(path, engine.tree_to_arrays(nnx.as_pure(state)),
                    {"format": "backbone v1: leaves of nnx.split(model)[1]", "model": name})


# ---------------------------------------------------------------------------------------------
# Loading and predicting


class _Network:
    def __init__(self, folder: Path, meta: dict):
        import optax
        from flax import nnx

        import models
        from . import engine, normalize
        from .config import AugmentConfig, from_dict
        from .train import build_model

        cfg = from_dict(bio.read_json(folder / "config.json"))
        self.size = tuple(meta["image_size"])
        self.batch = int(meta.get("batch_size") or cfg.eval_batch_size)
        shim = _Shim(self.size, meta["classes"])
        model = models.build_empty(lambda: build_model(cfg, shim))  # weights come from weights.npz
        info = models.get_model_info(cfg.model.name)
        self.mesh = engine.Mesh.create(1)
        self.steps = engine.build_steps(
            model, optax.identity(), num_classes=meta["num_classes"],
            preprocessing=info.preprocessing, augment=AugmentConfig("none"), label_smoothing=0.0,
            mesh=self.mesh, precision=cfg.precision, normalize=cfg.data.normalize)
        _, params, rest = nnx.split(model, nnx.Param, ...)
        template = {"params": nnx.as_pure(params), "rest": nnx.as_pure(rest)}
        arrays, _ = bio.load_arrays(folder / "weights.npz")
        try:
            state = engine.arrays_to_tree(template, arrays)
        except ValueError as e:
            raise ValueError(f"{folder / 'weights.npz'}: does not fit {cfg.model.name} ({e})"
                             ) from None
        if cfg.data.normalize != "none":
            norm = normalize.load(folder / "normalize.npz")
            if norm is None:
                raise FileNotFoundError(f"{folder / 'normalize.npz'}: not found")
            state["norm"] = norm
        self.state = engine.replicate(state, self.mesh)

    def sizes(self):
        return {self.size}

    def proba(self, decoded: dict, cache: dict, batch: int | None = None) -> np.ndarray:
        from . import engine

        logp = engine.predict_log_proba(self.steps, self.state, decoded[self.size],
                                        batch or self.batch, self.mesh)
        p = np.exp(logp.astype(np.float64))
        return p / p.sum(axis=1, keepdims=True)


class _Shim:
    def __init__(self, size, classes):
        self.image_size = tuple(size)
        self.classes = list(classes)


_BACKBONES: dict = {}


def _backbone(name: str, path: Path, size: tuple):
    """(forward, state, sharding) of a stored backbone, the same jitted function as
    ``features.extract``; loaded once per file and size in a process."""
    key = (name, str(path.resolve()), size)
    if key not in _BACKBONES:
        import jax
        from flax import nnx

        import features.extraction as fx
        from . import engine

        import models

        # Built abstractly (no initialiser runs), then filled from the stored arrays.
        graphdef, state = nnx.split(models.build_empty(
            lambda: models.create_model(name, num_classes=0)))
        arrays, _ = bio.load_arrays(path)
        try:
            restored = engine.arrays_to_tree(nnx.as_pure(state), arrays)
        except ValueError as e:
            raise ValueError(f"{path}: does not fit {name} ({e})") from None
        model = nnx.merge(graphdef, restored)
        model.eval()
        _BACKBONES[key] = fx._compile_forward(name, model, jax.local_devices()[:1], size)
    return _BACKBONES[key]


def _features(name: str, path: Path, images: np.ndarray, size: tuple, batch: int) -> np.ndarray:
    import jax

    forward, state, sharding = _backbone(name, path, size)
    out = []
    step = batch
    for start in range(0, len(images), step):
        chunk = images[start:start + step]
        k = len(chunk)
        if k < step:
            chunk = np.concatenate([chunk, np.zeros((step - k, *chunk.shape[1:]), np.uint8)])
        out.append(np.asarray(forward(state, jax.device_put(chunk, sharding)))[:k])
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


class _Head:
    def __init__(self, folder: Path, meta: dict):
        self.size = tuple(meta["image_size"])
        self.batch = int(meta.get("batch_size") or 64)
        self.backbones = [(b, (folder / f).resolve()) for b, f in
                          zip(meta["backbones"], meta["backbone_files"])]
        arrays, _ = bio.load_arrays(folder / "head.npz")
        self.coef, self.intercept = arrays[0], arrays[1]

    def sizes(self):
        return {self.size}

    def proba(self, decoded: dict, cache: dict, batch: int | None = None) -> np.ndarray:
        from ensembles._utils import full_logits, softmax

        parts = []
        batch = batch or self.batch
        for b, path in self.backbones:
            key = ("features", str(path), self.size, batch)
            if key not in cache:
                cache[key] = _features(b, path, decoded[self.size], self.size, batch)
            parts.append(cache[key])
        X = np.concatenate(parts, axis=1).astype(np.float32)
        return softmax(full_logits(np.asarray(X, np.float64), self.coef, self.intercept))


class _Ensemble:
    def __init__(self, folder: Path, meta: dict):
        self.members = [_load(folder / d) for d in meta["members"]]
        self.weights = np.asarray(meta["weights"], np.float64)
        self.combiner = meta["combiner"]
        self.temperatures = meta.get("temperatures") or [1.0] * len(self.members)
        if self.combiner == "stack":
            arrays, _ = bio.load_arrays(folder / "stack.npz")
            self.coef, self.intercept = arrays[0], arrays[1]
            self.log_eps = float(meta["log_eps"])

    def sizes(self):
        return set().union(*(m.sizes() for m in self.members))

    def proba(self, decoded: dict, cache: dict, batch: int | None = None) -> np.ndarray:
        ps = [m.proba(decoded, cache, batch) for m in self.members]
        if self.combiner == "stack":
            from ensembles._utils import full_logits, softmax

            Z = np.concatenate([np.log(np.clip(p, self.log_eps, 1.0)) for p in ps], axis=1)
            return softmax(full_logits(Z, self.coef, self.intercept))
        from ensembles import temper

        ps = [q if t == 1.0 else temper(q, t) for q, t in zip(ps, self.temperatures)]
        p = sum(w * q for w, q in zip(self.weights / self.weights.sum(), ps))
        return p / p.sum(axis=1, keepdims=True)


def _load(folder: Path):
    path = folder / "predictor.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found; expected a folder exported by the zoo "
                                f"suite (OUT/best or OUT/exports/<name>)")
    meta = bio.read_json(path)
    kinds = {"network": _Network, "head": _Head, "ensemble": _Ensemble}
    if meta.get("type") not in kinds:
        raise ValueError(f"{path}: unknown predictor type {meta.get('type')!r}; expected "
                         f"{', '.join(kinds)}")
    return kinds[meta["type"]](folder, meta)


class Predictor:
    """A loaded pipeline, scikit-learn style: ``predict_proba(X)`` and ``predict(X)`` where X
    is uint8 images ((N, H, W, 3) array or a list of arrays, any size: each pipeline
    resizes as training did) or image file paths. ``classes_``: the class names."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.meta = bio.read_json(self.folder / "predictor.json")
        self.classes_ = np.asarray(self.meta["classes"])
        self.name = self.meta.get("name", self.folder.name)
        self._pipe = _load(self.folder)

    def __repr__(self) -> str:
        return f"Predictor({self.name!r}, {self.meta.get('type')}, {len(self.classes_)} classes)"

    def decode(self, data) -> dict:
        """One image (encoded bytes or a uint8 array) -> ``{input size: (H, W, 3) uint8}``,
        as ``predict`` decodes files; raises what Pillow raises for unreadable data."""
        from .data import decode_image

        return {s: decode_image(data, s) for s in sorted(self._pipe.sizes())}

    def proba_decoded(self, decoded: dict, batch: int | None = None) -> np.ndarray:
        """Probabilities of images already decoded (``{size: (N, H, W, 3) uint8}``), in
        padded batches of ``batch`` (default: each pipeline's own): one compile per shape."""
        return self._pipe.proba(decoded, {}, batch)

    def _decode(self, sources) -> tuple[dict, list[int], list[tuple[int, str]]]:
        sizes = sorted(self._pipe.sizes())
        out = {s: [] for s in sizes}
        ok, bad = [], []
        for i, src in enumerate(sources):
            try:
                data = src
                if isinstance(src, (str, os.PathLike)):
                    data = Path(src).read_bytes()
                imgs = self.decode(data)
            except Exception as e:  # one unreadable file is that file's problem
                bad.append((i, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"))
                continue
            for s in sizes:
                out[s].append(imgs[s])
            ok.append(i)
        return ({s: (np.stack(v) if v else np.zeros((0, *s, 3), np.uint8))
                 for s, v in out.items()}, ok, bad)

    def _sources(self, X):
        if isinstance(X, (str, os.PathLike)):
            return [X]
        if isinstance(X, np.ndarray) and X.ndim == 4:
            return list(X)
        return list(X)

    def predict_files(self, X) -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
        """(probabilities of the readable inputs, their indices, [(index, why)] unreadable)."""
        decoded, ok, bad = self._decode(self._sources(X))
        if not ok:
            return np.zeros((0, len(self.classes_))), ok, bad
        return self._pipe.proba(decoded, {}), ok, bad

    def predict_proba(self, X) -> np.ndarray:
        p, ok, bad = self.predict_files(X)
        if bad:
            raise ValueError(f"unreadable input {bad[0][0]}: {bad[0][1]}"
                             + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
        return p

    def predict(self, X) -> np.ndarray:
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


def load_predictor(path) -> Predictor:
    """An exported predictor folder (or a zoo output folder: its ``best/``)."""
    path = Path(path)
    if not (path / "predictor.json").exists() and (path / "best" / "predictor.json").exists():
        path = path / "best"
    if not (path / "predictor.json").exists():
        raise FileNotFoundError(f"{path}: no predictor.json; expected a folder exported by the "
                                f"zoo suite (OUT/best, OUT/exports/<name>) or a zoo OUT folder")
    return Predictor(path)


# ---------------------------------------------------------------------------------------------
# bench predict


def collect_images(inputs) -> list[Path]:
    """Files named, and image files below folders named (sorted), in order."""
    from runtime.paths import expand_paths

    from .data.sources import is_ignored, is_image_name

    def images_below(p: Path) -> list[Path]:
        return sorted(f for f in p.rglob("*") if f.is_file() and is_image_name(f.name)
                      and not is_ignored(str(f.relative_to(p))))

    return expand_paths(inputs, images_below, empty="IMAGES {path}: no image files in this "
                        "folder", missing="IMAGES {path}: no such file or folder")


def resolve(from_, model: str | None) -> Path:
    """The predictor folder for ``bench predict --from FROM --model MODEL``: an exported
    folder as is; a zoo output's ``best/`` or ``exports/<row>/`` (exported on first use)."""
    from .report.leaderboard import find_row, load_board, slug

    from_ = Path(from_)
    if (from_ / "predictor.json").exists():
        if model not in (None, "best"):
            raise ValueError(f"--model {model!r}: --from {from_} is one exported predictor; "
                             f"point --from at the zoo output folder to choose a row")
        return from_
    if not from_.exists():
        raise FileNotFoundError(f"--from {from_}: no such folder")
    if model in (None, "best") and (from_ / "best" / "predictor.json").exists():
        return from_ / "best"
    board = load_board(from_)
    row = find_row(board, model or "best")
    dest = from_ / "exports" / slug(row["name"])
    meta = dest / "predictor.json"
    if not meta.exists() or bio.read_json(meta).get("name") != row["name"]:
        export(from_, row["name"], dest)
    return dest


def kaggle_id(path: Path) -> int:
    m = re.search(r"\d+", path.stem)
    if m is None:
        raise ValueError(f"--format kaggle: {path.name}: no number in the file name to use as "
                         f"the id (expected e.g. 12.jpg)")
    return int(m.group())


def write_predictions(path, files: list[Path], proba: np.ndarray, classes, fmt: str) -> None:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    if fmt == "kaggle":
        if len(classes) != 2:
            raise ValueError(f"--format kaggle: writes the positive class's probability, for 2 "
                             f"classes; this model has {len(classes)}")
        rows = sorted(((kaggle_id(f), float(p[1])) for f, p in zip(files, proba)))
        w.writerow(["id", "label"])
        w.writerows(rows)
    else:
        w.writerow(["file", "predicted"] + [f"p_{c}" for c in classes])
        for f, p in zip(files, proba):
            w.writerow([str(f), classes[int(np.argmax(p))]] + [f"{v:.6g}" for v in p])
    bio.write_text(path, buf.getvalue())


def cmd_predict(args) -> int:
    if args.format not in ("csv", "kaggle"):
        raise ValueError(f"--format {args.format!r}: expected csv or kaggle")
    files = collect_images(args.images)
    if getattr(args, "template", None):
        return _predict_template(args, files)
    folder = resolve(args.from_, args.model)
    pred = load_predictor(folder)
    proba, ok, bad = pred.predict_files(files)
    for i, why in bad:
        print(f"skipped unreadable {files[i]}: {why}", file=sys.stderr)
    kept = [files[i] for i in ok]
    write_predictions(args.out, kept, proba, list(pred.classes_), args.format)
    print(f"{pred.name}: {len(kept)} images predicted"
          + (f", {len(bad)} unreadable skipped" if bad else "") + f"; wrote {args.out}")
    return 0


def _predict_template(args, files: list[Path]) -> int:
    """``--template``: the template's rows and columns, filled (``bench.submission``)."""
    from . import submission as sub

    t = sub.read_template(args.template)
    wanted = sub.match_ids(t, files, args.images)  # a missing id fails before any work
    pred = load_predictor(resolve(args.from_, args.model))
    classes = [str(c) for c in pred.classes_]
    how, mapping = sub.plan_columns(t, classes)
    unique = list(dict.fromkeys(wanted))
    proba, ok, bad = pred.predict_files(unique)
    by_file = {unique[i]: p for i, p in zip(ok, proba)}
    for i, why in bad:
        print(f"unreadable {unique[i]}: {why}; its row keeps the template's values",
              file=sys.stderr)
    bio.write_text(args.out, sub.render(t, how, mapping, [by_file.get(f) for f in wanted],
                                        classes))
    left = len(set(files) - set(unique))
    what = "predicted class" if how == "label" else f"{len(mapping)} probability column(s)"
    print(f"{pred.name}: {len(t.rows)} rows of {args.template} ({what})"
          + (f", {len(bad)} unreadable kept as in the template" if bad else "")
          + (f"; {left} image(s) not in the template left out" if left else "")
          + f"; wrote {args.out}")
    return 0
