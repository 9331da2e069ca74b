"""Shared by the ``bench serve`` tests: one tiny exported zoo per pytest session (built once
even under pytest-xdist, behind a file lock), a real uvicorn server on a free loopback port
in a thread, and the hostile files."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import struct
import threading
import time
import zlib
from pathlib import Path

from helpers import write_image_folder

# One scratch CNN, one epoch, 32 px, two classes: the cheapest zoo that exports a predictor.
ONE_CNN = {"name": "serve-test", "scratch": (("benchmark_cnn", (), "none"),), "backbones": (),
           "keras": False, "scratch_size": (32, 32), "feature_size": 64, "finetune_size": 64,
           "scratch_epochs": (1, 1), "finetune_epochs": None, "head_cv": 2, "head_cs": 2}


def shared_zoo(tmp_path_factory) -> tuple[Path, Path]:
    """(image folder, zoo OUT) built once per session: xdist workers share the parent of
    their temporary folders, and the lock makes the others wait for the first."""
    from bench.suites.zoo import run_zoo

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    root = base / "serve-zoo"
    root.mkdir(exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        out = root / "out"
        if not (out / "best" / "predictor.json").exists():
            write_image_folder(root / "data", n_per_class=12, size=32, num_classes=2)
            run_zoo(out=out, quiet=True, cache_dir=str(root / "cache"),
                    dataset=str(root / "data"), time_budget="10m", preset=ONE_CNN)
    return root / "data", out


def images(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.png"))


@contextlib.contextmanager
def running_server(app, timeout: float = 60.0):
    """A real uvicorn server for ``app`` on 127.0.0.1:<free port>, in a thread, healthy
    before this yields its base URL; stopped (gracefully) on exit."""
    import httpx2 as httpx
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", lifespan="on",
                            timeout_graceful_shutdown=8)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(base + "/health", timeout=5).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or not thread.is_alive():
            server.should_exit = True
            raise RuntimeError(f"server at {base} not healthy within {timeout} s")
        time.sleep(0.05)
    try:
        yield base, server, thread
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (and whose pixels are not there)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
