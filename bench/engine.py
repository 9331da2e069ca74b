"""The training engine: optimizers, schedules, and the jitted, data-parallel train/eval steps.

The model is split once into a graph definition and a state pytree (``nnx.split``); the steps
are pure functions of that pytree, jit-compiled over a one-axis device mesh: parameters and
optimizer state replicated (``P()``), the batch sharded over ``"data"``. XLA inserts the
gradient all-reduce, and BatchNorm statistics are computed over the global batch, so N
devices give the same result as one (up to float summation order).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import models

from runtime.devices import Mesh, replicate, to_global  # noqa: F401  (re-exported)

from . import augment as aug
from . import normalize as bench_normalize

from .config import OPTIMIZERS, PRECISIONS, SCHEDULES, AugmentConfig, OptimConfig  # noqa: F401


def make_schedule(cfg: OptimConfig, steps_per_epoch: int, epochs: int) -> optax.Schedule:
    total = max(1, steps_per_epoch * epochs)
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if cfg.schedule == "onecycle":
        return optax.cosine_onecycle_schedule(total, cfg.lr, pct_start=max(warmup, 1) / total
                                              if warmup else 0.3)
    if cfg.schedule == "cosine":
        if warmup:
            return optax.warmup_cosine_decay_schedule(0.0, cfg.lr, warmup, total)
        return optax.cosine_decay_schedule(cfg.lr, total)
    if cfg.schedule == "step":
        bounds = {int(round(e * steps_per_epoch)): 1.0 / cfg.step_factor for e in cfg.step_epochs}
        sched = optax.piecewise_constant_schedule(cfg.lr, bounds)
    else:
        sched = optax.constant_schedule(cfg.lr)
    if warmup:
        return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), sched], [warmup])
    return sched


def _kernel_mask(params):
    return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(cfg: OptimConfig, schedule: optax.Schedule, trainable_mask=None):
    """An optax transformation for ``cfg``; parameters where ``trainable_mask`` is False get
    zero updates (frozen blocks)."""
    if cfg.optimizer in ("sgd", "nesterov"):
        base = optax.sgd(schedule, momentum=cfg.momentum or None,
                         nesterov=cfg.optimizer == "nesterov")
    elif cfg.optimizer == "adam":
        base = optax.adam(schedule)
    elif cfg.optimizer == "adamw":
        base = optax.adamw(schedule, weight_decay=cfg.weight_decay, mask=_kernel_mask)
    elif cfg.optimizer == "radam":
        base = optax.radam(schedule)
    elif cfg.optimizer == "rmsprop":
        # Keras defaults: rho=0.9, epsilon=1e-7.
        base = optax.rmsprop(schedule, decay=0.9, eps=1e-7, momentum=cfg.momentum or None)
    else:  # adadelta; Keras' rho=0.95, epsilon=1e-7
        base = optax.adadelta(schedule, rho=0.95, eps=1e-7)
    chain = []
    if cfg.grad_clip > 0:
        chain.append(optax.clip_by_global_norm(cfg.grad_clip))
    if cfg.weight_decay > 0 and cfg.optimizer != "adamw":
        chain.append(optax.add_decayed_weights(cfg.weight_decay, mask=_kernel_mask))
    chain.append(base)
    tx = optax.chain(*chain) if len(chain) > 1 else base
    if trainable_mask is not None:
        labels = jax.tree.map(lambda t: "train" if t else "frozen", trainable_mask)
        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
    return tx


def freeze_mask(model, params, freeze: str | None):
    """Boolean pytree over ``params``: False for parameters in blocks up to and including
    ``freeze`` (a name from ``model.block_names()``; ``"backbone"`` = everything but the head).
    """
    if not freeze:
        return None
    blocks = model.block_names()
    if freeze == "backbone":
        frozen = set(b for b in blocks if b != "head")
    else:
        if freeze not in blocks:
            raise ValueError(f"--freeze {freeze!r}: not a block of this model; blocks are "
                             f"{', '.join(blocks)} (or 'backbone')")
        frozen = set(blocks[: blocks.index(freeze) + 1])
    mask = jax.tree_util.tree_map_with_path(lambda path, _: _key(path[0]) not in frozen, params)
    if not any(jax.tree_util.tree_leaves(mask)):
        raise ValueError(f"--freeze {freeze!r} freezes every parameter; nothing would train")
    return mask


def _key(k):
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return getattr(k, attr)
    return k


def frozen_blocks(model, freeze: str | None) -> list[str]:
    if not freeze:
        return []
    blocks = model.block_names()
    if freeze == "backbone":
        return [b for b in blocks if b != "head"]
    return blocks[: blocks.index(freeze) + 1]


def set_frozen_bn_inference(model, freeze: str | None):
    """Frozen blocks keep BatchNorm in inference mode (Keras' behaviour for trainable=False)."""
    for name in frozen_blocks(model, freeze):
        sub = getattr(model, name)
        for _, m in nnx.iter_modules(sub):
            if isinstance(m, nnx.BatchNorm):
                m.use_running_average = True


def cross_entropy(logits, labels, num_classes: int, label_smoothing: float = 0.0):
    onehot = jax.nn.one_hot(labels, num_classes)
    if label_smoothing:
        onehot = optax.smooth_labels(onehot, label_smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), onehot)


