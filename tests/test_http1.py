"""The provider client (`gateway.http1`) over real loopback sockets, against servers whose every byte the test
writes: keep-alive and its failures, body framings, hostile answers, compressed bodies and bombs, flow
control, the pool's limits, request encoding and TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import ipaddress
import random
import socket
import ssl
import struct
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import serving, until
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from gateway_process import free_port
from multidict import CIMultiDict

from gateway.http1 import ConnectFailed, Disconnected, Pool, ProtocolError, Response
from gateway.http1 import pool as pool_module
from gateway.http1.connection import MAX_HEAD_BYTES, MAX_HEADERS, Connection
from gateway.http1.pacer import EndPacer
from gateway.http1.pool import _parse_target
from gateway.http1.response import HIGH_WATER, INFLATE_PIECE

pytestmark = pytest.mark.timeout(20)

PROMPTLY_S = 2  # what "at once" means here: a client that hangs fails the test instead
MOST_READ = 256 * 1024  # the most bytes asyncio's (and uvloop's) transports hand over in one read
HELD_AT_MOST = HIGH_WATER + MOST_READ  # what a body may buffer once its socket is paused
READ_BOUND = 100_000  # readany() calls any one body may take


# --- a server that writes every byte of its answers -----------------------------------------------------


@dataclass
class Received:
    """One request as the server read it."""

    conn: int  # which connection it came on, in accept order
    head: bytes
    body: bytes

    @property
    def line(self) -> str:
        return self.head.split(b"\r\n", 1)[0].decode()

    @property
    def header_lines(self) -> list[str]:
        return self.head.decode("latin-1").split("\r\n")[1:-2]

    @property
    def headers(self) -> CIMultiDict[str]:
        return CIMultiDict(line.split(": ", 1) for line in self.header_lines)  # type: ignore[misc]


@dataclass
class Exchange:
    """One request on one connection, with what the answer needs: the streams and where it stands."""

    server: RawServer
    request: Received
    nth: int  # the request's place on its connection
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    @property
    def index(self) -> int:
        """The request's place over the server's life."""
        return len(self.server.requests) - 1

    async def send(self, data: bytes, *, bytewise: bool = False) -> None:
        """Write `data`; `bytewise` writes it one byte at a time, yielding to the loop between bytes."""
        pieces = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
        for piece in pieces:
            self.writer.write(piece)
            await self.writer.drain()
            for _ in range(2 if bytewise else 0):  # a loop turn for the client to read each byte alone
                await asyncio.sleep(0)

    async def until_gone(self, within: float = PROMPTLY_S) -> None:
        """Wait (boundedly) for the client to close its side, EOF or reset, and note it in `server.gone`.

        A client that does not close it is left for the test to notice: `server.gone` will lack it.
        """
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                with contextlib.suppress(ConnectionError):
                    while await self.reader.read(65536):
                        pass
                self.server.gone.add(self.request.conn)


Handler = Callable[[Exchange], Awaitable[bool]]  # answers; says whether to read another request after it


class RawServer:
    """An HTTP/1.1 server on loopback for one test; `handler` writes each answer itself."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.url = ""
        self.accepted = 0
        self.open = 0
        self.most_open = 0  # the most connections open at once
        self.requests: list[Received] = []
        self.gone: set[int] = set()  # connections the client closed
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> RawServer:
        self._server = await asyncio.start_server(self._serve, host, 0, ssl=tls)
        port = self._server.sockets[0].getsockname()[1]
        authority = f"[{host}]" if ":" in host else host
        self.url = f"{'https' if tls else 'http'}://{authority}:{port}"
        return self

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        conn, self.accepted = self.accepted, self.accepted + 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            await self._exchanges(conn, reader, writer)
        except asyncio.CancelledError:
            pass  # stopped at teardown: asyncio's streams would log a cancelled handler as an error
        finally:
            self.open -= 1
            writer.transport.abort()
            self._writers.discard(writer)

    async def _exchanges(self, conn: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for nth in range(1000):
            try:
                request = await read_request(conn, reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                self.gone.add(conn)
                return
            self.requests.append(request)
            try:
                if not await self.handler(Exchange(self, request, nth, reader, writer)):
                    return
            except ConnectionError:
                self.gone.add(conn)
                return


async def read_request(conn: int, reader: asyncio.StreamReader) -> Received:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return Received(conn, head, await reader.readexactly(length))


Start = Callable[..., Awaitable[RawServer]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """Start raw servers: `await start(handler, host=..., tls=...)`; all stop at teardown."""
    servers: list[RawServer] = []

    async def start_(handler: Handler, **kwargs: Any) -> RawServer:
        servers.append(await RawServer(handler).start(**kwargs))
        return servers[-1]

    yield start_
    for server in servers:
        await server.stop()


@pytest.fixture
async def pool() -> AsyncIterator[Pool]:
    async with pooled() as pool_:
        yield pool_


@contextlib.asynccontextmanager
async def pooled(**settings: Any) -> AsyncIterator[Pool]:
    pool_ = Pool(**{"connect_timeout_s": PROMPTLY_S, **settings})
    try:
        yield pool_
    finally:
        await pool_.close()


def replying(*answers: bytes, close: bool = False, bytewise: bool = False) -> Handler:
    """Answer the server's nth request with answers[n] (the last one from then on); `close` closes after."""

    async def handler(x: Exchange) -> bool:
        await x.send(answers[min(x.index, len(answers) - 1)], bytewise=bytewise)
        return not close

    return handler


def held(gate: asyncio.Event, say: Callable[[Exchange], bytes] = lambda x: b"hello") -> Handler:
    """Answer each request with `say(exchange)` once `gate` is set, keeping the connection."""

    async def handler(x: Exchange) -> bool:
        await gate.wait()
        await x.send(ok(say(x)))
        return True

    return handler


def then_wait(answer: bytes) -> Handler:
    """Write `answer`, then wait (boundedly) for the client to close the connection."""

    async def handler(x: Exchange) -> bool:
        await x.send(answer)
        await x.until_gone()
        return False

    return handler


async def never_answered(x: Exchange) -> bool:
    """For a server that only ever sees a TLS handshake it does not answer: no request ever completes."""
    raise AssertionError("a TLS handshake is not an HTTP request")


def ok(body: bytes = b"hello", *headers: str, version: str = "1.1") -> bytes:
    """A 200 answer framed by Content-Length."""
    head = "".join(f"{h}\r\n" for h in (f"Content-Length: {len(body)}", *headers))
    return f"HTTP/{version} 200 OK\r\n{head}\r\n".encode() + body


def chunked(*pieces: bytes, headers: str = "", trailers: bytes = b"") -> bytes:
    """A 200 answer in chunks, one per piece, with optional trailer lines."""
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)
    head = f"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n{headers}\r\n".encode()
    return head + body + b"0\r\n" + trailers + b"\r\n"


async def read_all(response: Response) -> bytes:
    parts: list[bytes] = []
    async with asyncio.timeout(PROMPTLY_S):
        for _ in range(READ_BOUND):
            if not (data := await response.readany()):
                return b"".join(parts)
            parts.append(data)
    raise AssertionError("the body did not end")


async def fetch(
    pool: Pool, url: str, method: str = "GET", headers: dict[str, str] | None = None, body: bytes = b""
) -> tuple[Response, bytes]:
    """One request and its whole body, within PROMPTLY_S."""
    async with asyncio.timeout(PROMPTLY_S):
        response = await pool.request(method, url, headers or {}, body)
    return response, await read_all(response)


async def body_of(pool: Pool, url: str) -> bytes:
    return (await fetch(pool, url))[1]


async def all_at_once(pool: Pool, server: RawServer, gate: asyncio.Event, n: int) -> list[bytes]:
    """`n` calls in flight together: each on a connection of its own, answered once all have arrived."""
    tasks = [asyncio.create_task(body_of(pool, server.url)) for _ in range(n)]
    await until(lambda: len(server.requests) == n, PROMPTLY_S, f"{n} requests in flight")
    gate.set()
    return await asyncio.gather(*tasks)


# --- keep-alive -----------------------------------------------------------------------------------------


async def test_sequential_requests_reuse_one_connection(start: Start, pool: Pool) -> None:
    server = await start(replying(ok(b"one"), chunked(b"t", b"wo"), ok(b"three")))
    assert [await body_of(pool, server.url + "/x") for _ in range(3)] == [b"one", b"two", b"three"]
    assert server.accepted == pool.opened == 1
    assert [r.conn for r in server.requests] == [0, 0, 0]


async def test_concurrent_requests_open_a_connection_each_then_all_are_reused(
    start: Start, pool: Pool
) -> None:
    gate = asyncio.Event()

    server = await start(held(gate, lambda x: b"%d" % x.request.conn))
    assert sorted(await all_at_once(pool, server, gate, 3)) == [b"0", b"1", b"2"]
    assert sorted(await asyncio.gather(*(body_of(pool, server.url) for _ in range(3)))) == [b"0", b"1", b"2"]
    assert server.accepted == pool.opened == 3


async def test_a_burst_of_new_connections_resolves_the_name_once(
    start: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = asyncio.Event()

    server = await start(held(gate, lambda x: b"%d" % x.request.conn))
    url = server.url.replace("127.0.0.1", "localhost")
    loop = asyncio.get_running_loop()
    asked: list[str] = []
    real = loop.getaddrinfo

    async def getaddrinfo(host: str, port: int, **kwargs: Any) -> Any:
        asked.append(host)
        await asyncio.sleep(0.05)  # a slow resolver: every connection of the burst is waiting on it
        if host == "nowhere.invalid":
            raise socket.gaierror(socket.EAI_NONAME, "no such name")
        return [i for i in await real("127.0.0.1", port, **kwargs) if i[0] == socket.AF_INET]

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    async with pooled() as pool_:
        burst = [asyncio.create_task(body_of(pool_, url)) for _ in range(10)]
        await until(lambda: len(server.requests) == 10, PROMPTLY_S, "ten connections")
        gate.set()
        assert len(await asyncio.gather(*burst)) == 10
        assert asked == ["localhost"] and pool_.lookups == 1 and pool_.opened == 10
        for _ in range(2):  # a failed lookup is not kept: the next connection asks again
            with pytest.raises(ConnectFailed):
                await pool_.request("GET", "http://nowhere.invalid/", {})
        assert asked == ["localhost", "nowhere.invalid", "nowhere.invalid"]
    closing = await start(replying(ok(b"bye", "Connection: close")))
    url = closing.url.replace("127.0.0.1", "localhost")
    async with pooled(dns_ttl_s=0) as pool_:  # past its time to live, a name is looked up again
        assert [await body_of(pool_, url) for _ in range(2)] == [b"bye", b"bye"]
        assert asked[3:] == ["localhost", "localhost"] and pool_.opened == 2


@pytest.mark.parametrize(
    ("answer", "reused"),
    [
        (ok(b"bye", "Connection: close"), False),
        (ok(b"old", version="1.0"), False),
        (ok(b"old", "Connection: keep-alive", version="1.0"), True),
    ],
    ids=["connection-close", "http-1.0", "http-1.0-keep-alive"],
)
async def test_answers_that_end_their_connection_are_not_reused(
    start: Start, pool: Pool, answer: bytes, reused: bool
) -> None:
    server = await start(replying(answer))  # the server itself would go on reading
    for _ in range(2):
        response, body = await fetch(pool, server.url)
        assert (response.status, body) == (200, answer.rpartition(b"\r\n")[2])
    assert server.accepted == pool.opened == (1 if reused else 2)
    if not reused:
        await until(lambda: 0 in server.gone, PROMPTLY_S, "the first connection closed by the client")


async def test_a_connection_the_server_closed_while_idle_is_replaced(start: Start, pool: Pool) -> None:
    server = await start(replying(ok(b"once"), close=True))
    assert await body_of(pool, server.url) == b"once"
    await until(lambda: not pool._open, PROMPTLY_S, "the client noticing the close")
    assert await body_of(pool, server.url) == b"once"
    assert server.accepted == pool.opened == 2


async def test_a_kept_alive_connection_closed_as_the_request_arrives_is_replaced(
    start: Start, pool: Pool
) -> None:
    async def handler(x: Exchange) -> bool:
        if x.nth == 1:
            return False  # read the second request, then close without a byte: the race keep-alive has
        await x.send(ok(b"conn %d" % x.request.conn))
        return True

    server = await start(handler)
    assert await body_of(pool, server.url) == b"conn 0"
    response, body = await fetch(pool, server.url, "POST", body=b"payload")
    assert (response.status, body) == (200, b"conn 1")
    assert [(r.conn, r.body) for r in server.requests] == [(0, b""), (0, b"payload"), (1, b"payload")]


async def test_a_reused_connection_that_breaks_off_mid_head_is_not_retried(start: Start, pool: Pool) -> None:
    async def handler(x: Exchange) -> bool:
        await x.send(ok() if x.nth == 0 else b"HTTP/1.1 200 OK\r\nContent-Le")
        return x.nth == 0

    server = await start(handler)
    await body_of(pool, server.url)
    with pytest.raises(Disconnected):
        await fetch(pool, server.url)
    assert server.accepted == 1


async def test_a_fresh_connection_closed_without_an_answer_raises_disconnected(
    start: Start, pool: Pool
) -> None:
    async def handler(x: Exchange) -> bool:
        return False

    server = await start(handler)
    with pytest.raises(Disconnected):
        await fetch(pool, server.url)
    assert server.accepted == 1  # never sent twice: nothing says the first one was not acted on
    assert not pool._open


# --- bodies ---------------------------------------------------------------------------------------------

BODIES = {
    "content-length": (ok(b"hello", "X-A: 1"), 200, b"hello", True),
    "chunked": (chunked(b"he", b"l", b"lo", headers="X-A: 1\r\n"), 200, b"hello", True),
    "chunk-extensions": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;name=value\r\nhello\r\n0\r\n\r\n",
        200,
        b"hello",
        True,
    ),
    "until-close": (b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nhello", 200, b"hello", False),
    "http-1.0-until-close": (b"HTTP/1.0 200 OK\r\n\r\nhello", 200, b"hello", False),
    "204": (b"HTTP/1.1 204 No Content\r\n\r\n", 204, b"", True),
    "304": (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", 304, b"", True),
    "100-continue": (b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"hello"), 200, b"hello", True),
    "103-early-hints": (
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 102 Processing\r\n\r\n" + chunked(b"hello").replace(b"200 OK", b"201 Created"),
        201,
        b"hello",
        True,
    ),
    "empty-reason": (b"HTTP/1.1 200 \r\nContent-Length: 5\r\n\r\nhello", 200, b"hello", True),
}


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize("case", BODIES.values(), ids=BODIES.keys())
async def test_every_framing_parses_the_same_whole_or_split_at_every_byte(
    start: Start,
    pool: Pool,
    case: tuple[bytes, int, bytes, bool],
    bytewise: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answer, status, body, kept = case
    packets: list[int] = []
    data_received = Connection.data_received

    def spy(conn: Connection, data: bytes) -> None:
        packets.append(len(data))
        data_received(conn, data)

    monkeypatch.setattr(Connection, "data_received", spy)
    server = await start(replying(answer, ok(b"again"), close=not kept, bytewise=bytewise))
    response, received = await fetch(pool, server.url)
    assert (max(packets) == 1) if bytewise else (len(packets) == 1)  # the split the test means to make
    assert (response.status, received) == (status, body)
    assert "Link" not in response.headers  # an interim answer's headers are not the answer's
    assert response.complete and response.closed
    assert await body_of(pool, server.url) == b"again"
    assert server.accepted == (1 if kept else 2)


async def test_status_reason_headers_and_content_type(start: Start, pool: Pool) -> None:
    answer = ok(b"{}", "Content-Type: Application/JSON; charset=utf-8", "X-Twice: a", "X-Twice: b")
    server = await start(replying(answer.replace(b"200 OK", b"418 I'm a teapot")))
    response, _ = await fetch(pool, server.url)
    assert (response.status, response.reason, response.content_type) == (
        418,
        "I'm a teapot",
        "application/json",
    )
    assert response.headers.getall("x-twice") == ["a", "b"]


async def test_a_body_that_came_with_the_headers_is_at_eof_and_read_at_once(start: Start, pool: Pool) -> None:
    server = await start(replying(ok(b"all here")))
    response = await pool.request("GET", server.url, {})
    await until(response.at_eof, PROMPTLY_S, "the body arriving")
    assert response.read_nowait() == b"all here"
    assert await response.readany() == b""


# --- hostile answers ------------------------------------------------------------------------------------

BAD_HEADS = {
    "garbage": b"\x00\x01garbage\r\n\r\n",
    "misspelt-version": b"HTPT/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    "long-status": b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
    "header-without-colon": b"HTTP/1.1 200 OK\r\nNo colon here\r\nContent-Length: 0\r\n\r\n",
    "space-before-colon": b"HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\nhello",
    "negative-length": b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    "two-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    "length-and-chunked": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    ),
    "upgrade": (
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x00"
    ),
}


@pytest.mark.parametrize("answer", BAD_HEADS.values(), ids=BAD_HEADS.keys())
async def test_a_malformed_head_is_a_protocol_error_and_the_connection_is_closed(
    start: Start, pool: Pool, answer: bytes
) -> None:
    server = await start(then_wait(answer))
    with pytest.raises(ProtocolError):
        await fetch(pool, server.url)
    await until(lambda: 0 in server.gone, PROMPTLY_S, "the client closing the connection")
    assert not pool._open


@pytest.mark.parametrize(
    "body",
    [
        b"zz\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhelloXX0\r\n\r\n",
        b"5\r\nhello\r\n-1\r\n",
        b"1" * 40 + b"\r\nhello",
    ],
    ids=["bad-size", "no-crlf-after-data", "negative-size", "overflowing-size"],
)
async def test_invalid_chunk_framing_fails_the_body_read(start: Start, pool: Pool, body: bytes) -> None:
    server = await start(then_wait(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body))
    response = await pool.request("GET", server.url, {})
    with pytest.raises(ProtocolError):
        await read_all(response)
    await until(lambda: 0 in server.gone, PROMPTLY_S, "the client closing the connection")


def endless(first: bytes, piece: bytes, most: int = 4 << 20) -> Handler:
    """Write `first`, then `piece` over and over (at most `most` bytes) until the client hangs up."""

    async def handler(x: Exchange) -> bool:
        await x.send(first)
        with contextlib.suppress(ConnectionError):
            for _ in range(most // len(piece)):
                await x.send(piece)
                if x.writer.transport.is_closing():
                    break
        await x.until_gone()
        return False

    return handler


@pytest.mark.parametrize(
    ("first", "piece"),
    [
        (b"HTTP/1.1 200 OK\r\nX-Big: ", b"a" * 8192),
        (b"HTTP/1.1 200 OK\r\n", b"X-Many: " + b"b" * 500 + b"\r\n"),
        (b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 100 Continue\r\nX-A: b\r\n\r\n"),
    ],
    ids=["one-long-header", "long-headers", "endless-interim-answers"],
)
async def test_a_head_over_the_cap_fails_promptly(
    start: Start, pool: Pool, first: bytes, piece: bytes
) -> None:
    server = await start(endless(first, piece))
    began = time.monotonic()
    with pytest.raises(ProtocolError, match=str(MAX_HEAD_BYTES)):
        await fetch(pool, server.url)
    assert time.monotonic() - began < 1
    await until(lambda: 0 in server.gone, PROMPTLY_S, "the client closing the connection")


async def test_more_than_the_headers_cap_is_a_protocol_error(start: Start, pool: Pool) -> None:
    many = "".join(f"X-{i}: {i}\r\n" for i in range(MAX_HEADERS + 1)).encode()
    server = await start(then_wait(b"HTTP/1.1 200 OK\r\n" + many + b"Content-Length: 0\r\n\r\n"))
    with pytest.raises(ProtocolError, match=f"more than {MAX_HEADERS} headers"):
        await fetch(pool, server.url)
    await until(lambda: 0 in server.gone, PROMPTLY_S, "the client closing the connection")


def first_then_fresh(first: Callable[[Exchange], Awaitable[None]]) -> Handler:
    """The first connection gets what `first` writes, then waits for the client to close it; every later
    one gets a plain "fresh" answer."""

    async def handler(x: Exchange) -> bool:
        if x.request.conn == 0:
            await first(x)
            await x.until_gone()
            return False
        await x.send(ok(b"fresh"))
        return True

    return handler


async def test_a_second_unsolicited_answer_in_the_same_packet_is_never_handed_over(
    start: Start, pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    written_to_closing = []
    send = Connection.send

    def spy(conn: Connection, data: bytes) -> asyncio.Future[Response]:
        written_to_closing.append(conn.transport is None or conn.transport.is_closing())
        return send(conn, data)

    monkeypatch.setattr(Connection, "send", spy)

    async def unsolicited(x: Exchange) -> None:
        await x.send(ok(b"first") + ok(b"unsolicited"))  # one write: one packet on loopback

    server = await start(first_then_fresh(unsolicited))
    assert await body_of(pool, server.url) == b"first"
    assert await body_of(pool, server.url) == b"fresh"  # at once: no pause for the client to notice
    await until(lambda: 0 in server.gone, PROMPTLY_S, "the client closing the first connection")
    assert [r.conn for r in server.requests] == [0, 1]
    assert written_to_closing == [False, False]  # the aborted connection was not even tried


async def test_bytes_on_an_idle_connection_close_it(start: Start, pool: Pool) -> None:
    async def stale_later(x: Exchange) -> None:
        await x.send(ok(b"first"))
        await asyncio.sleep(0.02)
        await x.send(ok(b"stale"))

    server = await start(first_then_fresh(stale_later))
    assert await body_of(pool, server.url) == b"first"
    await until(lambda: 0 in server.gone, PROMPTLY_S, "the client closing the idle connection")
    assert await body_of(pool, server.url) == b"fresh"
    assert server.accepted == 2


async def test_trailers_never_become_the_next_answers_headers(start: Start, pool: Pool) -> None:
    sneaky = b"Content-Encoding: gzip\r\nX-Sneaky: 1\r\n"
    server = await start(replying(chunked(b"hello", trailers=sneaky), ok(b"plain")))
    assert await body_of(pool, server.url) == b"hello"
    response, body = await fetch(pool, server.url)
    assert body == b"plain"
    assert "X-Sneaky" not in response.headers and "Content-Encoding" not in response.headers
    assert server.accepted == 1


async def test_endless_trailers_fail_promptly(start: Start, pool: Pool) -> None:
    first = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Trailer: "
    server = await start(endless(first, b"t" * 8192))
    response = await pool.request("GET", server.url, {})
    with pytest.raises(ProtocolError):
        await read_all(response)
    await until(lambda: 0 in server.gone, PROMPTLY_S, "the client closing the connection")


async def test_chunks_arriving_apart_from_their_size_lines_are_not_taken_for_trailers(
    start: Start, pool: Pool
) -> None:
    piece = b"p" * 1000

    async def handler(x: Exchange) -> bool:
        if x.nth == 1:
            await x.send(ok(b"next"))
            return True
        await x.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(200):  # each size line a packet of its own, then its data: 200 kB in all
            await x.send(b"%x\r\n" % len(piece), bytewise=True)
            await x.send(piece + b"\r\n")
            await asyncio.sleep(0)
        await x.send(b"0\r\nX-Checksum: 1\r\n\r\n")
        return True

    server = await start(handler)
    assert await body_of(pool, server.url) == piece * 200
    assert await body_of(pool, server.url) == b"next"


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n01234\r\n5\r\n56789\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n64\r\n0123456789",
    ],
    ids=["content-length", "chunked-between-chunks", "chunked-mid-chunk"],
)
async def test_an_answer_cut_short_mid_body_is_disconnected(start: Start, pool: Pool, answer: bytes) -> None:
    server = await start(replying(answer, close=True))
    response = await pool.request("GET", server.url, {})
    received = b""
    with pytest.raises(Disconnected):
        async with asyncio.timeout(PROMPTLY_S):
            for _ in range(READ_BOUND):
                received += await response.readany()
    assert received == b"0123456789"
    assert not response.complete


# --- compressed bodies ----------------------------------------------------------------------------------

TEXT = b"".join(b"line %d of a compressible body\n" % i for i in range(5000))


def gzipped(data: bytes, wbits: int = 31) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, wbits)
    return compressor.compress(data) + compressor.flush()


@pytest.mark.parametrize("chunks", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize(
    ("encoding", "wbits"), [("gzip", 31), ("x-gzip", 31), ("deflate", 15), (" GZip ", 31)]
)
async def test_compressed_bodies_are_inflated(
    start: Start, pool: Pool, encoding: str, wbits: int, chunks: bool
) -> None:
    packed = gzipped(TEXT, wbits)
    header = f"Content-Encoding: {encoding}"
    pieces = [packed[i : i + 700] for i in range(0, len(packed), 700)]
    answer = chunked(*pieces, headers=header + "\r\n") if chunks else ok(packed, header)
    server = await start(replying(answer))
    response = await pool.request("GET", server.url, {})
    await until(lambda: response.complete, PROMPTLY_S, "the whole body arriving")
    assert not response.at_eof()  # a compressed body is never taken whole: readany inflates it
    assert await read_all(response) == TEXT
    assert await body_of(pool, server.url) == TEXT
    assert server.accepted == 1


@pytest.mark.parametrize(
    "answer",
    [
        ok(b"", "Content-Encoding: gzip"),
        b"HTTP/1.1 204 No Content\r\nContent-Encoding: gzip\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nContent-Encoding: gzip\r\nContent-Length: 20\r\n\r\n",
        chunked(headers="Content-Encoding: deflate\r\n"),
    ],
    ids=["empty", "204", "304", "chunked-empty"],
)
async def test_an_empty_body_labelled_compressed_is_empty(start: Start, pool: Pool, answer: bytes) -> None:
    server = await start(replying(answer))
    assert await body_of(pool, server.url) == b""


@functools.cache
def zero_blocks() -> tuple[bytes, bytes, bytes]:
    """Parts of a gzipped run of zeros: its start (the header and a first MiB), one more MiB (the same bytes
    every time, as the window then holds only zeros) and its last block; the trailer is the caller's."""
    mib = bytes(1 << 20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = compressor.compress(mib) + compressor.flush(zlib.Z_SYNC_FLUSH)
    again = compressor.compress(mib) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return b"\x1f\x8b\x08\0\0\0\0\0\0\xff" + first, again, compressor.flush()


def gzip_bomb(size: int = 1 << 30) -> bytes:
    """`size` zeros (a whole number of MiB) gzipped: about 1 MB for 1 GiB."""
    start, again, end = zero_blocks()
    crc, mib = 0, bytes(1 << 20)
    for _ in range(size >> 20):
        crc = zlib.crc32(mib, crc)
    return start + again * ((size >> 20) - 1) + end + struct.pack("<II", crc, size & 0xFFFFFFFF)


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


async def test_a_gzip_bomb_is_handed_over_a_bounded_piece_at_a_time(start: Start, pool: Pool) -> None:
    bomb = gzip_bomb()
    server = await start(then_wait(ok(bomb, "Content-Encoding: gzip")))
    response = await pool.request("GET", server.url, {})
    before = rss_bytes()
    largest = total = 0
    for _ in range(256):  # 64 MiB of the 1 GiB
        piece = await response.readany()
        assert piece.count(0) == len(piece)
        largest, total = max(largest, len(piece)), total + len(piece)
    assert largest == INFLATE_PIECE and total == 256 * INFLATE_PIECE
    await asyncio.sleep(0.05)  # the upstream may go on sending: nothing is inflated until asked for
    assert response._size + len(response._pending) <= 2 * HELD_AT_MOST  # compressed, not yet inflated
    assert rss_bytes() - before < 32 << 20
    response.close()
    await until(lambda: 0 in server.gone, PROMPTLY_S, "the client closing the connection")


async def test_an_unread_compressed_body_stops_the_socket_too(start: Start, pool: Pool) -> None:
    start_, again, _ = zero_blocks()
    sent = [0]
    server = await start(flood(sent, 32, piece=again * 1024, prefix=start_, headers="Content-Encoding: gzip"))
    response = await pool.request("GET", server.url, {})  # 32 GiB of zeros in about 32 MiB
    assert len(await response.readany()) == INFLATE_PIECE
    assert await settled(lambda: sent[0]) < 16 * len(again) * 1024
    assert response._size + len(response._pending) <= 2 * HELD_AT_MOST
    conn = response._conn
    assert conn is not None and conn.transport is not None and not conn.transport.is_reading()
    response.close()
    await until(lambda: server.open == 0, PROMPTLY_S, "the client closing the connection")


async def test_a_smaller_bomb_read_through_ends_cleanly(start: Start, pool: Pool) -> None:
    server = await start(replying(ok(gzip_bomb(64 << 20), "Content-Encoding: gzip")))
    response = await pool.request("GET", server.url, {})
    sizes = []
    async with asyncio.timeout(PROMPTLY_S):
        for _ in range(READ_BOUND):
            if not (piece := await response.readany()):
                break
            sizes.append(len(piece))
    assert sum(sizes) == 64 << 20 and max(sizes) == INFLATE_PIECE


def corrupted(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]


NOISE = random.Random(7).randbytes(200_000)  # incompressible: a flipped byte cannot go unnoticed
BAD_GZIP = {
    "corrupt": corrupted(gzipped(NOISE)),
    "truncated": gzipped(NOISE)[:-20],
    "bad-crc": gzipped(NOISE)[:-8] + b"\0\0\0\0" + gzipped(NOISE)[-4:],
    "trailing-bytes": gzipped(NOISE) + b"more",
    "not-gzip": NOISE[:1000],
    "header-only": gzipped(NOISE)[:10],
}


@pytest.mark.parametrize("packed", BAD_GZIP.values(), ids=BAD_GZIP.keys())
async def test_corrupt_or_truncated_gzip_is_a_protocol_error(start: Start, pool: Pool, packed: bytes) -> None:
    server = await start(replying(ok(packed, "Content-Encoding: gzip")))
    response = await pool.request("GET", server.url, {})
    with pytest.raises(ProtocolError, match="compressed body"):
        await read_all(response)
    with pytest.raises(ProtocolError):  # and so does every read after it
        await response.readany()


# --- flow control ---------------------------------------------------------------------------------------

MIB = b"x" * (1 << 20)


def flood(
    sent: list[int], pieces: int, piece: bytes = MIB, prefix: bytes = b"", headers: str = ""
) -> Handler:
    """A body of `prefix` and `pieces` times `piece`, sent as fast as the client takes it; sent[0] counts."""

    async def handler(x: Exchange) -> bool:
        length = len(prefix) + pieces * len(piece)
        head = "".join(f"{line}\r\n" for line in (f"Content-Length: {length}", headers) if line)
        await x.send(f"HTTP/1.1 200 OK\r\n{head}\r\n".encode() + prefix)
        for _ in range(pieces):
            await x.send(piece)
            sent[0] += len(piece)
        return True

    return handler


async def settled(value: Callable[[], int]) -> int:
    """`value()` once it stopped changing for 50 ms (within PROMPTLY_S)."""
    last = -1
    async with asyncio.timeout(PROMPTLY_S):
        while (now := value()) != last:
            last = now
            await asyncio.sleep(0.05)
    return last


async def test_a_reader_that_does_not_read_stops_the_socket_at_the_high_water_mark(
    start: Start, pool: Pool
) -> None:
    sent = [0]
    server = await start(flood(sent, 50))
    response = await pool.request("GET", server.url, {})
    assert await settled(lambda: sent[0]) < 25 << 20  # the server is blocked: kernel buffers are full
    assert HIGH_WATER < response._size <= HELD_AT_MOST
    conn = response._conn
    assert conn is not None and conn.transport is not None and not conn.transport.is_reading()
    assert len(await read_all(response)) == 50 << 20  # and it goes on when read
    assert sent[0] == 50 << 20
    assert await body_of(pool, server.url) == MIB * 50
    assert server.accepted == 1


async def test_read_nowait_resumes_a_paused_connection(start: Start, pool: Pool) -> None:
    sent = [0]
    server = await start(flood(sent, 8))
    response = await pool.request("GET", server.url, {})
    await settled(lambda: sent[0])
    total = 0
    async with asyncio.timeout(PROMPTLY_S):
        while not response.complete or response._size:
            total += len(response.read_nowait())
            await asyncio.sleep(0)
    assert total == 8 << 20


# --- set_exception, close, release ----------------------------------------------------------------------


class Stop(Exception):
    pass


def trickle() -> Handler:
    """The head and one chunk, then nothing until the client hangs up."""
    return then_wait(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")


async def test_set_exception_fails_a_pending_read_at_once(start: Start, pool: Pool) -> None:
    server = await start(trickle())
    response = await pool.request("GET", server.url, {})
    assert await response.readany() == b"first"
    pending = asyncio.create_task(response.readany())
    await asyncio.sleep(0.01)
    assert not pending.done()
    response.set_exception(Stop())
    with pytest.raises(Stop):
        await asyncio.wait_for(pending, 0.1)
    with pytest.raises(Stop):
        await response.readany()
    response.close()
    await until(lambda: 0 in server.gone, PROMPTLY_S, "the client closing the connection")


async def test_close_mid_body_aborts_the_connection_and_it_is_not_reused(start: Start, pool: Pool) -> None:
    server = await start(trickle())
    response = await pool.request("GET", server.url, {})
    assert await response.readany() == b"first"
    response.close()
    assert response.closed
    await until(lambda: 0 in server.gone, PROMPTLY_S, "the upstream seeing the connection closed")
    assert not pool._open
    next_one = asyncio.create_task(pool.request("GET", server.url, {}))
    await until(lambda: server.accepted == 2, PROMPTLY_S, "a new connection")
    next_one.cancel()
    await asyncio.gather(next_one, return_exceptions=True)


async def test_release_after_a_whole_body_keeps_the_connection(start: Start, pool: Pool) -> None:
    server = await start(replying(ok(b"a"), ok(b"b")))
    response, _ = await fetch(pool, server.url)
    response.release()
    assert await body_of(pool, server.url) == b"b"
    assert server.accepted == 1


async def test_release_of_an_unread_whole_body_keeps_the_connection(start: Start, pool: Pool) -> None:
    server = await start(replying(ok(b"a"), ok(b"b")))
    response = await pool.request("GET", server.url, {})
    await until(lambda: response.complete, PROMPTLY_S, "the body arriving")
    response.release()
    assert await body_of(pool, server.url) == b"b"
    assert server.accepted == 1


async def test_closing_a_finished_answer_leaves_its_connection_to_the_next_request(
    start: Start, pool: Pool
) -> None:
    gate = asyncio.Event()

    async def handler(x: Exchange) -> bool:
        if x.nth == 1:
            await gate.wait()
        await x.send(ok(b"%d" % x.nth))
        return True

    server = await start(handler)
    old, _ = await fetch(pool, server.url)
    waiting = asyncio.create_task(body_of(pool, server.url))  # on the same connection
    await until(lambda: len(server.requests) == 2, PROMPTLY_S, "the second request")
    old.close()
    old.release()
    gate.set()
    assert await waiting == b"1"
    assert server.accepted == 1 and not server.gone


async def test_release_mid_body_closes_the_connection(start: Start, pool: Pool) -> None:
    server = await start(trickle())
    response = await pool.request("GET", server.url, {})
    response.release()
    await until(lambda: 0 in server.gone, PROMPTLY_S, "the upstream seeing the connection closed")
    with pytest.raises(Disconnected):  # a body dropped half-way cannot be read on
        await response.readany()


# --- pump: the body handed to a sink in the connection's callback ----------------------------------------


class Sink:
    """Collects what `pump` hands over; `full_after` pieces in, it says it is full (once per pump)."""

    def __init__(self, full_after: int | None = None, fail: BaseException | None = None) -> None:
        self.pieces: list[bytes] = []
        self.full_after = full_after
        self.fail = fail

    def __call__(self, data: bytes) -> bool:
        self.pieces.append(data)
        if self.fail is not None:
            raise self.fail
        return self.full_after is not None and len(self.pieces) >= self.full_after

    @property
    def received(self) -> bytes:
        return b"".join(self.pieces)


async def pumped(response: Response, sink: Sink) -> bytes:
    """Pump the whole body into `sink` (within PROMPTLY_S), however often it says it is full."""
    async with asyncio.timeout(PROMPTLY_S):
        for _ in range(READ_BOUND):
            if await response.pump(sink):
                return sink.received
            sink.full_after = len(sink.pieces) + 1
    raise AssertionError("the body did not end")


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize("case", BODIES.values(), ids=BODIES.keys())
async def test_pump_hands_over_every_framing_whole_or_split_at_every_byte(
    start: Start, pool: Pool, case: tuple[bytes, int, bytes, bool], bytewise: bool
) -> None:
    answer, status, body, kept = case
    server = await start(replying(answer, ok(b"again"), close=not kept, bytewise=bytewise))
    response = await pool.request("GET", server.url, {})
    assert (response.status, await pumped(response, Sink())) == (status, body)
    assert response.complete and response.closed
    assert await body_of(pool, server.url) == b"again"
    assert server.accepted == (1 if kept else 2)


async def test_a_full_sink_pauses_the_socket_until_the_next_pump(start: Start, pool: Pool) -> None:
    sent = [0]
    server = await start(flood(sent, 50))
    response = await pool.request("GET", server.url, {})
    sink = Sink(full_after=1)
    assert await response.pump(sink) is False
    assert await settled(lambda: sent[0]) < 25 << 20  # the server is blocked: kernel buffers are full
    conn = response._conn
    assert conn is not None and conn.transport is not None and not conn.transport.is_reading()
    assert response._size <= HELD_AT_MOST  # what was in flight waits in the buffer, bounded
    sink.full_after = None
    assert await asyncio.wait_for(response.pump(sink), PROMPTLY_S) is True
    assert sink.received == MIB * 50 and sent[0] == 50 << 20
    assert await body_of(pool, server.url) == MIB * 50
    assert server.accepted == 1


async def test_a_sink_that_is_full_at_every_piece_still_gets_the_whole_body_in_order(
    start: Start, pool: Pool
) -> None:
    server = await start(replying(chunked(*(b"%05d" % i for i in range(2000)))))
    response = await pool.request("GET", server.url, {})
    assert await pumped(response, Sink(full_after=1)) == b"".join(b"%05d" % i for i in range(2000))


async def test_a_sink_that_raises_ends_the_body_and_is_handed_nothing_more(start: Start, pool: Pool) -> None:
    sent = [0]
    server = await start(flood(sent, 50))
    response = await pool.request("GET", server.url, {})
    sink = Sink(fail=Stop())
    with pytest.raises(Stop):
        await asyncio.wait_for(response.pump(sink), PROMPTLY_S)
    assert len(sink.pieces) == 1
    with pytest.raises(Stop):
        await response.pump(sink)
    assert len(sink.pieces) == 1
    assert await settled(lambda: sent[0]) < 25 << 20  # the socket is no longer read
    response.close()
    await until(lambda: 0 in server.gone, PROMPTLY_S, "the upstream seeing the connection closed")


async def test_set_exception_fails_a_waiting_pump_at_once(start: Start, pool: Pool) -> None:
    server = await start(trickle())
    response = await pool.request("GET", server.url, {})
    sink = Sink()
    pending = asyncio.create_task(response.pump(sink))
    await until(lambda: sink.pieces == [b"first"], PROMPTLY_S, "the first chunk")
    assert not pending.done()
    response.set_exception(Stop())
    with pytest.raises(Stop):
        await asyncio.wait_for(pending, 0.1)
    response.close()


async def test_an_answer_cut_short_fails_the_pump_with_what_it_got_handed_over(
    start: Start, pool: Pool
) -> None:
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n01234\r\n5\r\n56789\r\n"
    server = await start(replying(answer, close=True, bytewise=True))
    response = await pool.request("GET", server.url, {})
    sink = Sink()
    with pytest.raises(Disconnected):
        await pumped(response, sink)
    assert sink.received == b"0123456789"


async def test_the_end_pacer_wakes_a_slice_of_readers_per_turn_in_the_order_their_bodies_ended() -> None:
    loop = asyncio.get_running_loop()
    pacer, woken = EndPacer(per_turn=3), []
    waiters = [loop.create_future() for _ in range(9)]
    for i, waiter in enumerate(waiters):
        waiter.add_done_callback(lambda f, i=i: woken.append(i) if not f.cancelled() else None)
    waiters[4].cancel()  # its reader went away: it is passed over, and takes no one's place
    for waiter in waiters:  # nine bodies end in one turn
        if not waiter.done():
            pacer.wake(waiter)
    done = [sum(w.done() and not w.cancelled() for w in waiters)]
    for _ in range(4):
        await asyncio.sleep(0)  # one turn of the loop
        done.append(sum(w.done() and not w.cancelled() for w in waiters))
    assert done == [3, 6, 8, 8, 8] and pacer.waiting == 0
    await asyncio.sleep(0)
    assert woken == [0, 1, 2, 3, 5, 6, 7, 8]
    alone = loop.create_future()
    pacer.wake(alone)  # a turn later, an end that comes alone wakes its reader at once
    assert alone.done()


class CountingPacer(EndPacer):
    """An EndPacer that counts the ends handed to it."""

    __slots__ = ("ends",)

    def __init__(self, per_turn: int) -> None:
        super().__init__(per_turn)
        self.ends = 0

    def wake(self, waiter: asyncio.Future[None]) -> None:
        self.ends += 1
        super().wake(waiter)


async def test_relayed_bodies_ending_together_all_reach_their_readers_through_the_pacer(
    start: Start, pool: Pool
) -> None:
    go, count = asyncio.Event(), 10

    async def ends_on_cue(exchange: Exchange) -> bool:
        await exchange.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await go.wait()
        await exchange.send(b"4\r\nlast\r\n0\r\n\r\n")
        return True

    server = await start(ends_on_cue)
    pool.ends = pacer = CountingPacer(per_turn=2)
    responses = await asyncio.gather(*(pool.request("GET", server.url, {}) for _ in range(count)))
    sinks = [Sink() for _ in responses]
    pumps = [asyncio.create_task(r.pump(s)) for r, s in zip(responses, sinks, strict=True)]
    await until(lambda: all(s.pieces for s in sinks), PROMPTLY_S, "every first chunk")
    go.set()
    assert await asyncio.wait_for(asyncio.gather(*pumps), PROMPTLY_S) == [True] * count
    assert [s.received for s in sinks] == [b"firstlast"] * count
    assert pacer.ends == count and pacer.waiting == 0
    assert await body_of(pool, server.url) == b"firstlast" and server.accepted == count  # all kept alive


@pytest.mark.parametrize("chunks", [False, True], ids=["content-length", "chunked"])
async def test_pump_inflates_a_compressed_body_a_bounded_piece_at_a_time(
    start: Start, pool: Pool, chunks: bool
) -> None:
    packed = gzipped(TEXT * 20)
    pieces = [packed[i : i + 700] for i in range(0, len(packed), 700)]
    header = "Content-Encoding: gzip"
    answer = chunked(*pieces, headers=header + "\r\n") if chunks else ok(packed, header)
    server = await start(replying(answer))
    response = await pool.request("GET", server.url, {})
    sink = Sink()
    assert await pumped(response, sink) == TEXT * 20
    assert max(map(len, sink.pieces)) <= INFLATE_PIECE


# --- request encoding -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"X-A": "a\r\nX-Injected: 1"},
        {"X-A": "a\nb"},
        {"X-A": "a\rb"},
        {"X-A": "a\0b"},
        {"X-A\r\nX-Injected": "1"},
        {"X-A": "ok", "X-B": "\r\n"},
    ],
    ids=["crlf", "lf", "cr", "nul", "crlf-in-name", "second-header"],
)
async def test_a_header_that_would_split_the_head_is_refused_before_anything_is_sent(
    start: Start, pool: Pool, headers: dict[str, str]
) -> None:
    server = await start(replying(ok()))
    with pytest.raises(ProtocolError):
        await pool.request("POST", server.url, headers, b"{}")
    assert server.accepted == pool.opened == 0


async def test_the_request_line_and_default_headers(start: Start, pool: Pool) -> None:
    server = await start(replying(ok()))
    await fetch(pool, server.url + "/v1/models?limit=2")
    await fetch(pool, server.url + "/v1/chat", "POST", {"Content-Type": "application/json"}, b'{"a": 1}')
    get, post = server.requests
    port = server.url.rpartition(":")[2]
    assert get.line == "GET /v1/models?limit=2 HTTP/1.1"
    assert get.headers.getall("Host") == [f"127.0.0.1:{port}"]
    assert get.headers.getall("User-Agent") == ["open-llm-proxy"]
    assert get.headers.getall("Content-Length") == ["0"]  # always, so no upstream waits for a body
    assert post.line == "POST /v1/chat HTTP/1.1"
    assert post.headers.getall("Content-Length") == ["8"] and post.body == b'{"a": 1}'
    assert post.headers["Content-Type"] == "application/json"


@pytest.mark.parametrize("name", ["User-Agent", "user-agent", "USER-AGENT", "User-agent"])
async def test_the_callers_user_agent_replaces_the_default(start: Start, pool: Pool, name: str) -> None:
    server = await start(replying(ok()))
    await fetch(pool, server.url, headers={name: "caller/1.0"})
    assert server.requests[0].headers.getall("User-Agent") == ["caller/1.0"]


@pytest.mark.parametrize("name", ["Content-Length", "content-length", "Transfer-Encoding"])
async def test_the_client_alone_frames_the_request_body(start: Start, pool: Pool, name: str) -> None:
    server = await start(replying(ok()))
    await fetch(pool, server.url, "POST", {name: "999"}, b"four")
    request = server.requests[0]
    assert request.headers.getall("Content-Length") == ["4"] and "Transfer-Encoding" not in request.headers
    assert request.body == b"four"


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


async def test_host_carries_the_port_and_brackets_an_ipv6_address(start: Start, pool: Pool) -> None:
    if not ipv6_loopback():  # no ::1 here: the same formatting, checked without a socket
        port = free_port()
        assert f"\r\nHost: [::1]:{port}\r\n" in _parse_target("GET", f"http://[::1]:{port}/x").start
        return
    server = await start(replying(ok(b"v6")), host="::1")
    assert await body_of(pool, server.url + "/x") == b"v6"
    assert server.requests[0].headers.getall("Host") == [server.url.removeprefix("http://")]


@pytest.mark.parametrize(
    ("url", "origin", "line", "host"),
    [
        ("http://example.com/a?b=c#frag", ("http", "example.com", 80), "GET /a?b=c", "example.com"),
        ("http://example.com:80", ("http", "example.com", 80), "GET /", "example.com"),
        ("https://example.com:443/x", ("https", "example.com", 443), "GET /x", "example.com"),
        ("https://example.com:8443/x", ("https", "example.com", 8443), "GET /x", "example.com:8443"),
        ("http://[::1]/v1", ("http", "::1", 80), "GET /v1", "[::1]"),
        ("https://[2001:db8::1]:8443/", ("https", "2001:db8::1", 8443), "GET /", "[2001:db8::1]:8443"),
        ("http://EXAMPLE.com:8080/%20x", ("http", "example.com", 8080), "GET /%20x", "example.com:8080"),
    ],
)
def test_targets(url: str, origin: tuple[str, str, int], line: str, host: str) -> None:
    target = _parse_target("GET", url)
    assert target.origin == origin and target.tls == (origin[0] == "https")
    assert target.start == f"{line} HTTP/1.1\r\nHost: {host}\r\n"


@pytest.mark.parametrize("url", ["ftp://example.com/", "example.com/x", "http:///x", "http://a b/"])
async def test_what_is_not_an_http_url_is_refused(pool: Pool, url: str) -> None:
    with pytest.raises(ConnectFailed):
        await pool.request("GET", url, {})


# --- the pool's limits ----------------------------------------------------------------------------------


def slowly(answer: bytes, delay: float = 0.05) -> Handler:
    async def handler(x: Exchange) -> bool:
        await asyncio.sleep(delay)
        await x.send(answer)
        return True

    return handler


async def test_max_connections_bounds_the_sockets_open_at_once(start: Start) -> None:
    server = await start(slowly(ok(b"done")))
    async with pooled(max_connections=2) as pool:
        bodies = await asyncio.gather(*(body_of(pool, server.url) for _ in range(5)))
        assert bodies == [b"done"] * 5
        assert server.most_open <= 2 and pool.opened <= 2
        assert len(server.requests) == 5


async def test_an_idle_connection_to_another_origin_is_closed_to_make_room(start: Start) -> None:
    a = await start(replying(ok(b"a")))
    b = await start(replying(ok(b"b")))
    async with pooled(max_connections=1) as pool:
        assert await body_of(pool, a.url) == b"a"
        assert await body_of(pool, b.url) == b"b"
        await until(lambda: 0 in a.gone, PROMPTLY_S, "the idle connection to a closed")
        assert await body_of(pool, a.url) == b"a"
        assert a.most_open == b.most_open == 1 and pool.opened == 3


async def test_a_request_beyond_the_limit_waits_for_a_connection_to_come_back(start: Start) -> None:
    gate = asyncio.Event()

    server = await start(held(gate, lambda x: b"%d" % x.index))
    async with pooled(max_connections=1) as pool:
        tasks = [asyncio.create_task(body_of(pool, server.url)) for _ in range(3)]
        await until(lambda: len(server.requests) == 1, PROMPTLY_S, "the first request")
        await asyncio.sleep(0.02)
        assert len(server.requests) == 1  # the others wait
        gate.set()
        assert sorted(await asyncio.gather(*tasks)) == [b"0", b"1", b"2"]
        assert server.accepted == 1


async def test_a_waiter_cancelled_as_it_is_woken_passes_the_turn_on(start: Start) -> None:
    gate = asyncio.Event()

    server = await start(held(gate, lambda x: b"%d" % x.index))
    async with pooled(max_connections=1) as pool:
        first = asyncio.create_task(body_of(pool, server.url))
        await until(lambda: len(server.requests) == 1, PROMPTLY_S, "the first request")
        second = asyncio.create_task(body_of(pool, server.url))
        third = asyncio.create_task(body_of(pool, server.url))
        await until(lambda: len(pool._waiters) == 2, PROMPTLY_S, "two requests waiting")
        wake = pool._wake_one

        def wake_then_cancel() -> None:  # a timeout firing in the same loop turn as the wake-up
            wake()
            if not second.done():
                second.cancel()

        pool._wake_one = wake_then_cancel  # type: ignore[method-assign]
        gate.set()
        assert await first == b"0"
        with pytest.raises(asyncio.CancelledError):
            await second
        assert await asyncio.wait_for(third, PROMPTLY_S) == b"1"


async def test_a_request_cancelled_while_connecting_frees_its_place(start: Start) -> None:
    silent = await start(never_answered)
    server = await start(replying(ok(b"next")))
    async with pooled(max_connections=1, connect_timeout_s=10) as pool:
        connecting = asyncio.create_task(pool.request("GET", silent.url.replace("http:", "https:"), {}))
        await until(lambda: silent.accepted == 1, PROMPTLY_S, "the connection accepted")
        connecting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await connecting
        assert await body_of(pool, server.url) == b"next"
        assert pool._connecting == 0 and len(pool._open) == 1


async def test_many_requests_under_a_limit_with_cancellations_all_settle(start: Start) -> None:
    rng = random.Random(3)

    async def handler(x: Exchange) -> bool:
        await asyncio.sleep(rng.random() * 0.01)
        await x.send(ok(b"done"))
        return rng.random() > 0.2  # and sometimes the server closes the connection after answering

    server = await start(handler)
    async with pooled(max_connections=3) as pool:
        peak = [0]  # the server sees a close late, so the bound is checked where connections start
        dial = pool._dial

        async def counted(target: Any) -> Connection:
            peak[0] = max(peak[0], len(pool._open) + pool._connecting)
            return await dial(target)

        pool._dial = counted  # type: ignore[method-assign]
        tasks = [asyncio.create_task(body_of(pool, server.url)) for _ in range(60)]
        for task in rng.sample(tasks, 20):
            await asyncio.sleep(rng.random() * 0.005)
            task.cancel()
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), PROMPTLY_S * 2)
        assert [r for r in results if r != b"done" and not isinstance(r, asyncio.CancelledError)] == []
        assert results.count(b"done") >= 40 and 1 < peak[0] <= 3
        assert pool._connecting == 0 and len(pool._open) <= 3
        assert not [w for w in pool._waiters if not w.done()]


async def test_an_idle_connection_past_keepalive_is_not_reused(start: Start) -> None:
    server = await start(replying(ok(b"hi")))
    async with pooled(keepalive_s=0.05) as pool:
        await body_of(pool, server.url)
        await body_of(pool, server.url)
        assert server.accepted == 1
        await asyncio.sleep(0.1)
        await body_of(pool, server.url)
        assert server.accepted == 2
        await until(lambda: 0 in server.gone, PROMPTLY_S, "the expired connection closed")


async def test_max_idle_per_origin_closes_the_surplus_once_trim_after_s_has_passed(start: Start) -> None:
    gate = asyncio.Event()

    server = await start(held(gate))
    async with pooled(max_idle_per_origin=1, trim_after_s=0.3) as pool:
        await all_at_once(pool, server, gate, 3)
        await asyncio.sleep(0.1)
        assert not server.gone and len(pool._open) == 3  # the burst just ended: nothing closed yet
        await until(lambda: len(server.gone) == 2, PROMPTLY_S, "two surplus connections closed")
        assert len(pool._open) == 1


async def test_a_burst_back_within_trim_after_s_finds_its_connections_open(start: Start) -> None:
    gate = asyncio.Event()
    gate.set()
    server = await start(held(gate))
    async with pooled(max_idle_per_origin=1, trim_after_s=0.5) as pool:
        for _ in range(2):  # two bursts of three calls at once, the second within the trim's delay
            await asyncio.gather(*(body_of(pool, server.url) for _ in range(3)))
        assert server.accepted == pool.opened == 3
        await until(lambda: len(server.gone) == 2, PROMPTLY_S, "two surplus connections closed")


async def test_the_surplus_closes_a_slice_per_turn(start: Start, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_module, "TRIM_SLICE", 2)
    gate = asyncio.Event()
    server = await start(held(gate))
    async with pooled(max_idle_per_origin=1, trim_after_s=0.05) as pool:
        await all_at_once(pool, server, gate, 6)
        await until(lambda: len(server.gone) == 5, PROMPTLY_S, "five surplus connections closed")
        assert len(pool._open) == 1 and pool._trimming is None


# --- connecting and cancelling --------------------------------------------------------------------------


async def test_a_refused_connection_is_connect_failed(pool: Pool) -> None:
    with pytest.raises(ConnectFailed):
        await pool.request("GET", f"http://127.0.0.1:{free_port()}/", {})
    assert not pool._open and pool.opened == 0


async def test_a_request_cancelled_while_waiting_for_headers_aborts_its_connection(
    start: Start, pool: Pool
) -> None:
    async def handler(x: Exchange) -> bool:
        await x.until_gone()
        return False

    server = await start(handler)
    task = asyncio.create_task(pool.request("POST", server.url, {}, b"x"))
    await until(lambda: server.requests, PROMPTLY_S, "the request arriving")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await until(lambda: 0 in server.gone, PROMPTLY_S, "the upstream seeing the connection closed")
    assert not pool._open and not any(pool._idle.values())


async def test_pool_close_closes_every_connection(start: Start, pool: Pool) -> None:
    server = await start(trickle())
    idle_server = await start(replying(ok()))
    await body_of(pool, idle_server.url)
    response = await pool.request("GET", server.url, {})
    await pool.close()
    await until(lambda: 0 in server.gone and 0 in idle_server.gone, PROMPTLY_S, "both connections closed")
    with pytest.raises(Disconnected):
        await read_all(response)


# --- TLS ------------------------------------------------------------------------------------------------


@dataclass
class Certificate:
    pem: bytes
    server: ssl.SSLContext = field(repr=False)

    def trusting(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.pem.decode())


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Certificate]:
    """A self-signed certificate for 127.0.0.1, and a server context that presents it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "open-llm-proxy test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("tls")
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (directory / "cert.pem").write_bytes(pem)
    (directory / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    yield Certificate(pem, context)


async def test_tls_with_a_trusted_certificate(start: Start, certificate: Certificate) -> None:
    server = await start(replying(ok(b"secret"), chunked(b"again")), tls=certificate.server)
    assert server.url.startswith("https://127.0.0.1:")
    async with pooled(ssl_context=certificate.trusting()) as pool:
        assert await body_of(pool, server.url) == b"secret"
        assert await body_of(pool, server.url) == b"again"
        assert server.accepted == pool.opened == 1


async def test_tls_flow_control_and_abort(start: Start, certificate: Certificate) -> None:
    sent = [0]
    server = await start(flood(sent, 16), tls=certificate.server)
    async with pooled(ssl_context=certificate.trusting()) as pool:
        response = await pool.request("GET", server.url, {})
        assert await settled(lambda: sent[0]) < 16 << 20
        assert response._size <= HELD_AT_MOST
        assert len(await response.readany()) > 0
        response.close()
        await until(lambda: 0 in server.gone or server.open == 0, PROMPTLY_S, "the connection closed")
        assert not pool._open


async def test_tls_with_the_system_trust_refuses_a_self_signed_certificate(
    start: Start, pool: Pool, certificate: Certificate
) -> None:
    server = await start(replying(ok()), tls=certificate.server)
    with pytest.raises(ConnectFailed, match="CERTIFICATE_VERIFY_FAILED"):
        await pool.request("GET", server.url, {})
    assert not server.requests and not pool._open


async def test_tls_checks_the_host_name(start: Start, certificate: Certificate) -> None:
    server = await start(replying(ok()), tls=certificate.server)
    async with pooled(ssl_context=certificate.trusting()) as pool:
        with pytest.raises(ConnectFailed, match=r"CERTIFICATE_VERIFY_FAILED|match"):
            await pool.request("GET", server.url.replace("127.0.0.1", "localhost"), {})
    assert not server.requests


async def test_tls_to_a_server_that_never_handshakes_fails_within_the_connect_timeout(start: Start) -> None:
    silent = await start(never_answered)
    async with pooled(connect_timeout_s=0.2) as pool:
        began = time.monotonic()
        with pytest.raises(ConnectFailed, match="TimeoutError"):
            await pool.request("GET", silent.url.replace("http:", "https:"), {})
        assert time.monotonic() - began < 1
        assert not pool._open
    await until(lambda: silent.gone, PROMPTLY_S, "the socket closed")


async def test_https_to_a_plain_http_server_is_connect_failed(pool: Pool) -> None:
    async def plain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")  # what a plain server says
        await reader.read()
        writer.close()

    server = await asyncio.start_server(plain, "127.0.0.1", 0)
    try:
        with pytest.raises(ConnectFailed, match="SSL"):
            await pool.request("GET", f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}/", {})
    finally:
        server.close()


# --- against aiohttp's server ---------------------------------------------------------------------------


async def stream_handler(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    if request.query.get("gzip"):
        response.enable_compression(web.ContentCoding.gzip)
    await response.prepare(request)
    for i in range(20):
        await response.write(b"data: %d\n\n" % i)
    await response.write_eof()
    return response


async def test_against_aiohttp_streams_compressed_or_not_on_one_connection() -> None:
    app = web.Application()
    app.router.add_get("/stream", stream_handler)
    async with serving(app) as url, pooled() as pool:
        expected = b"".join(b"data: %d\n\n" % i for i in range(20))
        for query in ("", "?gzip=1", "", "?gzip=1"):
            response, body = await fetch(pool, url + "/stream" + query)
            assert (response.status, response.content_type, body) == (200, "text/event-stream", expected)
            assert response.headers.get("Content-Encoding") == ("gzip" if query else None)
        assert pool.opened == 1
