"""One training run: data -> model -> jitted epochs -> evaluation -> a JSON run record.

A run lives in ``OUT/runs/<run_id>/`` where ``run_id`` is derived from the configuration, so
the same command finds its own directory again: a killed run resumes from its last epoch
checkpoint, a finished run is not repeated (``force=True`` repeats it).
"""

from __future__ import annotations

import contextlib
import math
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from runtime import io as bio
from runtime.progress import Progress, say
from runtime.versions import versions

from .config import RunConfig, from_dict, make, to_dict  # noqa: F401  (re-exported)

from .report.schema import RECORD_VERSION  # noqa: E402  (one definition, with the schema)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def train(cfg: RunConfig, out_dir: str | Path = "results", *, quiet: bool = False,
          force: bool = False, dataset=None, cache_dir=None, download: bool = False) -> dict:
    """Run ``cfg`` and return its record (also written to ``run_dir/record.json``)."""
    import jax

    import models
    from runtime import devices

    from . import engine
    from . import metrics as bm
    from . import normalize
    from . import stream as bstream

    info = models.get_model_info(cfg.model.name)
    check_model_args(cfg)
    if dataset is None:
        from .data import load_dataset

        size = choose_image_size(cfg, info, quiet=quiet)
        dataset = load_dataset(cfg.data.dataset, size, cache_dir=cache_dir, seed=cfg.seed,
                               val_fraction=cfg.data.val_fraction,
                               test_fraction=cfg.data.test_fraction, progress=not quiet,
                               max_per_class=cfg.data.max_per_class, download=download,
                               exclude=cfg.data.exclude, labels=cfg.data.labels,
                               id_column=cfg.data.id_column, label_column=cfg.data.label_column)
    mesh = engine.Mesh.create(cfg.devices)
    run_id = cfg.run_id(dataset.name, mesh.n)
    writer = jax.process_index() == 0  # one process writes files in multi-host runs
    run_dir = Path(out_dir) / "runs" / run_id
    record_path = run_dir / "record.json"
    if record_path.exists() and not force:
        rec = bio.read_json(record_path)
        if rec.get("status") == "complete":
            say(quiet, f"{run_id}: already complete ({record_path}); --force to run again")
            return rec

    train_split, val_split, test_split = (dataset.splits[k] for k in ("train", "val", "test"))
    num_classes = len(dataset.classes)
    local_devices = [d for d in mesh.mesh.devices.flat if d.process_index == jax.process_index()]
    placement, placement_why = bstream.choose_placement(
        cfg.data.data_placement, train_split.images.nbytes, local_devices,
        cfg.data.placement_budget_mb)
    say(quiet, f"data placement: {placement} ({placement_why})")
    from .inspect import cross_split_near_duplicates, cross_split_warning

    # Streamed training sets are too big for a pHash pass at every run (`bench inspect`).
    leaks = cross_split_near_duplicates(dataset) if placement == "device" else None
    leak_line = cross_split_warning(dataset, pairs=leaks) if leaks is not None else None
    if leak_line:
        say(quiet, "warning: " + leak_line)
    n_train = len(train_split.labels)
    batch = min(cfg.optim.batch_size, n_train)
    batch -= batch % mesh.n
    if batch <= 0:
        raise ValueError(f"{dataset.source}: {n_train} training images cannot fill a batch on "
                         f"{mesh.n} devices")
    steps_per_epoch = n_train // batch

    model = build_model(cfg, dataset, weights=cfg.model.weights, download=download)
    counts = models.param_count(model)
    schedule = engine.make_schedule(cfg.optim, steps_per_epoch, cfg.optim.epochs)
    from flax import nnx

    params = nnx.as_pure(nnx.state(model, nnx.Param))
    mask = engine.freeze_mask(model, params, cfg.model.freeze)
    tx = engine.make_optimizer(cfg.optim, schedule, mask)
    norm = normalize.fit(cfg.data.normalize, train_split.images)
    steps = engine.build_steps(
        model, tx, num_classes=num_classes, preprocessing=info.preprocessing,
        augment=cfg.augment, label_smoothing=cfg.optim.label_smoothing, mesh=mesh,
        freeze=cfg.model.freeze, trainable_mask=mask, precision=cfg.precision,
        normalize=cfg.data.normalize, on_device_data=placement == "device")
    state = engine.init_state(model, tx, norm=norm)
    del model, params
    if cfg.model.init_from:
        arrays, _ = bio.load_arrays(cfg.model.init_from)
        try:
            loaded = engine.arrays_to_tree({"params": state["params"], "rest": state["rest"]},
                                           arrays)
        except ValueError as e:
            raise ValueError(f"{cfg.model.init_from}: does not fit {cfg.model.name} with "
                             f"{num_classes} classes ({e})") from None
        state = dict(state, **loaded)

    # Only a command that got this far (data read, model built) leaves a run folder.
    if force and run_dir.exists():
        shutil.rmtree(run_dir)
    if writer:
        run_dir.mkdir(parents=True, exist_ok=True)
        bio.write_json(run_dir / "config.json", to_dict(cfg))
        if norm is not None:
            normalize.save(run_dir / "normalize.npz", norm)
    from . import tblog  # TensorBoard events and the --profile trace, in the run folder

    tb, trace = tblog.open_run(run_dir, to_dict(cfg), enabled=writer), tblog.StepTrace(
        run_dir, cfg.profile if writer else 0)

    # Resume.
    ckpt, best_ckpt = run_dir / "last.npz", run_dir / "best.npz"
    best_val_file = run_dir / "best_val_log_proba.npy"
    # "step" > 0: a mid-epoch checkpoint, "partial" the epoch's metrics so far.
    meta = {"epoch": 0, "step": 0, "partial": None, "history": [], "best_val_loss": math.inf,
            "best_epoch": 0, "wait": 0, "step_times": [], "epoch_img_per_s": []}
    if ckpt.exists():
        try:
            arrays, saved = bio.load_arrays(ckpt)
            state = engine.arrays_to_tree(state, arrays)
            meta.update(saved)
            say(quiet, f"{run_id}: resuming after epoch {meta['epoch']}"
                + (f", step {meta['step']}" if meta.get("step") else "") + f" from {ckpt}")
        except ValueError as e:
            say(quiet, f"{run_id}: ignoring unreadable checkpoint ({e}); starting over")
    state = engine.replicate(state, mesh)

    base_key = jax.random.key(cfg.seed)
    stream = None
    if placement == "device":
        x_all = engine.to_global(train_split.images, mesh.replicated)
        y_all = engine.to_global(train_split.labels.astype(np.int32), mesh.replicated)
        idx0 = engine.to_global(np.zeros(batch, np.int32), mesh.data)
        t0 = time.perf_counter()
        train_step = steps.train.lower(state, x_all, y_all, idx0, base_key).compile()
    else:
        shape = (batch,) + tuple(train_split.images.shape[1:])
        t0 = time.perf_counter()
        train_step = steps.train.lower(
            state, jax.ShapeDtypeStruct(shape, train_split.images.dtype, sharding=mesh.data),
            jax.ShapeDtypeStruct((batch,), np.int32, sharding=mesh.data), base_key).compile()
    compile_s = time.perf_counter() - t0
    if placement == "stream":  # closed by the epoch loop's `with`
        stream = bstream.BatchStream(
            train_split.images, train_split.labels, batch=batch,
            steps_per_epoch=steps_per_epoch, seed=cfg.seed, sharding=mesh.data,
            end_epoch=cfg.optim.epochs, start=(meta["epoch"], meta["step"]))
    # Mid-epoch checkpoints: every N steps, or in stream placement every 5 minutes.
    every_steps = cfg.data.checkpoint_every
    every_s = 300.0 if stream is not None and not every_steps else None
    meta.setdefault("compile_s", compile_s)

    record: dict[str, Any] = {
        "record_version": RECORD_VERSION, "run_id": run_id, "status": "running",
        "model": cfg.model.name, "tag": cfg.tag or cfg.model.name, "family": info.family,
        "dataset": dataset.summary(), "config": to_dict(cfg), "precision": cfg.precision,
        "normalize": cfg.data.normalize,
        "num_classes": num_classes, "image_size": list(dataset.image_size),
        "params_trainable": counts["trainable"], "params_total": counts["total"],
        "device": devices.device_description(mesh.n), "versions": versions(),
        "seed": cfg.seed, "global_batch": batch, "steps_per_epoch": steps_per_epoch,
        # compile_s is warm when this cache already held the step (a repeated command).
        "compile_cache": jax.config.jax_compilation_cache_dir or None,
        "data_placement": placement, "data_placement_reason": placement_why,
        "near_duplicates_across_splits": None if leaks is None else {
            f"{a}-{b}": sum(1 for p in leaks if {p.split_a, p.split_b} == {a, b})
            for a, b in (("train", "val"), ("train", "test"), ("val", "test"))},
    }
    wall0 = time.perf_counter() - meta.get("wall_s", 0.0)
    first_epoch, first_step = meta["epoch"], meta["step"]
    with Progress(quiet) as prog, (stream or contextlib.nullcontext()):
        for epoch in range(meta["epoch"], cfg.optim.epochs):
            perm = bstream.epoch_order(cfg.seed, epoch, n_train) if stream is None else None
            advance = prog.task(f"epoch {epoch + 1}/{cfg.optim.epochs}", steps_per_epoch)
            start = first_step if epoch == first_epoch else 0
            partial = (meta.get("partial") or {}) if start else {}
            losses, accs = list(partial.get("losses", [])), list(partial.get("accs", []))
            if start:
                advance(start)
            e0 = time.perf_counter() - partial.get("epoch_s", 0.0)
            last_ckpt = time.perf_counter()
            for i in range(start, steps_per_epoch):
                trace.at(epoch * steps_per_epoch + i)
                key = jax.random.fold_in(base_key, epoch * steps_per_epoch + i)
                if stream is None:
                    idx = engine.to_global(perm[i * batch:(i + 1) * batch].astype(np.int32),
                                           mesh.data)
                    s0 = time.perf_counter()
                    state, m = train_step(state, x_all, y_all, idx, key)
                else:
                    e, j, images, labels = next(stream)
                    assert (e, j) == (epoch, i), f"stream at {(e, j)}, loop at {(epoch, i)}"
                    s0 = time.perf_counter()
                    state, m = train_step(state, images, labels, key)
                loss = float(m["loss"])  # blocks until the step is done
                meta["step_times"].append(time.perf_counter() - s0)
                if not math.isfinite(loss):
                    record.update(status="diverged", epochs_completed=epoch,
                                  history=meta["history"],
                                  error=f"loss became {loss} at epoch {epoch + 1}, step {i + 1}")
                    if writer:
                        bio.write_json(record_path, record)
                    raise TrainingDiverged(
                        f"{run_id}: the loss became {loss} at epoch {epoch + 1} step {i + 1}; "
                        f"try a lower --lr or gradient clipping (--grad-clip). "
                        f"Record: {record_path}")
                losses.append(loss)
                accs.append(float(m["accuracy"]))
                advance(1, f"loss {loss:.4f}")
                if i + 1 < steps_per_epoch and (
                        (every_steps and (epoch * steps_per_epoch + i + 1) % every_steps == 0)
                        or (every_s and time.perf_counter() - last_ckpt >= every_s)):
                    meta.update(step=i + 1, wall_s=time.perf_counter() - wall0, partial={
                        "losses": losses, "accs": accs, "epoch_s": time.perf_counter() - e0})
                    if writer:
                        bio.save_arrays(ckpt, engine.tree_to_arrays(state), meta)
                    last_ckpt = time.perf_counter()
            epoch_s = time.perf_counter() - e0
            meta["epoch_img_per_s"].append(steps_per_epoch * batch / epoch_s)
            row = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)),
                   "train_accuracy": float(np.mean(accs)), "epoch_s": epoch_s,
                   "lr": float(schedule((epoch + 1) * steps_per_epoch - 1))}
            if len(val_split.labels):
                logp = engine.predict_log_proba(steps, state, val_split.images,
                                                cfg.eval_batch_size, mesh)
                vm = bm.basic_metrics(logp, val_split.labels, num_classes)
                row.update(val_loss=vm["log_loss"], val_accuracy=vm["accuracy"])
                improved = vm["log_loss"] < meta["best_val_loss"]
                if improved:
                    meta.update(best_val_loss=vm["log_loss"], best_epoch=epoch + 1, wait=0)
                    if writer:
                        bio.save_arrays(best_ckpt, engine.tree_to_arrays(
                            {"params": state["params"], "rest": state["rest"]}),
                            {"epoch": epoch + 1})
                        # The best weights' validation predictions, kept rather than
                        # recomputed after training (what `bench group` clusters on).
                        _save_npy(best_val_file, logp)
                else:
                    meta["wait"] += 1
            meta["history"].append(row)
            tb.log_epoch(row, img_per_s=meta["epoch_img_per_s"][-1],
                         step_times=meta["step_times"][-(steps_per_epoch - start):])
            meta.update(epoch=epoch + 1, step=0, partial=None)
            meta["wall_s"] = time.perf_counter() - wall0
            if writer:
                bio.save_arrays(ckpt, engine.tree_to_arrays(state), meta)
            prog.log(_epoch_line(row))
            if cfg.optim.patience and meta["wait"] >= cfg.optim.patience:
                prog.log(f"early stop: val loss has not improved for {cfg.optim.patience} epochs")
                break

        trace.close()
        # Evaluate the best-validation weights (Keras' restore_best_weights).
        scored_best = False
        if best_ckpt.exists():
            try:
                arrays, _ = bio.load_arrays(best_ckpt)
                best = engine.arrays_to_tree({"params": state["params"],
                                              "rest": state["rest"]}, arrays)
                state = dict(state, **engine.replicate(best, mesh))
                scored_best = True
            except ValueError as e:  # unreadable: score the last weights, say so
                prog.log(f"{run_id}: ignoring unreadable {best_ckpt} ({e}); scoring the last "
                         f"epoch's weights")
                record["best_checkpoint_unreadable"] = str(e)
                meta["best_epoch"] = meta["epoch"]
        advance = prog.task("test", len(test_split.labels))
        batch_times: list[float] = []
        logp = engine.predict_log_proba(steps, state, test_split.images, cfg.eval_batch_size,
                                        mesh, progress=advance, times=batch_times)
        # The scored weights' validation predictions: what `bench group` clusters classes on
        # (choosing groups on the test split would grade them on the data that chose them).
        val_logp = None
        if len(val_split.labels):
            val_logp = _load_npy(best_val_file, len(val_split.labels)) if scored_best else None
            if val_logp is None:
                val_logp = engine.predict_log_proba(steps, state, val_split.images,
                                                    cfg.eval_batch_size, mesh)
    test = bm.full_metrics(logp, test_split.labels, dataset.classes)
    # Inference speed from the test batches themselves (padded, so all full-size; the first,
    # which may compile, left out; host-device transfers included); a test split of fewer
    # than 3 batches is timed apart.
    full = batch_times[1:] if len(batch_times) >= 3 else []
    if len(full) >= 2:
        eval_batch = max(mesh.n, cfg.eval_batch_size - cfg.eval_batch_size % mesh.n)
        infer = {"img_per_s": eval_batch / statistics.median(full), "batch": eval_batch}
    else:
        infer = measure_inference(steps, state, test_split.images if len(test_split.labels)
                                  else train_split.images, cfg.eval_batch_size, mesh)
    if writer:
        if scored_best:  # the scored weights are best.npz's: copy them, do not re-serialise
            with bio.atomic_path(run_dir / "weights.npz") as tmp:
                shutil.copyfile(best_ckpt, tmp)
            wbytes = (run_dir / "weights.npz").stat().st_size
        else:
            wbytes = save_weights(run_dir / "weights.npz", state)
        np.save(run_dir / "test_log_proba.npy", logp.astype(np.float32))
        np.save(run_dir / "test_labels.npy", test_split.labels.astype(np.int32))
        if val_logp is not None:
            np.save(run_dir / "val_log_proba.npy", val_logp.astype(np.float32))
            np.save(run_dir / "val_labels.npy", val_split.labels.astype(np.int32))
    else:
        wbytes = len(bio_bytes(state))

    step_times = meta["step_times"][2:] or meta["step_times"]
    record.update(
        status="complete",
        epochs_completed=meta["epoch"], best_epoch=meta["best_epoch"],
        history=meta["history"],
        accuracy=test["accuracy"], top5_accuracy=test.get("top5_accuracy"),
        log_loss=test["log_loss"], per_class=test["per_class"],
        confusion=test["confusion"], classes=list(dataset.classes),
        train_img_per_s=batch / statistics.median(step_times),
        train_step_ms=1000 * statistics.median(step_times),
        epoch_img_per_s=statistics.median(meta["epoch_img_per_s"]),
        infer_img_per_s=infer["img_per_s"], infer_batch=infer["batch"],
        compile_s=meta["compile_s"], weights_bytes=wbytes,
        **({"stream": {"rows_read": stream.rows_read, "wait_s": stream.wait_s,
                       "local_rows": [stream.lo, stream.hi]}} if stream is not None else {}),
        wall_s=time.perf_counter() - wall0, finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    if writer:
        bio.write_json(record_path, record)
        from .report.tables import write_confusion, write_history

        write_confusion(run_dir, record)
        write_history(run_dir, record)
    tb.log_final({"test/accuracy": test["accuracy"], "test/log_loss": test["log_loss"]},
                 meta["epoch"])
    tb.close()
    return record


def build_model(cfg: RunConfig, dataset, *, weights=None, download: bool = False):
    """The run's model for ``dataset``: its classes, its image size (flatten heads are sized
    at build time) and the config's architecture overrides."""
    import models

    info = models.get_model_info(cfg.model.name)
    overrides = dict(cfg.model.model_args)
    if tuple(dataset.image_size) != tuple(info.input_size[:2]):
        overrides = {**models.size_kwargs(cfg.model.name, dataset.image_size[0]), **overrides}
    try:
        return models.create_model(cfg.model.name, num_classes=len(dataset.classes),
                                   seed=cfg.seed, weights=weights, download=download,
                                   **overrides)
    except TypeError as e:  # a builder that passes **kwargs on to its class
        import re

        m = re.search(r"unexpected keyword argument '(\w+)'", str(e))
        if m is None or m[1] not in dict(cfg.model.model_args):
            raise
        raise ValueError(f"--model-arg {m[1]}=...: {cfg.model.name} takes no {m[1]!r} "
                         f"({e})") from None


def check_model_args(cfg: RunConfig) -> None:
    """``--model-arg`` keys against the builder's signature, before any work."""
    import inspect

    import models

    params = inspect.signature(models.get_builder(cfg.model.name)).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return
    fixed = {"num_classes", "seed", "weights", "download", "pretrained", "rngs"}
    accepted = sorted(k for k in params if k not in fixed)
    for key, _ in cfg.model.model_args:
        if key not in accepted:
            raise ValueError(f"--model-arg {key}=...: {cfg.model.name} takes no {key!r}; it "
                             f"takes {', '.join(accepted) or 'no overrides'}")


def choose_image_size(cfg: RunConfig, info, *, quiet: bool = True) -> int:
    """``--image-size`` when given (checked against the model's minimum). Otherwise the
    model's input size, except for a model trained from scratch on images smaller than that:
    then the images' own size, raised to the model's minimum (and at least 32), is used (8x8
    digits train at 32, not at 224). The choice is printed."""
    lo = info.min_input_size[0] if info.min_input_size else 1
    size = cfg.data.image_size
    if size is not None:
        if size < lo:
            raise ValueError(f"--image-size {size}: {cfg.model.name} needs at least {lo}")
        return size
    default = info.input_size[0]
    size, why = default, "the model's input size"
    if not cfg.model.weights and not cfg.model.init_from:
        from .data import peek_image_size

        native = peek_image_size(cfg.data.dataset)
        if native is not None and native < default:
            size = min(default, max(native, lo, 32))
            why = f"the data's images are about {native} px; the model's minimum is {lo}"
    say(quiet, f"image size {size} ({why}; --image-size to choose)")
    return size


def _epoch_line(row: dict) -> str:
    parts = [f"epoch {row['epoch']:3d}", f"loss {row['train_loss']:.4f}",
             f"acc {row['train_accuracy']:.4f}"]
    if "val_loss" in row:
        parts += [f"val_loss {row['val_loss']:.4f}", f"val_acc {row['val_accuracy']:.4f}"]
    parts.append(f"{row['epoch_s']:.1f}s")
    return "  ".join(parts)


def measure_inference(steps, state, images, batch_size: int, mesh, warmup: int = 2,
                      repeats: int = 5) -> dict:
    """Steady-state inference img/s: one fixed batch, warm-up excluded, median of repeats."""
    import jax

    batch_size = max(mesh.n, batch_size - batch_size % mesh.n)
    x = images[:batch_size]
    if len(x) < batch_size:
        reps = -(-batch_size // max(len(x), 1))
        x = np.concatenate([x] * reps)[:batch_size]
    from .engine import to_global

    xd = to_global(x, mesh.data)
    for _ in range(warmup):
        steps.eval(state, xd).block_until_ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        steps.eval(state, xd).block_until_ready()
        times.append(time.perf_counter() - t0)
    return {"img_per_s": batch_size / statistics.median(times), "batch": batch_size}


def _save_npy(path: Path, a: np.ndarray) -> None:
    with bio.atomic_path(path, ".npy") as tmp:
        np.save(tmp, np.asarray(a, np.float32))


def _load_npy(path: Path, rows: int) -> np.ndarray | None:
    """A saved prediction array of ``rows`` rows, or None when absent or unreadable."""
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    return a if a.ndim == 2 and len(a) == rows else None


def bio_bytes(state) -> bytes:
    """The weights file's bytes, for processes that do not write it."""
    import io

    from . import engine

    buf = io.BytesIO()
    arrays = engine.tree_to_arrays({"params": state["params"], "rest": state["rest"]})
    np.savez(buf, *arrays)
    return buf.getvalue()


def save_weights(path: Path, state) -> int:
    """Write parameters and BatchNorm statistics (not optimizer state); return bytes on disk."""
    from . import engine

    arrays = engine.tree_to_arrays({"params": state["params"], "rest": state["rest"]})
    bio.save_arrays(path, arrays, {"format": "bench weights v1: leaves of {params, rest}"})
    return path.stat().st_size


def finetune_config(cfg, stage1: dict, out: str, epochs: int, lr: float | None,
                    freeze: str | None):
    """Stage 2 of the two-stage recipe: start from stage 1's weights, lower learning rate."""
    weights = Path(out) / "runs" / stage1["run_id"] / "weights.npz"
    return cfg.replace(
        epochs=epochs, lr=lr if lr is not None else cfg.optim.lr / 10, freeze=freeze,
        weights=None, init_from=str(weights), warmup_epochs=0.0,
        tag=f"{cfg.tag or cfg.model.name}+finetune")
