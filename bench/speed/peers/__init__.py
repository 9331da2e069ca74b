"""Peer frameworks timed on the same architecture, batch, input size and precision as ours.

``bench speed --vs keras,torch,timm`` calls ``measure_peer``; each peer module has
``measure(model, *, batch_size, image_size, precision, warmup, repeats, train, infer,
num_classes, torch_compile) -> row`` returning ``bench.speed.ROW_KEYS`` with the same warm-up
and median method (``bench.speed.time_calls``). The peer modules are imported only here, on
request: neither Keras nor PyTorch is needed by the package. A missing framework or an
architecture it has no equivalent of gives a row whose ``note`` says so, never an error.

``torch`` is PyTorch with torchvision's (or hand-written) models, ``timm`` PyTorch with
timm's; either with ``+compile`` (``torch+compile``, ``timm+compile``) runs through
``torch.compile``, a row of its own beside the eager one.

``bench speed`` times each peer in a process of its own (``measure_peer_isolated``): two
frameworks in one process share the OpenMP runtime and thread pools, and on the 2-core CPU
PyTorch's eager ResNet-20 step ran 1.6x slower once our oneDNN convolutions had run beside
it. The child inherits the environment (``LD_PRELOAD``, so the same allocator).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

PEERS = ("keras", "torch", "timm")
COMPILED = ("torch+compile", "timm+compile")


def check_peer(peer: str) -> None:
    """Refuse a peer name that is not in ``PEERS`` or ``COMPILED``."""
    if peer not in PEERS + COMPILED:
        raise ValueError(f"--vs {peer!r}: not one of {', '.join(PEERS + COMPILED)}")


def measure_peer(peer: str, model: str, **kwargs) -> dict:
    """Time ``model`` in framework ``peer`` (one of ``PEERS`` or ``COMPILED``); see the
    module docstring."""
    if peer not in PEERS + COMPILED:
        raise ValueError(f"peer {peer!r}: not one of {', '.join(PEERS + COMPILED)}")
    if peer == "keras":
        from . import keras_peer as module

        return module.measure(model, **kwargs)
    from . import torch_peer

    source, _, compiled = peer.partition("+")
    if compiled:
        kwargs["torch_compile"] = True
    return torch_peer.measure(model, source=source, **kwargs)


_MARK = "BENCH_PEER_ROW "
_CHILD = """
import json, sys
from bench.speed.peers import measure_peer, _child_versions
a = json.loads(sys.stdin.read())
row = measure_peer(a["peer"], a["model"], **a["kwargs"])
row["versions"] = _child_versions()
print("\\n" + {mark!r} + json.dumps(row), flush=True)
"""


def _child_versions() -> dict:
    from runtime.versions import versions

    return versions("keras", "torch", "torchvision", "timm")


def measure_peer_isolated(peer: str, model: str, *, timeout: float = 3600, **kwargs) -> dict:
    """``measure_peer`` in a fresh Python process (same interpreter and environment); the
    row comes back with the child's framework ``versions``. A child that fails gives a row
    whose ``note`` says how, never an error."""
    check_peer(peer)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    payload = json.dumps({"peer": peer, "model": model, "kwargs": kwargs})
    try:
        proc = subprocess.run([sys.executable, "-c", _CHILD.format(mark=_MARK)], input=payload,
                              capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return _failed_row(peer, model, kwargs, f"peer process ran past {timeout:g} s")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_MARK):
            return json.loads(line[len(_MARK):])
    tail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
    return _failed_row(peer, model, kwargs, f"peer process failed: {tail[:200]}")


def _failed_row(peer: str, model: str, kwargs: dict, note: str) -> dict:
    from bench.speed.timing import new_row

    row = new_row(model, peer, kwargs.get("precision", "fp32"), kwargs.get("image_size"),
                  kwargs.get("batch_size"))
    row["note"] = note
    return row
