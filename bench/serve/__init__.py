"""``bench serve``: an exported predictor behind an upload page and a JSON API.

Endpoints: ``GET /`` (the self-contained upload page), ``GET /health`` (200 once every batch
shape is compiled, 503 before), ``GET /model`` (name, kind, classes, input size, leaderboard
metrics) and ``POST /predict`` (multipart parts named ``file``, or one raw ``image/*`` body)
answering ``{"predictions": [{"filename", "class", "probabilities"}, ...], "skipped": [...]}``
in the order sent, with ``bench predict``'s decoding and numbers. Concurrent requests are
micro-batched (``batcher``); bodies are read as they stream in, in memory, within limits
(``uploads``). See docs/serve.md.

>>> from bench.serve import create_app                          # doctest: +SKIP
>>> app = create_app(bench.load_predictor("results/zoo"))       # an ASGI app  # doctest: +SKIP
"""

from __future__ import annotations


def create_app(predictor, **limits):
    """The Starlette app serving ``predictor``; see :func:`bench.serve.app.create_app`."""
    from .app import create_app as make

    return make(predictor, **limits)
