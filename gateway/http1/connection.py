"""One upstream connection: writes requests, parses answers in llhttp's callbacks, bounds their heads."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

import httptools
from multidict import CIMultiDict

from gateway.http1.errors import Disconnected, HTTPError, ProtocolError, Stale
from gateway.http1.response import Response

if TYPE_CHECKING:
    from gateway.http1.pool import Pool

MAX_HEAD_BYTES = 64 * 1024  # status line and headers of one answer, or its trailers
MAX_HEADERS = 256


class Connection(asyncio.Protocol):
    """One upstream connection: writes requests, parses answers, hands their bodies to the Response."""

    def __init__(self, pool: Pool, origin: tuple[str, str, int]) -> None:
        self.pool, self.origin = pool, origin
        # Made on the loop it serves (by `Pool`), it keeps it: on Python 3.11 every `get_running_loop()` is a
        # getpid() system call, and a request would make one.
        self._loop = asyncio.get_running_loop()
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.response: Response | None = None
        self.ready: asyncio.Future[Response] | None = None  # the caller waiting for an answer's headers
        self.reused = False  # a request went out on it before: its peer may have closed it meanwhile
        self.idle_since = 0.0
        self._paused = False
        self._head_bytes = 0
        self._status = b""
        self._headers: CIMultiDict[str] = CIMultiDict()
        self._until_close = False
        self._informational = False
        self._trailing = False  # past a chunk's size line, before its data: the last chunk's trailers

    # asyncio's side.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.ready is None and self.response is None:
            self.abort()  # bytes nobody asked for: the connection cannot be trusted with another request
            return
        if self.ready is not None or self._trailing:  # a head or trailers: the parser keeps them whole
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(ProtocolError("The upstream switched protocols."))
        except httptools.HttpParserError as exc:
            self._fail(_refusal(exc))
        else:  # checked once the packet is parsed: a large first packet may carry the body too
            if (self.ready is not None or self._trailing) and self._head_bytes > MAX_HEAD_BYTES:
                self._fail(ProtocolError(f"The answer's headers exceed {MAX_HEAD_BYTES} bytes."))

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.forget(self)
        self.transport = None
        if self.ready is not None and not self.ready.done():
            stale = self.reused and self._head_bytes == 0
            closed = Disconnected("The upstream closed the connection without answering.")
            self.ready.set_exception(Stale() if stale else closed)
        elif (response := self.response) is not None:
            self.response = None
            if self._until_close:
                response._end()  # an answer without a length ends when its connection does
            else:
                response._end(Disconnected("The upstream closed the connection mid-answer."))

    # The parser's side.

    def on_message_begin(self) -> None:
        if self.ready is None:  # a second answer to one request
            raise ProtocolError("The upstream sent an answer nobody asked for.")
        if self._headers:  # the last answer's trailers: never the next answer's headers
            self._headers = CIMultiDict()

    def on_status(self, status: bytes) -> None:
        self._status += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self._headers) >= MAX_HEADERS:
            raise ProtocolError(f"The answer has more than {MAX_HEADERS} headers.")
        self._headers.add(name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))

    def on_headers_complete(self) -> None:
        status, headers = self.parser.get_status_code(), self._headers
        reason = self._status.decode("latin-1")
        self._headers, self._status = CIMultiDict(), b""
        if 100 <= status < 200:  # an interim answer (100 Continue, 103 Early Hints): the real one follows
            self._informational = True
            return
        # Chunked framing only when chunked is the last coding; any other Transfer-Encoding runs to the close.
        codings = headers.get("Transfer-Encoding")
        chunked = codings is not None and codings.lower().rstrip(" \t,").endswith("chunked")
        framed = chunked or (codings is None and "Content-Length" in headers)
        self._until_close = not framed and status not in (204, 304)
        self.response = Response(self, status, reason, headers)
        if self.ready is not None and not self.ready.done():
            self.ready.set_result(self.response)
        self.ready = None

    def on_chunk_header(self) -> None:
        self._trailing, self._head_bytes = True, 0

    def on_body(self, body: bytes) -> None:
        self._trailing = False
        if self.response is not None:
            self.response._feed(body)

    def on_message_complete(self) -> None:
        self._trailing = False
        if self._informational:
            self._informational = False
            return
        response, self.response = self.response, None
        keep = self.parser.should_keep_alive()
        if response is not None:
            response._end()
        if keep and self.transport is not None and not self.transport.is_closing():
            self.resume()
            self.pool.put(self)
        else:
            self.abort()

    # The pool's side.

    def send(self, data: bytes) -> asyncio.Future[Response]:
        assert self.transport is not None
        self.ready = self._loop.create_future()
        self._head_bytes = 0
        self.transport.write(data)
        return self.ready

    def pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()  # connection_lost follows, which fails whatever still waits

    def _fail(self, exc: HTTPError) -> None:
        if self.ready is not None and not self.ready.done():
            self.ready.set_exception(exc)
        elif self.response is not None:
            self.response._end(exc)
            self.response = None
        self.abort()


def _refusal(exc: httptools.HttpParserError) -> ProtocolError:
    """The parser's error as the client's: a callback's own refusal (too many headers) comes wrapped in it."""
    cause = exc.__context__
    return (
        cause
        if isinstance(cause, ProtocolError)
        else ProtocolError(f"The upstream's answer is not valid HTTP/1.1: {exc}.")
    )
