"""A lean HTTP/1.1 client for provider calls: a keep-alive pool of asyncio protocols parsed by llhttp.

aiohttp's client spends about four times the CPU of the rest of a proxied call's upstream leg on request
objects, tracing hooks, cookie handling and timers the gateway does not use. This client does what a
provider call needs and no more: one write per request, a response parsed in the protocol callbacks
(`httptools`, the llhttp parser Node.js uses), its body handed over as it arrives.

Every byte from an upstream is hostile until proven small: the header section is capped, a body is
buffered only up to a high-water mark before the socket stops being read, compressed bodies are inflated
a bounded piece at a time as they are consumed, and nothing is ever redirected (a 3xx is just a status).
Failures are `HTTPError`s; `gateway.upstream` maps them, with timeouts, onto the gateway's own errors.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

import aiohappyeyeballs
import httptools
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

MAX_HEAD_BYTES = 64 * 1024  # status line and headers of one answer
MAX_HEADERS = 256
HIGH_WATER = 256 * 1024  # body bytes buffered before the socket is paused
INFLATE_PIECE = 256 * 1024  # most bytes one read inflates from a compressed body
_INFLATED = frozenset({"gzip", "x-gzip", "deflate"})


class HTTPError(Exception):
    """The connection or the protocol failed; nothing is said about what the upstream did with the call."""


class ConnectFailed(HTTPError):
    """No connection could be made (refused, unresolvable, TLS handshake, connect timeout)."""


class ProtocolError(HTTPError):
    """The upstream's bytes are not a valid (or acceptably small) HTTP/1.1 answer."""


class Disconnected(HTTPError):
    """The upstream closed the connection before its answer was complete."""


class _Stale(Exception):
    """A kept-alive connection was closed by its peer before it read the request: send it on a new one."""


@dataclass(frozen=True, slots=True)
class _Target:
    origin: tuple[str, str, int]
    host: str
    port: int
    tls: bool
    start: str  # request line and Host header, up to the caller's headers


class Response:
    """One answer: its status and headers at once, its body as `readany()` hands it over."""

    __slots__ = (
        "_buffer",
        "_conn",
        "_exc",
        "_inflate",
        "_pending",
        "_size",
        "_waiter",
        "complete",
        "headers",
        "reason",
        "status",
    )

    def __init__(self, conn: _Connection, status: int, reason: str, headers: CIMultiDict[str]) -> None:
        self._conn: _Connection | None = conn
        self.status, self.reason, self.headers = status, reason, CIMultiDictProxy(headers)
        self._buffer: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.complete = False  # the whole body arrived (it may still be buffered here)
        encoding = headers.get("Content-Encoding", "").strip().lower()
        self._inflate = zlib.decompressobj(47) if encoding in _INFLATED else None  # 47: gzip or zlib header
        self._pending = b""  # compressed bytes not inflated yet

    @property
    def content_type(self) -> str:
        value = self.headers.get("Content-Type")
        return value.partition(";")[0].strip().lower() if value else "application/octet-stream"

    @property
    def closed(self) -> bool:
        """Whether the connection is done with this answer (whole, failed or closed)."""
        return self._conn is None

    def at_eof(self) -> bool:
        """Whether everything the body holds is already here and readable without waiting."""
        return self.complete and self._exc is None and self._inflate is None

    def read_nowait(self) -> bytes:
        """Everything buffered, at once (only for a plain body; `readany` inflates)."""
        data = b"".join(self._buffer)
        self._buffer.clear()
        self._size = 0
        return data

    async def readany(self) -> bytes:
        """The next bytes of the body; b"" at its end. Raises what `set_exception` set, or HTTPError."""
        while True:
            if self._exc is not None:
                raise self._exc
            if self._inflate is not None and (self._pending or self._buffer):
                if out := self._inflate_piece():
                    return out
                continue  # input that made no output yet (a gzip header): take more, or wait for it
            if self._buffer:
                data = self._buffer.popleft() if len(self._buffer) == 1 else b"".join(self._buffer)
                self._buffer.clear()
                self._drained()
                return data
            if self.complete:
                return self._finish_inflate()
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def set_exception(self, exc: BaseException) -> None:
        """Fail the body's pending and next reads with `exc` (a timeout watch uses it)."""
        if self._exc is None:
            self._exc = exc
            self._wake()

    def release(self) -> None:
        """Done with it: a whole answer leaves its connection to the pool, a partial one closes it."""
        if self._conn is not None and not self.complete:
            self.close()

    def close(self) -> None:
        """Abort the connection if the answer is still arriving: the upstream stops sending at once."""
        conn, self._conn = self._conn, None
        if conn is not None and not self.complete:
            conn.abort()
        self._buffer.clear()
        self._size = 0

    # The connection's side.

    def _feed(self, data: bytes) -> None:
        self._buffer.append(data)
        self._size += len(data)
        if self._size > HIGH_WATER and self._conn is not None:
            self._conn.pause()
        self._wake()

    def _end(self, exc: BaseException | None = None) -> None:
        self._conn = None
        if exc is None:
            self.complete = True
        elif self._exc is None:
            self._exc = exc
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _drained(self) -> None:
        self._size = 0
        if self._conn is not None:
            self._conn.resume()

    def _inflate_piece(self) -> bytes:
        assert self._inflate is not None
        if not self._pending:
            self._pending = b"".join(self._buffer)
            self._buffer.clear()
            self._drained()
        try:
            out = self._inflate.decompress(self._pending, INFLATE_PIECE)
        except zlib.error as exc:
            raise self._bad_encoding() from exc
        self._pending = self._inflate.unconsumed_tail
        if self._inflate.eof and (self._pending or self._buffer or self._inflate.unused_data):
            raise self._bad_encoding()  # bytes after the compressed stream's end
        return out

    def _finish_inflate(self) -> bytes:
        if self._inflate is not None and not self._inflate.eof:
            raise self._bad_encoding()
        return b""

    def _bad_encoding(self) -> ProtocolError:
        self._exc = ProtocolError("The answer's compressed body is corrupt or cut short.")
        return self._exc


