"""Request bodies read as they stream in, in memory only: multipart parts named ``file``
(python-multipart's streaming parser) or one raw image body. Every limit is checked before
the bytes past it are kept: ``--max-upload-mb`` per request, ``--max-files`` per request and
a byte budget over all requests being read at once."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header

FIELD = b"file"            # the multipart part name that carries an image
NAME_CHARS = 200           # longest file name echoed back
HEADER_BYTES = 16384       # longest part header line kept

# The parser logs each parse error before raising it; the client is told why, so our
# parsers log nowhere (their own logger, not the library's, is silenced).
_QUIET = logging.getLogger("bench.serve.multipart")
_QUIET.propagate = False
_QUIET.addHandler(logging.NullHandler())


class UploadError(Exception):
    """A request refused before decoding: an HTTP status and the reason (and Retry-After)."""

    def __init__(self, status: int, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


@dataclass
class Upload:
    """One uploaded image: the name the client gave it and its bytes."""
    filename: str
    data: bytes


class Budget:
    """Bytes held by requests being read, over all of them: past ``limit`` a request gets 503
    (memory stays bounded however many clients upload at once). Event-loop thread only."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> None:
        if self.used + n > self.limit:
            raise UploadError(503, f"server busy: {self.used:,} bytes of uploads being read "
                              f"(budget {self.limit:,}); retry shortly", retry_after=1)
        self.used += n

    def give(self, n: int) -> None:
        self.used -= n


class _Parts:
    """python-multipart callbacks that keep the parts named ``file`` in memory."""

    def __init__(self, max_files: int):
        self.max_files = max_files
        self.files: list[tuple[str, io.BytesIO]] = []
        self.other = 0              # parts with another name: read past, not kept
        self.ended = False
        self._headers: dict[bytes, bytes] = {}
        self._name, self._value = b"", b""
        self._buf: io.BytesIO | None = None

    def callbacks(self) -> dict:
        return {"on_part_begin": self.on_part_begin, "on_part_data": self.on_part_data,
                "on_header_field": self.on_header_field, "on_header_value": self.on_header_value,
                "on_header_end": self.on_header_end,
                "on_headers_finished": self.on_headers_finished, "on_end": self.on_end}

    def on_part_begin(self) -> None:
        self._headers, self._buf = {}, None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]
        self._check_header()

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]
        self._check_header()

    def _check_header(self) -> None:
        if len(self._name) + len(self._value) > HEADER_BYTES:
            raise UploadError(400, f"broken multipart: a part header over {HEADER_BYTES:,} "
                              f"bytes")

    def on_header_end(self) -> None:
        self._headers[self._name.lower()] = self._value
        self._name, self._value = b"", b""

    def on_headers_finished(self) -> None:
        disposition = self._headers.get(b"content-disposition")
        _, opts = parse_options_header(disposition)
        if disposition is None or b"name" not in opts:
            raise UploadError(400, "broken multipart: a part without a Content-Disposition "
                              "name")
        if opts[b"name"] != FIELD:
            self.other += 1
            return
        if len(self.files) >= self.max_files:
            raise UploadError(413, f"too many files: more than --max-files {self.max_files} "
                              f"in one request")
        name = opts.get(b"filename", b"").decode("utf-8", "replace")[:NAME_CHARS]
        self._buf = io.BytesIO()
        self.files.append((name or f"file {len(self.files) + 1}", self._buf))

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._buf is not None:
            self._buf.write(data[start:end])

    def on_end(self) -> None:
        self.ended = True


class BodyReader:
    """Reads one request's body chunk by chunk, counting against the per-request limit and
    the shared budget; ``release()`` hands the budget back when the request is done."""

    def __init__(self, request, max_bytes: int, max_files: int, budget: Budget):
        self.request = request
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.budget = budget
        self.read = 0

    def release(self) -> None:
        self.budget.give(self.read)
        self.read = 0

    async def chunks(self):
        """The body's chunks; UploadError 413 as soon as it passes ``max_bytes``."""
        async for chunk in self.request.stream():
            if not chunk:
                continue
            if self.read + len(chunk) > self.max_bytes:
                raise UploadError(413, f"body over the limit of {self.max_bytes:,} bytes "
                                  f"(--max-upload-mb); refused after "
                                  f"{self.read + len(chunk):,} bytes")
            self.budget.take(len(chunk))
            self.read += len(chunk)
            yield chunk

    async def uploads(self) -> list[Upload]:
        """The images in the body, in the order sent (multipart or one raw image body)."""
        headers = self.request.headers
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            raise UploadError(413, f"body of {int(length):,} bytes (Content-Length) is over "
                              f"the limit of {self.max_bytes:,} bytes (--max-upload-mb)")
        kind, params = parse_options_header(headers.get("content-type", ""))
        if kind == b"multipart/form-data":
            return await self._multipart(params)
        if kind.startswith(b"image/") or kind == b"application/octet-stream":
            buf = io.BytesIO()
            async for chunk in self.chunks():
                buf.write(chunk)
            if not self.read:
                raise UploadError(400, "empty body: send an image, or multipart parts named "
                                  "'file'")
            name = self.request.query_params.get("filename", "")[:NAME_CHARS] or "body"
            return [Upload(name, buf.getvalue())]
        raise UploadError(415, f"Content-Type {kind.decode('latin-1')[:80] or '(none)'!r}: "
                          f"expected multipart/form-data with parts named 'file', or image/* "
                          f"(or application/octet-stream) for a raw image body")

    async def _multipart(self, params: dict) -> list[Upload]:
        boundary = params.get(b"boundary")
        if not boundary:
            raise UploadError(400, "broken multipart: no boundary in the Content-Type header")
        parts = _Parts(self.max_files)
        try:
            parser = MultipartParser(boundary, parts.callbacks())
            parser.logger = _QUIET
            async for chunk in self.chunks():
                parser.write(chunk)
            parser.finalize()
        except FormParserError as e:
            raise UploadError(400, f"broken multipart: {e}") from None
        if not self.read:
            raise UploadError(400, "empty body: send multipart parts named 'file'")
        if not parts.ended:
            raise UploadError(400, "broken multipart: the body ends before the closing "
                              "boundary")
        if not parts.files:
            raise UploadError(400, f"no part named 'file' ({parts.other} other part(s)): send "
                              f"each image as -F file=@IMAGE")
        return [Upload(name, buf.getvalue()) for name, buf in parts.files]