@dataclasses.dataclass
class Steps:
    """The compiled step functions and the graph definitions they close over."""

    train: Callable
    eval: Callable
    graphdef_train: Any
    graphdef_eval: Any


def compute_dtype(precision: str):
    if precision not in PRECISIONS:
        raise ValueError(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    return jnp.bfloat16 if precision == "bf16" else jnp.float32


def cast_floats(tree, dtype):
    return jax.tree.map(
        lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def set_compute_dtype(model, dtype) -> None:
    """Make every Flax layer of ``model`` compute in ``dtype`` (its ``dtype`` attribute; the
    parameters keep their ``param_dtype``). BatchNorm then normalises in ``dtype`` but keeps
    its statistics and their moving averages in float32."""
    for _, m in nnx.iter_modules(model):
        if hasattr(m, "dtype") and hasattr(m, "param_dtype"):
            m.dtype = dtype


def build_steps(model, tx, *, num_classes: int, preprocessing: str,
                augment: AugmentConfig, label_smoothing: float, mesh: Mesh,
                freeze: str | None = None, on_device_data: bool = True,
                trainable_mask=None, precision: str = "fp32",
                normalize: str = "none") -> Steps:
    """Jit the train and eval steps for ``model`` over ``mesh``: the one step function that
    ``bench train`` runs, ``bench speed`` times and evaluation and prediction reuse.

    ``precision="bf16"`` is mixed precision: the float32 master parameters are cast to
    bfloat16 inside the step and every layer computes in bfloat16, while the gradients, the
    optimizer state, the loss (from float32 logits) and the BatchNorm statistics stay float32.
    ``normalize`` other than ``"none"``: ``state["norm"]`` (``bench.normalize``) replaces the
    model's preprocessing.

    Train step: ``(state, x_all, idx, key) -> (state, metrics)`` when ``on_device_data``
    (``x_all``/``y_all`` live on the devices, ``idx`` is the sharded batch of row indices), else
    ``(state, images, labels, key)``. The state is ``{'params', 'rest', 'opt_state', 'step'}``.
    """
    compute = compute_dtype(precision)
    if precision != "fp32":
        set_compute_dtype(model, compute)
    model.train()
    set_frozen_bn_inference(model, freeze)
    graphdef_train = nnx.graphdef(model)
    model.eval()
    graphdef_eval = nnx.graphdef(model)
    model.train()

    def prepare(x, norm):
        if normalize != "none":
            return bench_normalize.apply(norm, x).astype(compute)
        return models.preprocess_mode(x, preprocessing).astype(compute)

    def forward_train(params, rest, images_u8, key, norm):
        x = aug.apply(augment, key, images_u8.astype(jnp.float32))
        m = nnx.merge(graphdef_train, cast_floats(params, compute), rest)
        logits = m(prepare(x, norm))
        _, _, new_rest = nnx.split(m, nnx.Param, ...)
        new_rest = jax.tree.map(lambda new, old: new.astype(old.dtype), nnx.as_pure(new_rest),
                                rest)
        return logits, new_rest

    def train_core(state, images, labels, key):
        def loss_fn(params, rest):
            if trainable_mask is not None:
                # Frozen blocks: no gradient flows, so XLA drops their backward pass.
                params = jax.tree.map(lambda p, t: p if t else jax.lax.stop_gradient(p),
                                      params, trainable_mask)
            logits, new_rest = forward_train(params, rest, images, key, state.get("norm"))
            loss = cross_entropy(logits, labels, num_classes, label_smoothing).mean()
            return loss, (logits, new_rest)

        (loss, (logits, new_rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"], state["rest"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        acc = jnp.mean(jnp.argmax(logits, -1) == labels)
        new_state = dict(state, params=params, rest=new_rest, opt_state=opt_state,
                         step=state["step"] + 1)
        return new_state, {"loss": loss, "accuracy": acc}

    rep, data = mesh.replicated, mesh.data
    if on_device_data:
        def train_step(state, x_all, y_all, idx, key):
            images = jnp.take(x_all, idx, axis=0)
            labels = jnp.take(y_all, idx, axis=0)
            return train_core(state, images, labels, key)

        train = jax.jit(train_step, in_shardings=(rep, rep, rep, data, rep),
                        out_shardings=(rep, rep), donate_argnums=0)
    else:
        train = jax.jit(train_core, in_shardings=(rep, data, data, rep),
                        out_shardings=(rep, rep), donate_argnums=0)

    def eval_step(state, images):
        x = prepare(images.astype(jnp.float32), state.get("norm"))
        m = nnx.merge(graphdef_eval, cast_floats(state["params"], compute), state["rest"])
        return jax.nn.log_softmax(m(x).astype(jnp.float32), axis=-1)

    # Replicated output: every process can read the predictions in multi-host runs.
    evaluate = jax.jit(eval_step, in_shardings=(rep, data), out_shardings=rep)
    return Steps(train, evaluate, graphdef_train, graphdef_eval)


def init_state(model, tx, norm: dict | None = None) -> dict:
    """The train state as a pytree of plain arrays (``nnx.as_pure``: no Variable objects, so
    it crosses jit/grad boundaries and checkpoints as leaves). ``norm``: fitted input
    normalisation (``bench.normalize``), carried as constants."""
    _, params, rest = nnx.split(model, nnx.Param, ...)
    params, rest = nnx.as_pure(params), nnx.as_pure(rest)
    state = dict(params=params, rest=rest, opt_state=tx.init(params),
                 step=jnp.zeros((), jnp.int32))
    if norm is not None:
        state["norm"] = {k: jnp.asarray(v) for k, v in norm.items()}
    return state


def state_to_model(graphdef, state):
    return nnx.merge(graphdef, state["params"], state["rest"])


def predict_log_proba(steps: Steps, state, images: np.ndarray, batch_size: int, mesh: Mesh,
                      progress=None, times: list | None = None) -> np.ndarray:
    """Log-probabilities for uint8 ``images``, in fixed-size padded batches (one compile).
    ``times``: a list that gets each batch's seconds (host to device, step, back)."""
    n = len(images)
    batch_size = _round_up(batch_size, mesh.n)
    out = []
    for start in range(0, n, batch_size):
        chunk = images[start:start + batch_size]
        real = len(chunk)
        if real < batch_size:
            chunk = np.concatenate([chunk, np.zeros((batch_size - real,) + chunk.shape[1:],
                                                    chunk.dtype)])
        t0 = time.perf_counter()
        logp = steps.eval(state, to_global(chunk, mesh.data))
        out.append(np.asarray(logp)[:real])  # blocks until the batch is done
        if times is not None:
            times.append(time.perf_counter() - t0)
        if progress is not None:
            progress(real)
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def tree_to_arrays(tree) -> list[np.ndarray]:
    """Leaves as numpy arrays (PRNG keys as their raw key data), for checkpoints."""
    out = []
    for leaf in jax.tree_util.tree_leaves(tree):
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        out.append(np.asarray(leaf))
    return out


def arrays_to_tree(template, arrays: list[np.ndarray]):
    """Inverse of ``tree_to_arrays`` given a template tree of the same structure."""
    leaves, treedef = jax.tree_util.tree_flatten(template)
    if len(leaves) != len(arrays):
        raise ValueError(f"checkpoint has {len(arrays)} arrays, the model state {len(leaves)}")
    new = []
    for t, a in zip(leaves, arrays):
        if jnp.issubdtype(t.dtype, jax.dtypes.prng_key):
            a = jax.random.wrap_key_data(jnp.asarray(a), impl=jax.random.key_impl(t))
        elif tuple(t.shape) != tuple(a.shape):
            raise ValueError(f"checkpoint array of shape {a.shape} where the state has {t.shape}")
        else:
            a = jnp.asarray(a, dtype=t.dtype)
        new.append(a)
    return jax.tree_util.tree_unflatten(treedef, new)
