"""Devices and the data-parallel mesh: one axis ``"data"``, batch sharded, state replicated."""

from __future__ import annotations

import dataclasses
import platform
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


@dataclasses.dataclass
class Mesh:
    """A one-axis data-parallel mesh over ``n`` local devices."""

    n: int
    mesh: Any
    data: NamedSharding
    replicated: NamedSharding

    @classmethod
    def create(cls, n: int | None = None) -> "Mesh":
        devices = jax.devices()
        if n is None:
            n = len(devices)
        if not 1 <= n <= len(devices):
            raise ValueError(f"--devices {n}: this host has {len(devices)} device(s)")
        # Auto axis type: XLA's sharding propagation places the gathers and the gradient
        # all-reduce (the behaviour pmap users expect), rather than explicit-sharding rules.
        mesh = jax.make_mesh((n,), ("data",), devices=devices[:n],
                             axis_types=(jax.sharding.AxisType.Auto,))
        return cls(n, mesh, NamedSharding(mesh, P("data")), NamedSharding(mesh, P()))


def to_global(a: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """Place a host array that every process holds in full as a global array (works
    single- and multi-process, where ``jax.device_put`` cannot reach other hosts' devices)."""
    return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])


def replicate(tree, mesh: Mesh):
    """Replicate a pytree of arrays (PRNG keys included) over the mesh, multi-process safe."""
    def put(leaf):
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            data = to_global(np.asarray(jax.random.key_data(leaf)), mesh.replicated)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
        return to_global(np.asarray(leaf), mesh.replicated)

    return jax.tree.map(put, tree)


def device_description(n: int | None = None) -> dict:
    """``{'platform', 'kind', 'count', 'processes', 'host'}`` of the first ``n`` devices."""
    devs = jax.devices()
    n = len(devs) if n is None else n
    d = devs[0]
    return {"platform": d.platform, "kind": getattr(d, "device_kind", d.platform),
            "count": n, "processes": jax.process_count(),
            "host": platform.processor() or platform.machine()}


def device_line(d: dict) -> str:
    return f"{d['count']}x {d['kind']} ({d['platform']}, host {d['host']})"
