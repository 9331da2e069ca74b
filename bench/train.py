"""One training run: data -> model -> jitted epochs -> evaluation -> a JSON run record.

A run lives in ``OUT/runs/<run_id>/`` where ``run_id`` is derived from the configuration, so
the same command finds its own directory again: a killed run resumes from its last epoch
checkpoint, a finished run is not repeated (``force=True`` repeats it).
"""

from __future__ import annotations

import contextlib
import dataclasses
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


@dataclasses.dataclass
class _Run:
    """What every stage of one run reads: its config, data, devices, folder and batch."""

    cfg: RunConfig
    info: Any
    dataset: Any
    mesh: Any
    run_id: str
    run_dir: Path
    writer: bool  # one process writes files in multi-host runs
    quiet: bool
    placement: str = "device"
    placement_why: str = ""
    leaks: list | None = None  # near-duplicate pairs across splits; None: not searched
    batch: int = 0
    steps_per_epoch: int = 0
    tb: Any = None  # bench.tblog: TensorBoard events in the run folder
    trace: Any = None  # bench.tblog.StepTrace: the --profile trace

    @property
    def record_path(self) -> Path:
        return self.run_dir / "record.json"

    @property
    def ckpt(self) -> Path:
        return self.run_dir / "last.npz"

    @property
    def best_ckpt(self) -> Path:
        return self.run_dir / "best.npz"

    @property
    def best_val_file(self) -> Path:
        return self.run_dir / "best_val_log_proba.npy"


@dataclasses.dataclass
class _Fit:
    """The compiled training step, its schedule and its inputs (device arrays or a stream)."""

    steps: Any
    schedule: Any
    train_step: Any = None
    base_key: Any = None
    x_all: Any = None  # device placement: the whole training set, replicated
    y_all: Any = None
    stream: Any = None  # stream placement: a BatchStream


def train(cfg: RunConfig, out_dir: str | Path = "results", *, quiet: bool = False,
          force: bool = False, dataset=None, cache_dir=None, download: bool = False) -> dict:
    """Run ``cfg`` and return its record (also written to ``run_dir/record.json``)."""
    from . import metrics as bm

    run = _open_run(cfg, out_dir, quiet=quiet, dataset=dataset, cache_dir=cache_dir,
                    download=download)
    if run.record_path.exists() and not force:
        rec = bio.read_json(run.record_path)
        if rec.get("status") == "complete":
            say(quiet, f"{run.run_id}: already complete ({run.record_path}); --force to run "
                f"again")
            return rec
    _plan_batches(run)
    fit, state, norm, counts = _build_state(run, download=download)
    _make_run_dir(run, norm, force=force)
    state, meta = _restore_or_start(run, state)
    _compile(run, fit, state, meta)
    record = _start_record(run, counts)
    wall0 = time.perf_counter() - meta.get("wall_s", 0.0)
    with Progress(quiet) as prog, (fit.stream or contextlib.nullcontext()):
        state = _train_epochs(run, fit, state, meta, record, prog, wall0)
        run.trace.close()
        state, scored_best = _restore_best(run, state, meta, record, prog)
        logp, val_logp, batch_times = _predict_splits(run, fit.steps, state, scored_best, prog)
    test_split = run.dataset.splits["test"]
    test = bm.full_metrics(logp, test_split.labels, run.dataset.classes)
    infer = _inference_speed(run, fit.steps, state, batch_times)
    wbytes = _write_outputs(run, state, scored_best, logp, val_logp)
    _finish_record(run, record, meta, test=test, infer=infer, wbytes=wbytes,
                   stream=fit.stream, wall0=wall0)
    run.tb.log_final({"test/accuracy": test["accuracy"], "test/log_loss": test["log_loss"]},
                     meta["epoch"])
    run.tb.close()
    return record


