"""The protocol edge: what answers before the app can, and the `Server` header every answer carries.

aiohttp's HTTP parser rejects malformed requests before any middleware runs; by default it answers in plain
text quoting the offending bytes, and logs a traceback holding them too. `EdgeHandler` answers in OpenAI's
error shape with a fixed message instead, and logs such requests at debug level only: a public endpoint
receives them all the time. A body in a Content-Encoding aiohttp passes through undecoded is refused here
too, before the app could take it for plain bytes. `EdgeRunner` serves an app through all of this, holding at
most as many client connections as `Connections` allows.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import hdrs, web
from aiohttp.http_exceptions import ContentEncodingError, HttpProcessingError, LineTooLong

from gateway.connections import Connections
from gateway.errors import error_body
from gateway.ids import request_id

SERVER_NAME = "open-llm-proxy"  # no versions: they only help someone matching a target to an exploit
# aiohttp decodes a body in exactly one of these, or refuses it in the parser when the codec is missing.
DECODED_CODINGS = frozenset({"gzip", "deflate", "br", "zstd"})

RequestHandlerFn = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class EdgeError:
    """A fixed answer: nothing in it comes from the request."""

    status: int
    message: str
    type: str
    code: str

    def response(self) -> web.Response:
        """The answer, closing the connection: after a framing error the next request cannot be trusted."""
        body = orjson.dumps(error_body(self.message, self.type, code=self.code))
        # Every answer names itself, even one no handler saw: the id is what an operator asks a user for.
        headers = {hdrs.SERVER: SERVER_NAME, hdrs.CONNECTION: "close", "X-Request-Id": request_id()}
        response = web.Response(
            status=self.status, body=body, content_type="application/json", headers=headers
        )
        response.force_close()
        return response


UNPARSABLE = EdgeError(
    400, "The request could not be parsed as HTTP.", "invalid_request_error", "bad_request"
)
HEADERS_TOO_LARGE = EdgeError(
    431,
    "The request line or a header field is longer than this gateway accepts.",
    "invalid_request_error",
    "request_header_fields_too_large",
)
UNSUPPORTED_ENCODING = EdgeError(
    415,
    "The request body's Content-Encoding is not supported; send it uncompressed, gzip or deflate.",
    "invalid_request_error",
    "unsupported_content_encoding",
)
TIMED_OUT = EdgeError(504, "The gateway timed out handling the request.", "server_error", "timeout")
INTERNAL = EdgeError(500, "The gateway failed internally.", "server_error", "internal_error")


def edge_error(status: int, exc: BaseException | None) -> EdgeError:
    """The fixed answer for an error aiohttp reports with `status` and `exc`."""
    if isinstance(exc, ContentEncodingError):
        return UNSUPPORTED_ENCODING
    if isinstance(exc, LineTooLong):
        return HEADERS_TOO_LARGE
    if status == 504:
        return TIMED_OUT
    return INTERNAL if status >= 500 else UNPARSABLE


class EdgeHandler(web.RequestHandler):
    """aiohttp's connection handler, answering its own errors in OpenAI's shape."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Answer an error raised outside the app (unparsable request, escaped exception) with fixed JSON."""
        error = edge_error(status, exc)
        if error is INTERNAL:
            self.log_exception("error handling a request from %s", request.remote, exc_info=exc)
        else:
            # The exception's text quotes the client's bytes: only its class is worth a (debug) line.
            self.logger.debug("refused a request from %s: %s", request.remote, type(exc).__name__)
        if request.writer.output_size > 0:
            raise ConnectionError("the response has begun; no error answer can follow it")
        return error.response()

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """Log as aiohttp does, except a malformed body met again when draining it after the answer."""
        exc = kw.get("exc_info")
        if isinstance(exc, web.RequestPayloadError | HttpProcessingError):
            # The app has answered it already; aiohttp would call it an unhandled exception, loudly.
            self.logger.debug("dropped the rest of a malformed request body: %s", type(exc).__name__)
            return
        super().log_exception(*args, **kw)


