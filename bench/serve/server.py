"""``bench serve``: load the predictor once, bind the socket, run uvicorn until Ctrl-C or
SIGTERM (requests in flight are answered first, for at most ``GRACE_SECONDS``)."""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import sys

GRACE_SECONDS = 8          # SIGTERM -> exit within 10 s even with a request stuck
MAX_CONNECTIONS = 128      # uvicorn answers 503 beyond this many open connections
TOKEN_ENV = "BENCH_SERVE_TOKEN"


def resolve_token(flag: str | None) -> str | None:
    """``--token``, else ``$BENCH_SERVE_TOKEN``, else None (no authentication)."""
    return flag or os.environ.get(TOKEN_ENV) or None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on ``host:port`` (port 0: any free port); a one-line
    ValueError naming the flags when the address is unknown or taken."""
    if not 0 <= port <= 65535:
        raise ValueError(f"--port {port}: expected 0..65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ValueError(f"--host {host!r}: {e.strerror}") from None
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise ValueError(f"--host {host} --port {port}: cannot listen there "
                         f"({e.strerror})") from None
    return sock


def url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


def warn_exposed(host: str, port: int, token: str | None) -> None:
    """The warning printed when the server listens beyond this machine."""
    who = ("anyone who can reach this machine" if host in ("0.0.0.0", "::", "")
           else f"anyone who can reach {host}")
    print(f"bench serve: warning: --host {host}: {who} on port {port} can use the model"
          + ("" if token else "; no --token (or $" + TOKEN_ENV + ") is set, so /predict and "
             "/model are open to them") + ". Use --host 127.0.0.1 to keep it local.",
          file=sys.stderr, flush=True)


def config(app, args):
    """The uvicorn configuration ``bench serve`` runs with."""
    import uvicorn

    return uvicorn.Config(app, log_level="info" if args.access_log else "warning",
                          access_log=args.access_log,
                          limit_concurrency=MAX_CONNECTIONS,
                          timeout_graceful_shutdown=GRACE_SECONDS, lifespan="on")


def _stop(signum, frame):
    raise KeyboardInterrupt


def cmd_serve(args) -> int:
    """Run ``bench serve`` (flags from ``bench.cli._serve_parser``)."""
    import uvicorn

    from ..predict import load_predictor, resolve
    from .app import check_limits, create_app

    token = resolve_token(args.token)
    check_limits(args.max_batch, args.max_wait_ms, args.max_upload_mb, args.max_files,
                 args.max_queue)
    sock = bind(args.host, args.port)   # flags and the address fail before the model loads
    try:
        predictor = load_predictor(resolve(args.from_, args.model))
    except BaseException:
        sock.close()
        raise
    app = create_app(predictor, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                     max_upload_mb=args.max_upload_mb, max_files=args.max_files,
                     max_queue=args.max_queue, token=token)
    svc = app.state.service
    address = url(sock)
    svc.on_ready = lambda secs: print(
        f"bench serve: ready at {address} ({sum(secs.values()):.1f} s to compile batch "
        f"shapes {', '.join(map(str, secs))}); Ctrl-C or SIGTERM stops it", flush=True)
    failed: list[str] = []

    def stop_on_failure(reason: str) -> None:
        failed.append(reason)
        print(f"bench serve: error: warm-up failed: {reason}", file=sys.stderr, flush=True)
        server.should_exit = True

    svc.on_failed = stop_on_failure
    if not is_loopback(args.host):
        warn_exposed(args.host, sock.getsockname()[1], token)
    print(f"bench serve: {predictor.name} ({predictor.meta.get('kind') or predictor.meta['type']},"
          f" {len(predictor.classes_)} classes) at {address}: warming up"
          + (" (Bearer token required on /predict and /model)" if token else ""), flush=True)
    server = uvicorn.Server(config(app, args))
    # uvicorn stops gracefully on SIGINT/SIGTERM, then re-raises the signal to the handler
    # it found: make SIGTERM's, like Ctrl-C's, end here with exit 0 after that.
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
    print("bench serve: stopped", flush=True)
    return 1 if failed else 0