def _open_run(cfg: RunConfig, out_dir, *, quiet: bool, dataset, cache_dir,
              download: bool) -> _Run:
    """Check the config, load the data (unless given) and name the run and its folder."""
    import jax

    import models

    from . import engine

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
    return _Run(cfg=cfg, info=info, dataset=dataset, mesh=mesh, run_id=run_id,
                run_dir=Path(out_dir) / "runs" / run_id,
                writer=jax.process_index() == 0, quiet=quiet)


def _plan_batches(run: _Run) -> None:
    """Choose the data placement, look for leaks across splits, size the global batch."""
    import jax

    from . import stream as bstream
    from .inspect import cross_split_near_duplicates, cross_split_warning

    cfg, mesh, dataset = run.cfg, run.mesh, run.dataset
    train_split = dataset.splits["train"]
    local_devices = [d for d in mesh.mesh.devices.flat if d.process_index == jax.process_index()]
    run.placement, run.placement_why = bstream.choose_placement(
        cfg.data.data_placement, train_split.images.nbytes, local_devices,
        cfg.data.placement_budget_mb)
    say(run.quiet, f"data placement: {run.placement} ({run.placement_why})")
    # Streamed training sets are too big for a pHash pass at every run (`bench inspect`).
    run.leaks = cross_split_near_duplicates(dataset) if run.placement == "device" else None
    leak_line = (cross_split_warning(dataset, pairs=run.leaks) if run.leaks is not None
                 else None)
    if leak_line:
        say(run.quiet, "warning: " + leak_line)
    n_train = len(train_split.labels)
    batch = min(cfg.optim.batch_size, n_train)
    batch -= batch % mesh.n
    if batch <= 0:
        raise ValueError(f"{dataset.source}: {n_train} training images cannot fill a batch on "
                         f"{mesh.n} devices")
    run.batch, run.steps_per_epoch = batch, n_train // batch


def _build_state(run: _Run, *, download: bool):
    """The model, optimizer and jitted steps; the initial state (``--init-from`` applied)."""
    from flax import nnx

    import models

    from . import engine, normalize

    cfg, dataset = run.cfg, run.dataset
    num_classes = len(dataset.classes)
    model = build_model(cfg, dataset, weights=cfg.model.weights, download=download)
    counts = models.param_count(model)
    schedule = engine.make_schedule(cfg.optim, run.steps_per_epoch, cfg.optim.epochs)
    params = nnx.as_pure(nnx.state(model, nnx.Param))
    mask = engine.freeze_mask(model, params, cfg.model.freeze)
    tx = engine.make_optimizer(cfg.optim, schedule, mask)
    norm = normalize.fit(cfg.data.normalize, dataset.splits["train"].images)
    steps = engine.build_steps(
        model, tx, num_classes=num_classes, preprocessing=run.info.preprocessing,
        augment=cfg.augment, label_smoothing=cfg.optim.label_smoothing, mesh=run.mesh,
        freeze=cfg.model.freeze, trainable_mask=mask, precision=cfg.precision,
        normalize=cfg.data.normalize, on_device_data=run.placement == "device")
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
    return _Fit(steps=steps, schedule=schedule), state, norm, counts


def _make_run_dir(run: _Run, norm, *, force: bool) -> None:
    """Create the run folder with its config.json (and normalize.npz); ``force`` clears it."""
    from . import normalize

    # Only a command that got this far (data read, model built) leaves a run folder.
    if force and run.run_dir.exists():
        shutil.rmtree(run.run_dir)
    if run.writer:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        bio.write_json(run.run_dir / "config.json", to_dict(run.cfg))
        if norm is not None:
            normalize.save(run.run_dir / "normalize.npz", norm)
    from . import tblog  # TensorBoard events and the --profile trace, in the run folder

    run.tb = tblog.open_run(run.run_dir, to_dict(run.cfg), enabled=run.writer)
    run.trace = tblog.StepTrace(run.run_dir, run.cfg.profile if run.writer else 0)


