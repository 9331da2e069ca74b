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

``bench speed`` times each peer in a process of its own: two frameworks in one process share
the OpenMP runtime and thread pools, and on the 2-core CPU PyTorch's eager ResNet-20 step ran
1.6x slower once our oneDNN convolutions had run beside it. The child inherits the
environment (``LD_PRELOAD``, so the same allocator). ``PeerTurns`` runs the peers' processes
beside ours, taking turns call by call (each peer's call, then ours; no two at once), so that
the load of a shared machine falls on both sides of a ratio alike; ``measure_peer_isolated``
runs one peer alone, after ours.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import tempfile

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
import contextlib, json, sys
from bench.speed import timing
from bench.speed.peers import measure_peer, _child_versions, ChildTurns
a = json.loads(sys.stdin.read())
turns = ChildTurns(a["go"], a["done"]) if "go" in a else None
with timing.taking_turns(turns) if turns else contextlib.nullcontext():
    row = measure_peer(a["peer"], a["model"], **a["kwargs"])
row["versions"] = _child_versions()
print("\\n" + {mark!r} + json.dumps(row), flush=True)
if turns:
    turns.bye()
"""


def _child_env() -> dict:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _row_from_output(peer: str, model: str, kwargs: dict, stdout: str, stderr: str,
                     returncode: int | None) -> dict:
    for line in reversed(stdout.splitlines()):
        if line.startswith(_MARK):
            return json.loads(line[len(_MARK):])
    tail = (stderr.strip().splitlines() or [f"exit status {returncode}"])[-1]
    return _failed_row(peer, model, kwargs, f"peer process failed: {tail[:200]}")


class ChildTurns:
    """A peer process's side of ``PeerTurns``: it waits for its first turn before it
    imports its framework, and keeps the turn from a call until just before its next one,
    so that everything it does between calls happens in its own turn."""

    def __init__(self, go_fd: int, done_fd: int):
        self.go, self.done = go_fd, done_fd
        self._wait()
        self._fresh = True

    def _wait(self) -> None:
        if os.read(self.go, 1) != b"g":
            raise SystemExit(0)  # the parent has gone

    @contextlib.contextmanager
    def turn(self):
        if not self._fresh:
            os.write(self.done, b"d")
            self._wait()
        self._fresh = False
        yield

    def bye(self) -> None:
        """Done (the row is written): hand the turn back for good, then wait for the parent
        to close the pipe, so that this process's exit does not overlap a timed call."""
        os.write(self.done, b"b")
        while os.read(self.go, 64):
            pass


class _Child:
    def __init__(self, peer: str, model: str, kwargs: dict, timeout: float,
                 script: str = _CHILD):
        self.peer, self.model, self.kwargs, self.timeout = peer, model, kwargs, timeout
        go_r, self.go_w = os.pipe()
        self.done_r, done_w = os.pipe()
        self.out = tempfile.TemporaryFile(mode="w+")
        self.err = tempfile.TemporaryFile(mode="w+")
        payload = json.dumps({"peer": peer, "model": model, "kwargs": kwargs,
                              "go": go_r, "done": done_w})
        self.proc = subprocess.Popen([sys.executable, "-c", script.format(mark=_MARK)],
                                     stdin=subprocess.PIPE, stdout=self.out, stderr=self.err,
                                     text=True, env=_child_env(), pass_fds=(go_r, done_w))
        os.close(go_r)
        os.close(done_w)
        self.active, self.note = True, None
        try:
            self.proc.stdin.write(payload)
            self.proc.stdin.close()
        except OSError:  # the child has exited already; row() says how
            self.active = False

    def go(self) -> None:
        """One turn: the child runs until it next waits (a ``d``), or finishes (``b`` or the
        pipe closing)."""
        try:
            os.write(self.go_w, b"g")
        except OSError:  # the child has exited
            self.active = False
            return
        ready, _, _ = select.select([self.done_r], [], [], self.timeout)
        reply = os.read(self.done_r, 1) if ready else None
        if reply is None:
            self.proc.kill()
            self.note = f"peer process ran past {self.timeout:g} s"
        if reply != b"d":
            self.active = False

    def row(self) -> dict:
        os.close(self.go_w)  # lets a finished child exit
        os.close(self.done_r)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        with self.out, self.err:
            if self.note:
                return _failed_row(self.peer, self.model, self.kwargs, self.note)
            self.out.seek(0)
            self.err.seek(0)
            return _row_from_output(self.peer, self.model, self.kwargs, self.out.read(),
                                    self.err.read(), self.proc.returncode)


class PeerTurns:
    """Peers timed in processes of their own beside ours, taking turns call by call.

    ``PeerTurns(peers, model, timeout=..., **kwargs)`` starts one process per peer (each
    waits for its first turn); inside ``bench.speed.timing.taking_turns(turns)`` every call
    ``time_calls`` makes is preceded by one turn of each peer still timing (its next call, and
    whatever it does before that), so no two steps ever run at once and a minute of load
    from elsewhere falls on both sides. ``finish()`` gives the remaining turns and returns
    the peers' rows, in order (a failed child as a row whose ``note`` says how)."""

    def __init__(self, peers: list[str], model: str, *, timeout: float = 3600,
                 _script: str = _CHILD, **kwargs):
        if _script is _CHILD:
            for peer in peers:
                check_peer(peer)
        self.children = [_Child(peer, model, kwargs, timeout, _script) for peer in peers]

    def _others(self) -> None:
        for child in self.children:
            if child.active:
                child.go()

    @contextlib.contextmanager
    def turn(self):
        self._others()
        yield

    def finish(self) -> list[dict]:
        while any(c.active for c in self.children):
            self._others()
        return [c.row() for c in self.children]

    def close(self) -> None:
        """Stop every peer process (ours failed)."""
        for child in self.children:
            child.proc.kill()
            child.active = False
            child.row()


def _child_versions() -> dict:
    from runtime.versions import versions

    return versions("keras", "torch", "torchvision", "timm")


def measure_peer_isolated(peer: str, model: str, *, timeout: float = 3600, **kwargs) -> dict:
    """``measure_peer`` in a fresh Python process (same interpreter and environment); the
    row comes back with the child's framework ``versions``. A child that fails gives a row
    whose ``note`` says how, never an error."""
    check_peer(peer)
    payload = json.dumps({"peer": peer, "model": model, "kwargs": kwargs})
    try:
        proc = subprocess.run([sys.executable, "-c", _CHILD.format(mark=_MARK)], input=payload,
                              capture_output=True, text=True, env=_child_env(),
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return _failed_row(peer, model, kwargs, f"peer process ran past {timeout:g} s")
    return _row_from_output(peer, model, kwargs, proc.stdout, proc.stderr, proc.returncode)


def _failed_row(peer: str, model: str, kwargs: dict, note: str) -> dict:
    from bench.speed.timing import new_row

    row = new_row(model, peer, kwargs.get("precision", "fp32"), kwargs.get("image_size"),
                  kwargs.get("batch_size"))
    row["note"] = note
    return row
