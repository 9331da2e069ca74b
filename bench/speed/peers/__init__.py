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
"""

from __future__ import annotations

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
