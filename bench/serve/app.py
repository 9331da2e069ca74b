"""The Starlette application: the upload page, ``/health``, ``/model`` and ``/predict``.

Every refusal is JSON ``{"error": ...}`` with a 4xx status (503 + ``Retry-After`` when busy
or warming up); an unexpected failure is a one-line JSON 500, never a traceback."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import os
from concurrent.futures import ThreadPoolExecutor
from importlib import resources

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from .batcher import MicroBatcher, QueueFull
from .uploads import BodyReader, Budget, UploadError

# The page loads nothing from elsewhere; the browser is told so too.
CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
       "img-src blob: data:; connect-src 'self'; base-uri 'none'; form-action 'none'")


def check_limits(max_batch: int, max_wait_ms: float, max_upload_mb: float, max_files: int,
                 max_queue: int) -> None:
    """One-line ValueErrors naming the flag, before anything is loaded."""
    if max_batch < 1:
        raise ValueError(f"--max-batch {max_batch}: expected a positive integer")
    if max_wait_ms < 0:
        raise ValueError(f"--max-wait-ms {max_wait_ms}: expected a number >= 0")
    if not max_upload_mb > 0:
        raise ValueError(f"--max-upload-mb {max_upload_mb}: expected a positive number")
    if max_files < 1:
        raise ValueError(f"--max-files {max_files}: expected a positive integer")
    if max_queue < max(max_batch, max_files):
        raise ValueError(f"--max-queue {max_queue}: expected at least --max-batch "
                         f"({max_batch}) and --max-files ({max_files})")


def error(status: int, message: str, retry_after: int | None = None, **extra) -> JSONResponse:
    """``{"error": message, ...}`` with ``status`` (and ``Retry-After`` seconds)."""
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


class Service:
    """What the endpoints share: the predictor, its batcher, the limits, readiness."""

    def __init__(self, predictor, *, max_batch: int = 16, max_wait_ms: float = 5.0,
                 max_upload_mb: float = 32.0, max_files: int = 32, max_queue: int = 256,
                 token: str | None = None, decode_threads: int | None = None):
        check_limits(max_batch, max_wait_ms, max_upload_mb, max_files, max_queue)
        self.predictor = predictor
        self.arriving = 0           # requests being read or decoded (event-loop thread only)
        self.batcher = MicroBatcher(predictor, max_batch, max_wait_ms, max_queue,
                                    arriving=lambda: self.arriving)
        self.input_sizes = self.batcher.sizes
        self.max_bytes = int(max_upload_mb * 2**20)
        self.max_files = max_files
        self.budget = Budget(4 * self.max_bytes)
        self.token = token or None
        self.ready = False
        self.on_ready = None        # called with {batch shape: compile seconds} once warm
        self.on_failed = None       # called with the reason if the warm-up fails
        self.warm_error: str | None = None
        self.decoder = ThreadPoolExecutor(decode_threads or min(4, os.cpu_count() or 1),
                                          thread_name_prefix="decode")

    def model_info(self) -> dict:
        """``/model``: what the page and clients need to know about the predictor."""
        m = self.predictor.meta
        return {"name": self.predictor.name, "kind": m.get("kind"), "type": m.get("type"),
                "classes": [str(c) for c in self.predictor.classes_],
                "input_size": [list(s) for s in self.input_sizes],
                "leaderboard": m.get("leaderboard"), "dataset": m.get("dataset"),
                "max_batch": self.batcher.max_batch, "batch_shapes": self.batcher.shapes,
                "max_upload_mb": self.max_bytes / 2**20, "max_files": self.max_files,
                "auth": self.token is not None}

    def authorized(self, request: Request) -> bool:
        if self.token is None:
            return True
        got = request.headers.get("authorization", "")
        scheme, _, value = got.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(),
                                                                  self.token.encode())

    def decode_one(self, data: bytes):
        """(decoded images or None, why not): one file, in a decode thread."""
        from ..data.decode import _skip_reason

        try:
            return self.predictor.decode(data), None
        except Exception as e:  # whatever the bytes do to Pillow is this file's problem
            return None, _skip_reason(e).splitlines()[0][:300]

    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        """Start the batcher, compile every batch shape in the background, stop on exit."""
        self.batcher.start()
        warm = asyncio.get_running_loop().create_task(self._warm_up())
        try:
            yield
        finally:
            warm.cancel()
            await self.batcher.stop()
            self.decoder.shutdown(wait=True)

    async def _warm_up(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            secs = await loop.run_in_executor(self.batcher.pool, self.batcher.warm_up)
            self.ready = True
            if self.on_ready is not None:
                self.on_ready(secs)
        except Exception as e:  # reported by /health (and on_failed)
            self.warm_error = f"{type(e).__name__}: {e}".splitlines()[0]
            if self.on_failed is not None:
                self.on_failed(self.warm_error)


def _unauthorized() -> JSONResponse:
    r = error(401, "missing or wrong token: send 'Authorization: Bearer <token>' (the server "
              "was started with --token or $BENCH_SERVE_TOKEN)")
    r.headers["WWW-Authenticate"] = "Bearer"
    return r


@functools.lru_cache(maxsize=1)
def _page_html() -> str:
    return resources.files(__package__).joinpath("page.html").read_text("utf-8")


async def page(request: Request) -> Response:
    """``GET /``: the upload page."""
    return HTMLResponse(_page_html(), headers={"Content-Security-Policy": CSP,
                                               "X-Content-Type-Options": "nosniff"})


async def health(request: Request) -> Response:
    """``GET /health``: 200 once every batch shape is compiled, 503 before (or if it failed)."""
    svc: Service = request.app.state.service
    body = {"model": svc.predictor.name, "queued": svc.batcher.queued(),
            "compile_seconds": {str(k): round(v, 3)
                                for k, v in svc.batcher.compile_seconds.items()},
            **svc.batcher.stats.as_dict()}
    if svc.warm_error:
        return JSONResponse({"status": "failed", "error": svc.warm_error, **body}, 503)
    if not svc.ready:
        return JSONResponse({"status": "warming up", **body}, 503, {"Retry-After": "1"})
    return JSONResponse({"status": "ok", **body})


async def model(request: Request) -> Response:
    """``GET /model``: name, kind, classes, input size, leaderboard metrics, limits."""
    svc: Service = request.app.state.service
    if not svc.authorized(request):
        return _unauthorized()
    return JSONResponse(svc.model_info())


async def predict(request: Request) -> Response:
    """``POST /predict``: read, decode (threads), queue for the batcher, answer in order."""
    svc: Service = request.app.state.service
    if not svc.authorized(request):
        return _unauthorized()
    if not svc.ready:
        return error(503, "warming up: compiling the batch shapes; retry shortly", 1)
    reader = BodyReader(request, svc.max_bytes, svc.max_files, svc.budget)
    svc.arriving += 1
    try:
        uploads = await reader.uploads()
        loop = asyncio.get_running_loop()
        decoded = await asyncio.gather(*(loop.run_in_executor(svc.decoder, svc.decode_one,
                                                              u.data) for u in uploads))
    except UploadError as e:
        return error(e.status, str(e), e.retry_after)
    finally:
        svc.arriving -= 1
        reader.release()
    good = [(i, d) for i, (d, _) in enumerate(decoded) if d is not None]
    skipped = [{"index": i, "filename": uploads[i].filename, "error": why}
               for i, (_, why) in enumerate(decoded) if why is not None]
    if not good:
        names = "; ".join(f"{s['filename']}: {s['error']}" for s in skipped)
        return error(422, f"no readable image: {names}", skipped=skipped)
    try:
        proba = await svc.batcher.submit([d for _, d in good])
    except QueueFull as e:
        return error(503, f"server busy: {e}; retry shortly", 1)
    classes = [str(c) for c in svc.predictor.classes_]
    preds = [{"index": i, "filename": uploads[i].filename,
              "class": classes[int(np.argmax(p))],
              "probabilities": {c: float(v) for c, v in zip(classes, p)}}
             for (i, _), p in zip(good, proba)]
    return JSONResponse({"model": svc.predictor.name, "predictions": preds,
                         "skipped": skipped})


async def _http_error(request: Request, exc: HTTPException) -> Response:
    return error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")


async def _internal_error(request: Request, exc: Exception) -> Response:
    first = str(exc).splitlines()[0] if str(exc) else ""
    return error(500, f"internal error: {type(exc).__name__}: {first}")


def create_app(predictor, **limits) -> Starlette:
    """The ASGI app serving ``predictor`` (a ``bench.predict.Predictor``); ``limits`` are
    :class:`Service`'s keyword arguments (max_batch, max_wait_ms, max_upload_mb, ...)."""
    svc = Service(predictor, **limits)
    app = Starlette(
        routes=[Route("/", page), Route("/health", health), Route("/model", model),
                Route("/predict", predict, methods=["POST"])],
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
        lifespan=svc.lifespan)
    app.state.service = svc
    return app