def _restore_or_start(run: _Run, state) -> tuple[Any, dict]:
    """The state and progress from ``last.npz`` when it is readable, else a fresh start."""
    from . import engine

    # "step" > 0: a mid-epoch checkpoint, "partial" the epoch's metrics so far.
    meta = {"epoch": 0, "step": 0, "partial": None, "history": [], "best_val_loss": math.inf,
            "best_epoch": 0, "wait": 0, "step_times": [], "epoch_img_per_s": []}
    if run.ckpt.exists():
        try:
            arrays, saved = bio.load_arrays(run.ckpt)
            state = engine.arrays_to_tree(state, arrays)
            meta.update(saved)
            say(run.quiet, f"{run.run_id}: resuming after epoch {meta['epoch']}"
                + (f", step {meta['step']}" if meta.get("step") else "") + f" from {run.ckpt}")
        except ValueError as e:
            say(run.quiet, f"{run.run_id}: ignoring unreadable checkpoint ({e}); starting over")
    return engine.replicate(state, run.mesh), meta


def _compile(run: _Run, fit: _Fit, state, meta: dict) -> None:
    """Compile the train step for the placement (timed) and open the stream where streamed."""
    import jax

    from . import engine
    from . import stream as bstream

    cfg, mesh, batch = run.cfg, run.mesh, run.batch
    train_split = run.dataset.splits["train"]
    fit.base_key = jax.random.key(cfg.seed)
    if run.placement == "device":
        fit.x_all = engine.to_global(train_split.images, mesh.replicated)
        fit.y_all = engine.to_global(train_split.labels.astype(np.int32), mesh.replicated)
        idx0 = engine.to_global(np.zeros(batch, np.int32), mesh.data)
        t0 = time.perf_counter()
        fit.train_step = fit.steps.train.lower(state, fit.x_all, fit.y_all, idx0,
                                               fit.base_key).compile()
    else:
        shape = (batch,) + tuple(train_split.images.shape[1:])
        t0 = time.perf_counter()
        fit.train_step = fit.steps.train.lower(
            state, jax.ShapeDtypeStruct(shape, train_split.images.dtype, sharding=mesh.data),
            jax.ShapeDtypeStruct((batch,), np.int32, sharding=mesh.data),
            fit.base_key).compile()
    compile_s = time.perf_counter() - t0
    if run.placement == "stream":  # closed by train()'s `with`
        fit.stream = bstream.BatchStream(
            train_split.images, train_split.labels, batch=batch,
            steps_per_epoch=run.steps_per_epoch, seed=cfg.seed, sharding=mesh.data,
            end_epoch=cfg.optim.epochs, start=(meta["epoch"], meta["step"]))
    meta.setdefault("compile_s", compile_s)


def _start_record(run: _Run, counts: dict) -> dict[str, Any]:
    """The record's fields known before training (status "running")."""
    import jax

    from runtime import devices

    cfg, dataset, leaks = run.cfg, run.dataset, run.leaks
    return {
        "record_version": RECORD_VERSION, "run_id": run.run_id, "status": "running",
        "model": cfg.model.name, "tag": cfg.tag or cfg.model.name, "family": run.info.family,
        "dataset": dataset.summary(), "config": to_dict(cfg), "precision": cfg.precision,
        "normalize": cfg.data.normalize,
        "num_classes": len(dataset.classes), "image_size": list(dataset.image_size),
        "params_trainable": counts["trainable"], "params_total": counts["total"],
        "device": devices.device_description(run.mesh.n), "versions": versions(),
        "seed": cfg.seed, "global_batch": run.batch, "steps_per_epoch": run.steps_per_epoch,
        # compile_s is warm when this cache already held the step (a repeated command).
        "compile_cache": jax.config.jax_compilation_cache_dir or None,
        "data_placement": run.placement, "data_placement_reason": run.placement_why,
        "near_duplicates_across_splits": None if leaks is None else {
            f"{a}-{b}": sum(1 for p in leaks if {p.split_a, p.split_b} == {a, b})
            for a, b in (("train", "val"), ("train", "test"), ("val", "test"))},
    }


