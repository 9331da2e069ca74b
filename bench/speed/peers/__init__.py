"""Peer frameworks timed on the same architecture, batch, input size and precision as ours.

``bench speed --vs keras,torch`` calls ``measure_peer``; each peer module has
``measure(model, *, batch_size, image_size, precision, warmup, repeats, train, infer,
num_classes, torch_compile) -> row`` returning ``bench.speed.ROW_KEYS`` with the same warm-up
and median method (``bench.speed.time_calls``). The peer modules are imported only here, on
request: neither Keras nor PyTorch is needed by the package. A missing framework or an
architecture it has no equivalent of gives a row whose ``note`` says so, never an error.
"""

from __future__ import annotations

PEERS = ("keras", "torch")


def measure_peer(peer: str, model: str, **kwargs) -> dict:
    """Time ``model`` in framework ``peer`` (one of ``PEERS``); see the module docstring."""
    if peer == "keras":
        from . import keras_peer as module
    elif peer == "torch":
        from . import torch_peer as module
    else:
        raise ValueError(f"peer {peer!r}: not one of {', '.join(PEERS)}")
    return module.measure(model, **kwargs)