def decodable(request: web.BaseRequest) -> bool:
    """Whether the body has no Content-Encoding, or one aiohttp has decoded."""
    values = request.headers.getall(hdrs.CONTENT_ENCODING, [])
    if all(c.strip().lower() in ("", "identity") for value in values for c in value.split(",")):
        return True
    # Mirrors aiohttp's own test: it decodes only a single coding, matched whole.
    return len(values) == 1 and values[0].lower() in DECODED_CODINGS


async def stamp_server(request: web.Request, response: web.StreamResponse) -> None:
    """Name the server without versions (aiohttp only fills `Server` in when it is unset)."""
    response.headers[hdrs.SERVER] = SERVER_NAME


class LinesStreamResponse(web.StreamResponse):
    """A response whose head also carries `head_lines`: header lines the gateway rendered whole.

    A call's six `x-ratelimit-*` headers are lines of its key's plan with two numbers filled in
    (`gateway.limits.plan.Plan.lines`). Handed to aiohttp as headers, each would be kept in the response's
    case-insensitive map, then serialized a character at a time, every character checked: 17k instructions
    a call, two fifths of what enforcing limits cost then (as lines, 7.9k). Nothing in them is a client's
    (names, numbers, durations), so they are written into the head as they are: after the headers aiohttp
    serialized, before the blank line that ends them, while aiohttp holds the head for the body's first
    write (in `StreamWriter._headers_buf`). An aiohttp that keeps its head elsewhere gets them as ordinary
    headers. The head waits for the first write, or for `StreamWriter.send_headers()`.
    """

    _send_headers_immediately = False  # the lines go in first
    head_lines = b""  # set on the response made (an __init__ of its own would cost more than the lines save)

    async def _write_headers(self) -> None:
        lines, writer = self.head_lines, self._payload_writer
        if not lines:
            await super()._write_headers()
        elif not hasattr(writer, "_headers_buf"):
            self.headers.extend(parse_head_lines(lines))
            await super()._write_headers()
        else:
            await super()._write_headers()
            head: bytes = writer._headers_buf  # type: ignore[union-attr]
            writer._headers_buf = head[:-2] + lines + b"\r\n"  # type: ignore[union-attr]


class LinesResponse(LinesStreamResponse, web.Response):
    """A whole answer whose head also carries `head_lines`."""


def parse_head_lines(lines: bytes) -> list[tuple[str, str]]:
    """`head_lines` as (name, value) pairs."""
    pairs = (line.partition(": ") for line in lines.decode("ascii").split("\r\n") if line)
    return [(name, value) for name, _, value in pairs]


class EdgeServer(web.Server):
    """aiohttp's low-level server, with `EdgeHandler` for each connection and `clients` counting them.

    A body aiohttp passed through still encoded is refused here, before the app could take it for plain bytes.
    """

    def __init__(self, handler: RequestHandlerFn, *, connections: Connections, **kwargs: Any) -> None:
        super().__init__(self._serve, **kwargs)
        self._app_handler = handler
        self.clients = connections

    def __call__(self) -> EdgeHandler:
        return EdgeHandler(self, loop=self._loop, **self._kwargs)

    def connection_made(self, handler: web.RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        self.clients.opened(handler)

    def connection_lost(self, handler: web.RequestHandler, exc: BaseException | None = None) -> None:
        super().connection_lost(handler, exc)
        self.clients.lost(handler)

    async def _serve(self, request: web.BaseRequest) -> web.StreamResponse:
        """The app's answer; its connection is busy until the handler returns it (`Connections` waits for
        it to leave the write buffer too)."""
        protocol = request.protocol
        idle = self.clients.busy(protocol)
        try:
            if request.body_exists and not decodable(request):
                return UNSUPPORTED_ENCODING.response()
            return await self._app_handler(request)
        finally:
            if protocol.transport is not None:  # idle again, unless it was lost meanwhile
                idle[protocol] = None


class EdgeRunner(web.AppRunner):
    """An AppRunner serving through `EdgeServer`; no answer, the app's or the edge's, names versions."""

    def __init__(self, app: web.Application, *, connections: Connections, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.connections = connections
        app.on_response_prepare.append(stamp_server)

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        # The Application builds a plain Server (and starts the app); rebuild it as ours, same settings.
        return EdgeServer(
            plain.request_handler,
            connections=self.connections,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            **plain._kwargs,
        )