def _train_epochs(run: _Run, fit: _Fit, state, meta: dict, record: dict, prog,
                  wall0: float):
    """The epoch loop from where ``meta`` left off, to the last epoch or ``--patience``."""
    from . import engine

    cfg = run.cfg
    first_epoch, first_step = meta["epoch"], meta["step"]
    for epoch in range(meta["epoch"], cfg.optim.epochs):
        start = first_step if epoch == first_epoch else 0
        state, row = train_one_epoch(run, fit, state, meta, record, prog, epoch=epoch,
                                     start=start, wall0=wall0)
        _validate(run, fit.steps, state, meta, row)
        meta["history"].append(row)
        run.tb.log_epoch(row, img_per_s=meta["epoch_img_per_s"][-1],
                         step_times=meta["step_times"][-(run.steps_per_epoch - start):])
        meta.update(epoch=epoch + 1, step=0, partial=None)
        meta["wall_s"] = time.perf_counter() - wall0
        if run.writer:
            bio.save_arrays(run.ckpt, engine.tree_to_arrays(state), meta)
        prog.log(_epoch_line(row))
        if cfg.optim.patience and meta["wait"] >= cfg.optim.patience:
            prog.log(f"early stop: val loss has not improved for {cfg.optim.patience} epochs")
            break
    return state


def train_one_epoch(run: _Run, fit: _Fit, state, meta: dict, record: dict, prog, *,
                    epoch: int, start: int, wall0: float):
    """One epoch's steps from step ``start``; return the state and the epoch's history row."""
    import jax

    from . import engine
    from . import stream as bstream

    n_train, spe = len(run.dataset.splits["train"].labels), run.steps_per_epoch
    perm = bstream.epoch_order(run.cfg.seed, epoch, n_train) if fit.stream is None else None
    advance = prog.task(f"epoch {epoch + 1}/{run.cfg.optim.epochs}", spe)
    partial = (meta.get("partial") or {}) if start else {}
    losses, accs = list(partial.get("losses", [])), list(partial.get("accs", []))
    if start:
        advance(start)
    e0 = time.perf_counter() - partial.get("epoch_s", 0.0)
    last_ckpt = time.perf_counter()
    # Mid-epoch checkpoints: every N steps, or in stream placement every 5 minutes.
    every_steps = run.cfg.data.checkpoint_every
    every_s = 300.0 if fit.stream is not None and not every_steps else None
    for i in range(start, spe):
        run.trace.at(epoch * spe + i)
        key = jax.random.fold_in(fit.base_key, epoch * spe + i)
        inputs = _step_inputs(run, fit, perm, epoch, i)
        s0 = time.perf_counter()
        state, m = fit.train_step(state, *inputs, key)
        loss = float(m["loss"])  # blocks until the step is done
        meta["step_times"].append(time.perf_counter() - s0)
        if not math.isfinite(loss):
            _diverged(run, record, meta, loss, epoch, i)
        losses.append(loss)
        accs.append(float(m["accuracy"]))
        advance(1, f"loss {loss:.4f}")
        if i + 1 < spe and (
                (every_steps and (epoch * spe + i + 1) % every_steps == 0)
                or (every_s and time.perf_counter() - last_ckpt >= every_s)):
            meta.update(step=i + 1, wall_s=time.perf_counter() - wall0, partial={
                "losses": losses, "accs": accs, "epoch_s": time.perf_counter() - e0})
            if run.writer:
                bio.save_arrays(run.ckpt, engine.tree_to_arrays(state), meta)
            last_ckpt = time.perf_counter()
    epoch_s = time.perf_counter() - e0
    meta["epoch_img_per_s"].append(spe * run.batch / epoch_s)
    row = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)),
           "train_accuracy": float(np.mean(accs)), "epoch_s": epoch_s,
           "lr": float(fit.schedule((epoch + 1) * spe - 1))}
    return state, row