class _Connection(asyncio.Protocol):
    """One upstream connection: writes requests, parses answers, hands their bodies to the Response."""

    def __init__(self, pool: Pool, origin: tuple[str, str, int]) -> None:
        self.pool, self.origin = pool, origin
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

    # asyncio's side.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.ready is None and self.response is None:
            self.abort()  # bytes nobody asked for: the connection cannot be trusted with another request
            return
        if self.ready is not None:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(ProtocolError("The upstream switched protocols."))
        except httptools.HttpParserError as exc:
            self._fail(ProtocolError(f"The upstream's answer is not valid HTTP/1.1: {exc}."))
        else:  # checked once the packet is parsed: a large first packet may carry the body too
            if self.ready is not None and self._head_bytes > MAX_HEAD_BYTES:
                self._fail(ProtocolError(f"The answer's headers exceed {MAX_HEAD_BYTES} bytes."))

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.forget(self)
        self.transport = None
        if self.ready is not None and not self.ready.done():
            stale = self.reused and self._head_bytes == 0
            closed = Disconnected("The upstream closed the connection without answering.")
            self.ready.set_exception(_Stale() if stale else closed)
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
        framed = "Content-Length" in headers or "chunked" in headers.get("Transfer-Encoding", "").lower()
        self._until_close = not framed and status not in (204, 304)
        self.response = Response(self, status, reason, headers)
        if self.ready is not None and not self.ready.done():
            self.ready.set_result(self.response)
        self.ready = None

    def on_body(self, body: bytes) -> None:
        if self.response is not None:
            self.response._feed(body)

    def on_message_complete(self) -> None:
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
        self.ready = asyncio.get_running_loop().create_future()
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


