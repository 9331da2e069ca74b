"""Building a model without eager initialisation.

Eagerly, every initializer call (``kernel_init(key, shape)``, the key splits of
``nnx.Rngs``) compiles one small XLA program per shape; building EfficientNet-Lite0 that
way is most of half a minute on the 2-core CPU. Here the builder runs instead

* under one ``jax.jit`` (``build_random``): the whole initialisation is one program, compiled
  with XLA's cheapest optimisation level since it runs once;
* or traced only (``build_and_load``): the model's variables start as host numpy
  buffers filled with NaN, the weight file is copied into them (the loaders assign with
  ``var[...] = value``, an in-place numpy copy), and only the variables the file did not
  fill (a skipped head, dropout RNG state) are computed, by the jitted builder pruned to
  those outputs (the same trace, evaluated with the other outputs pruned). The arrays then go to the device once each.

The values are the eager builder's: the same ``nnx.Rngs`` streams draw the same keys
(tests/test_models.py checks it; the floats agree to an ulp or so, the transcendental
functions of the truncated normal being fused differently).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# The init program runs once: XLA's backend optimisations cost more compile time than they
# save (measured in build_random's docstring).
INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0,
                         "xla_llvm_disable_expensive_passes": True}


@contextlib.contextmanager
def _cheap_tracer_errors():
    """While tracing a builder, skip JAX's search for a tracer's origin in error messages.

    ``nnx.RngStream`` bumps its counter with ``var[...] = count + 1``; ``Variable.set_value``
    then asks the traced value for ``.sharding``, which a tracer answers with an
    ``AttributeError`` whose message names the operations the tracer came from, found by
    scanning the whole trace so far. Over a builder's ~300 key draws that is quadratic: ~5 s of
    EfficientNet-Lite0's 12 s build on the loaded 2-core machine (cProfile). The messages are
    never shown (``getattr(..., None)`` swallows them); outside this block they are unchanged.
    """
    try:
        from jax._src.interpreters import partial_eval as pe
        cls = pe.DynamicJaxprTracer
        original = cls.__dict__["_origin_msg"]
    except (ImportError, AttributeError, KeyError):  # another JAX: nothing to patch
        yield
        return
    cls._origin_msg = lambda self: ""
    try:
        yield
    finally:
        cls._origin_msg = original


def _is_key(dtype) -> bool:
    return jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _trace_init(make: Callable[[nnx.Rngs], Any], rngs: nnx.Rngs):
    """Trace ``make(rngs)`` once. Returns the model's graphdef and state treedef, the closed
    jaxpr from the rng state to ``[*state leaves, *new rng state leaves]``, and the rng state."""
    rgd, rstate = nnx.split(rngs)
    box: dict[str, Any] = {}

    def init(rstate):
        r = nnx.merge(rgd, rstate)
        gd, state = nnx.split(make(r))
        leaves, treedef = jax.tree.flatten(state)
        box["graphdef"], box["treedef"], box["n"] = gd, treedef, len(leaves)
        return leaves, nnx.state(r)

    with _cheap_tracer_errors():
        closed, out_shape = jax.make_jaxpr(init, return_shape=True)(rstate)
    return box["graphdef"], box["treedef"], closed, out_shape, rstate, box["n"]


def _run_init(closed, out_shape, rstate, rngs: nnx.Rngs, keep: Sequence[int] | None):
    """Evaluate the traced init as one compiled program, computing only the state leaves at
    ``keep`` (all if ``None``; the rest are pruned); advances ``rngs`` as the eager build."""
    n_state = len(jax.tree.leaves(out_shape[0]))
    rtree = jax.tree.structure(out_shape[1])

    def run(rstate):
        outs = jax.core.eval_jaxpr(closed.jaxpr, closed.consts, *jax.tree.leaves(rstate))
        state, new_r = outs[:n_state], outs[n_state:]
        return ([state[i] for i in keep] if keep is not None else state), new_r

    compiled = jax.jit(run).lower(rstate).compile(INIT_COMPILER_OPTIONS)
    values, new_r = compiled(rstate)
    nnx.update(rngs, jax.tree.unflatten(rtree, new_r))
    return values


def under_trace(rngs: nnx.Rngs) -> bool:
    """Whether ``create_model`` is called inside a trace (``nnx.eval_shape``, ``jax.jit``,
    ...; ``rngs`` holds tracers, or a trace is active): then the builder is simply traced
    along, as eagerly, and nothing is compiled for it."""
    if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(nnx.state(rngs))):
        return True
    try:
        from jax._src import core
        return not core.trace_state_clean()
    except (ImportError, AttributeError):  # another JAX: the rngs test alone
        return False


def build_random(make: Callable[[nnx.Rngs], Any], rngs: nnx.Rngs):
    """``make(rngs)`` (a model builder) with its whole initialisation one jitted program."""
    graphdef, treedef, closed, out_shape, rstate, _ = _trace_init(make, rngs)
    leaves = _run_init(closed, out_shape, rstate, rngs, None)
    return nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))


def build_and_load(make: Callable[[nnx.Rngs], Any], rngs: nnx.Rngs,
                   load: Callable[[Any], Any]):
    """``make(rngs)`` then ``load(model)`` (which assigns weights with ``var[...] = value``),
    without computing the initial values ``load`` overwrites."""
    graphdef, treedef, closed, out_shape, rstate, _ = _trace_init(make, rngs)
    shapes = out_shape[0]

    def placeholder(s):
        if not hasattr(s, "shape") or _is_key(s.dtype):
            return s
        return np.full(s.shape, np.nan if jnp.issubdtype(s.dtype, jnp.inexact) else 0,
                       s.dtype)

    model = nnx.merge(graphdef, jax.tree.unflatten(treedef, [placeholder(s) for s in shapes]))
    load(model)
    _, state = nnx.split(model)
    leaves, treedef2 = jax.tree.flatten(state)
    if treedef2 != treedef:
        raise RuntimeError("loading weights changed the model's structure")

    def filled(a) -> bool:  # written by the loader (no float placeholder left)
        return (isinstance(a, np.ndarray) and a.size > 0
                and jnp.issubdtype(a.dtype, jnp.inexact) and not np.isnan(a).all())

    missing = [i for i, a in enumerate(leaves) if not filled(a)]
    if missing:
        values = _run_init(closed, out_shape, rstate, rngs, missing)
        for i, v in zip(missing, values):
            leaves[i] = v
    # device_put, not jnp.asarray: the latter compiles a small copy program per shape.
    leaves = [jax.device_put(a) if isinstance(a, np.ndarray) else a for a in leaves]
    return nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))


def build_empty(build: Callable[[], Any]):
    """The module ``build()`` makes, traced only and filled with zeros (RNG keys: key 0),
    for weights that are assigned next (a stored ``nnx.split`` state, say): no
    initialiser runs. ``models.create_model(..., weights=FILE)`` does this for weight files
    the model's loader reads; this is for states stored by other means."""
    graphdef, state = nnx.split(nnx.eval_shape(build))

    def fill(s):
        if _is_key(s.dtype):
            return jax.random.key(0)
        return jnp.zeros(s.shape, s.dtype)

    return nnx.merge(graphdef, jax.tree.map(fill, nnx.as_pure(state)))