def _step_inputs(run: _Run, fit: _Fit, perm, epoch: int, i: int) -> tuple:
    """Step ``i``'s data arguments: the batch's indices (device) or the batch itself (stream)."""
    from . import engine

    if fit.stream is None:
        batch = run.batch
        idx = engine.to_global(perm[i * batch:(i + 1) * batch].astype(np.int32),
                               run.mesh.data)
        return fit.x_all, fit.y_all, idx
    e, j, images, labels = next(fit.stream)
    assert (e, j) == (epoch, i), f"stream at {(e, j)}, loop at {(epoch, i)}"
    return images, labels


def _diverged(run: _Run, record: dict, meta: dict, loss: float, epoch: int, i: int):
    """Write the record as "diverged" and raise TrainingDiverged."""
    record.update(status="diverged", epochs_completed=epoch, history=meta["history"],
                  error=f"loss became {loss} at epoch {epoch + 1}, step {i + 1}")
    if run.writer:
        bio.write_json(run.record_path, record)
    raise TrainingDiverged(
        f"{run.run_id}: the loss became {loss} at epoch {epoch + 1} step {i + 1}; "
        f"try a lower --lr or gradient clipping (--grad-clip). Record: {run.record_path}")


def _validate(run: _Run, steps, state, meta: dict, row: dict) -> None:
    """Score the validation split into ``row``; keep the best weights (and their predictions)."""
    from . import engine
    from . import metrics as bm

    cfg, val_split = run.cfg, run.dataset.splits["val"]
    if not len(val_split.labels):
        return
    logp = engine.predict_log_proba(steps, state, val_split.images, cfg.eval_batch_size,
                                    run.mesh)
    vm = bm.basic_metrics(logp, val_split.labels, len(run.dataset.classes))
    row.update(val_loss=vm["log_loss"], val_accuracy=vm["accuracy"])
    if vm["log_loss"] < meta["best_val_loss"]:
        meta.update(best_val_loss=vm["log_loss"], best_epoch=row["epoch"], wait=0)
        if run.writer:
            bio.save_arrays(run.best_ckpt, engine.tree_to_arrays(
                {"params": state["params"], "rest": state["rest"]}), {"epoch": row["epoch"]})
            # The best weights' validation predictions, kept rather than recomputed after
            # training (what `bench group` clusters on).
            _save_npy(run.best_val_file, logp)
    else:
        meta["wait"] += 1


def _restore_best(run: _Run, state, meta: dict, record: dict, prog):
    """The best-validation weights (Keras' restore_best_weights); return (state, restored)."""
    from . import engine

    if not run.best_ckpt.exists():
        return state, False
    try:
        arrays, _ = bio.load_arrays(run.best_ckpt)
        best = engine.arrays_to_tree({"params": state["params"], "rest": state["rest"]},
                                     arrays)
        return dict(state, **engine.replicate(best, run.mesh)), True
    except ValueError as e:  # unreadable: score the last weights, say so
        prog.log(f"{run.run_id}: ignoring unreadable {run.best_ckpt} ({e}); scoring the last "
                 f"epoch's weights")
        record["best_checkpoint_unreadable"] = str(e)
        meta["best_epoch"] = meta["epoch"]
        return state, False