class Pool:
    """Kept-alive connections per origin (scheme, host, port), most recently used first.

    `max_connections` (0: no limit) bounds the connections open at once over every origin; a request
    beyond it waits for one to close or come back idle. Idle connections older than `keepalive_s` are
    closed when next looked at, and one whose peer closed it between two requests is replaced once.
    """

    def __init__(
        self,
        *,
        max_connections: int = 0,
        connect_timeout_s: float = 10.0,
        keepalive_s: float = 60.0,
        max_idle_per_origin: int = 1024,
        user_agent: str = "open-llm-proxy",
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.max_connections = max_connections
        self.connect_timeout_s = connect_timeout_s
        self.keepalive_s = keepalive_s
        self.max_idle_per_origin = max_idle_per_origin
        self.user_agent = user_agent
        self._ssl = ssl_context
        self._idle: dict[tuple[str, str, int], collections.deque[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._targets: dict[tuple[str, str], _Target] = {}
        self.opened = 0  # connections made over the pool's life

    async def request(self, method: str, url: str, headers: Mapping[str, str], body: bytes = b"") -> Response:
        """Send one request and return the answer once its headers arrived (any status)."""
        target = self._target(method, url)
        data = _encode(target.start, headers, self.user_agent, body)
        for attempt in (0, 1):
            conn = self._take(target.origin) if attempt == 0 else None
            if conn is None:
                conn = await self._connect(target)
            try:
                return await conn.send(data)
            except _Stale:
                continue
            except BaseException:
                conn.abort()  # cancelled or failed mid-request: the connection's state is unknown
                raise
        raise Disconnected("The upstream closed the connection without answering.")

    def put(self, conn: _Connection) -> None:
        conn.reused, conn.idle_since = True, time.monotonic()
        idle = self._idle.setdefault(conn.origin, collections.deque())
        idle.append(conn)
        if len(idle) > self.max_idle_per_origin:
            idle.popleft().abort()
        self._wake_one()

    def forget(self, conn: _Connection) -> None:
        self._open.discard(conn)
        idle = self._idle.get(conn.origin)
        if idle and conn in idle:
            idle.remove(conn)
        self._wake_one()

    async def close(self) -> None:
        for conn in list(self._open):
            conn.abort()
        await asyncio.sleep(0)  # let the transports call connection_lost

    def _take(self, origin: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        expired = time.monotonic() - self.keepalive_s
        while idle and idle[0].idle_since < expired:
            idle.popleft().abort()
        return idle.pop() if idle else None

    async def _connect(self, target: _Target) -> _Connection:
        while self.max_connections and len(self._open) >= self.max_connections:
            if not self._close_idle():
                waiter = asyncio.get_running_loop().create_future()
                self._waiters.append(waiter)
                await waiter
            if (conn := self._take(target.origin)) is not None:
                return conn
        loop = asyncio.get_running_loop()
        tls = (self._ssl or _default_tls()) if target.tls else None
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
                # Happy eyeballs: a host whose IPv6 route is dead still connects over IPv4 at once.
                sock = await aiohappyeyeballs.start_connection(infos, happy_eyeballs_delay=0.25)
                try:
                    transport, conn = await loop.create_connection(
                        lambda: _Connection(self, target.origin),
                        sock=sock,
                        ssl=tls,
                        server_hostname=target.host if tls else None,
                    )
                except BaseException:
                    sock.close()  # a failed TLS handshake (or a timeout in it) leaves the socket to us
                    raise
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise ConnectFailed(f"{type(exc).__name__}: {exc}") from exc
        conn.transport = transport  # uvloop may call connection_made only after this returns
        self._open.add(conn)
        self.opened += 1
        return conn

    def _close_idle(self) -> bool:
        """Close the longest-idle connection of any origin to make room; False when none is idle."""
        oldest = min((q[0] for q in self._idle.values() if q), key=lambda c: c.idle_since, default=None)
        if oldest is None:
            return False
        self._idle[oldest.origin].popleft()
        self._open.discard(oldest)
        oldest.abort()
        return True

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _target(self, method: str, url: str) -> _Target:
        target = self._targets.get((method, url))
        if target is None:
            target = _parse_target(method, url)
            if len(self._targets) >= 1024:  # URLs come from the config, but /llm paths from callers
                self._targets.clear()
            self._targets[(method, url)] = target
        return target


def _parse_target(method: str, url: str) -> _Target:
    parsed = URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.raw_host:
        raise ConnectFailed(f"Not an http(s) URL: {url[:200]!r}.")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    path = parsed.raw_path_qs or "/"
    authority = parsed.host_port_subcomponent or ""
    if any(c in path + authority for c in " \r\n\0"):
        raise ConnectFailed(f"Not a valid request target: {url[:200]!r}.")
    start = f"{method} {path} HTTP/1.1\r\nHost: {authority}\r\n"
    return _Target(
        (parsed.scheme, parsed.raw_host, port), parsed.raw_host, port, parsed.scheme == "https", start
    )


def _encode(start: str, headers: Mapping[str, str], user_agent: str, body: bytes) -> bytes:
    """The request's bytes: one buffer, so one write; a header that would split the head is refused."""
    lines = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    if lines.count("\n") != len(headers) or lines.count("\r") != len(headers) or "\0" in lines:
        raise ProtocolError("A request header holds a line break or a NUL byte.")
    if "User-Agent" not in headers and "user-agent" not in headers:
        lines += f"User-Agent: {user_agent}\r\n"
    head = f"{start}{lines}Content-Length: {len(body)}\r\n\r\n".encode("utf-8", "surrogateescape")
    return head + body


_TLS: list[ssl.SSLContext] = []


def _default_tls() -> ssl.SSLContext:
    """The system's trust store, verified hostnames; built once, on the first https call."""
    if not _TLS:
        _TLS.append(ssl.create_default_context())
    return _TLS[0]