def _predict_splits(run: _Run, steps, state, scored_best: bool, prog):
    """Test log-probabilities (batches timed), and validation's (saved ones when best)."""
    from . import engine

    cfg, splits = run.cfg, run.dataset.splits
    test_split, val_split = splits["test"], splits["val"]
    advance = prog.task("test", len(test_split.labels))
    batch_times: list[float] = []
    logp = engine.predict_log_proba(steps, state, test_split.images, cfg.eval_batch_size,
                                    run.mesh, progress=advance, times=batch_times)
    # The scored weights' validation predictions: what `bench group` clusters classes on
    # (choosing groups on the test split would grade them on the data that chose them).
    val_logp = None
    if len(val_split.labels):
        val_logp = (_load_npy(run.best_val_file, len(val_split.labels)) if scored_best
                    else None)
        if val_logp is None:
            val_logp = engine.predict_log_proba(steps, state, val_split.images,
                                                cfg.eval_batch_size, run.mesh)
    return logp, val_logp, batch_times


def _inference_speed(run: _Run, steps, state, batch_times: list[float]) -> dict:
    """Inference img/s from the timed test batches, or measured apart when they are too few."""
    # The test batches are padded, so all full-size; the first, which may compile, is left
    # out; host-device transfers are included. A test split of fewer than 3 batches is timed
    # apart.
    cfg, mesh, splits = run.cfg, run.mesh, run.dataset.splits
    full = batch_times[1:] if len(batch_times) >= 3 else []
    if len(full) >= 2:
        eval_batch = max(mesh.n, cfg.eval_batch_size - cfg.eval_batch_size % mesh.n)
        return {"img_per_s": eval_batch / statistics.median(full), "batch": eval_batch}
    images = (splits["test"].images if len(splits["test"].labels)
              else splits["train"].images)
    return measure_inference(steps, state, images, cfg.eval_batch_size, mesh)


def _write_outputs(run: _Run, state, scored_best: bool, logp, val_logp) -> int:
    """Write weights.npz and the prediction arrays; return the weights' size in bytes."""
    if not run.writer:
        return len(bio_bytes(state))
    run_dir, splits = run.run_dir, run.dataset.splits
    if scored_best:  # the scored weights are best.npz's: copy them, do not re-serialise
        with bio.atomic_path(run_dir / "weights.npz") as tmp:
            shutil.copyfile(run.best_ckpt, tmp)
        wbytes = (run_dir / "weights.npz").stat().st_size
    else:
        wbytes = save_weights(run_dir / "weights.npz", state)
    np.save(run_dir / "test_log_proba.npy", logp.astype(np.float32))
    np.save(run_dir / "test_labels.npy", splits["test"].labels.astype(np.int32))
    if val_logp is not None:
        np.save(run_dir / "val_log_proba.npy", val_logp.astype(np.float32))
        np.save(run_dir / "val_labels.npy", splits["val"].labels.astype(np.int32))
    return wbytes


def _finish_record(run: _Run, record: dict, meta: dict, *, test: dict, infer: dict,
                   wbytes: int, stream, wall0: float) -> None:
    """Complete the record with test metrics and speeds; write it, the confusion and history."""
    step_times = meta["step_times"][2:] or meta["step_times"]
    record.update(
        status="complete",
        epochs_completed=meta["epoch"], best_epoch=meta["best_epoch"],
        history=meta["history"],
        accuracy=test["accuracy"], top5_accuracy=test.get("top5_accuracy"),
        log_loss=test["log_loss"], per_class=test["per_class"],
        confusion=test["confusion"], classes=list(run.dataset.classes),
        train_img_per_s=run.batch / statistics.median(step_times),
        train_step_ms=1000 * statistics.median(step_times),
        epoch_img_per_s=statistics.median(meta["epoch_img_per_s"]),
        infer_img_per_s=infer["img_per_s"], infer_batch=infer["batch"],
        compile_s=meta["compile_s"], weights_bytes=wbytes,
        **({"stream": {"rows_read": stream.rows_read, "wait_s": stream.wait_s,
                       "local_rows": [stream.lo, stream.hi]}} if stream is not None else {}),
        wall_s=time.perf_counter() - wall0, finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    if run.writer:
        bio.write_json(run.record_path, record)
        from .report.tables import write_confusion, write_history

        write_confusion(run.run_dir, record)
        write_history(run.run_dir, record)


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
