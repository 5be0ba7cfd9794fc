"""A small Redis/Valkey client (RESP2) for the limits store: one connection, every command pipelined on it.

The commands written in one turn of the loop leave together at its end, and their replies are matched to
them in order, so calls in flight at once share one connection (and its system calls) without waiting for
each other. It is all the limits store needs (scripts and their replies) and costs a fraction of a general
client's CPU per command, which the request path pays for twice.
URLs: `redis://[[user]:password@]host[:port][/db]`, `rediss://` (TLS), `unix:///path[?db=N]`.

Each command is sent with a deadline. One timer per connection watches them (not one per command: a timer
costs more than the rest of a command's CPU): a command still unanswered at its deadline fails, and with it
the connection and every command waiting on it; the next command connects anew. A command whose caller
stopped waiting (cancelled) keeps its place: its reply, when it comes, is dropped.
"""

from __future__ import annotations

import asyncio
import collections
import math
import ssl
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

Reply = Any  # int, bytes, str, None, a list of replies, or a ReplyError
_INT, _BULK, _ARRAY, _STATUS, _ERROR = b":$*+-"


class ReplyError(Exception):
    """An error the server answered (`-ERR ...`, `-NOSCRIPT ...`)."""


class _Protocol(asyncio.Protocol):
    """Reads replies off the connection and hands each to the command waiting longest."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiting: collections.deque[tuple[asyncio.Future[Reply], float]] = collections.deque()
        self.buffer = b""
        self.lost = False
        self._unsent: list[bytes] = []  # commands written in this turn of the loop, sent together at its end
        self._watch: asyncio.TimerHandle | None = None
        self._watch_at = math.inf

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio's classes

    def data_received(self, data: bytes) -> None:
        buffer, at = self.buffer + data if self.buffer else data, 0
        while at < len(buffer):
            parsed = _parse(buffer, at)
            if parsed is None:
                break  # the rest of the reply is still on its way
            reply, at = parsed
            if self.waiting:
                future, _ = self.waiting.popleft()
                if not future.done():
                    future.set_result(reply)
        self.buffer = buffer[at:]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.fail(ConnectionError(f"the store closed the connection: {exc}"))

    def expect(self, deadline: float) -> asyncio.Future[Reply]:
        """The future of the reply to the next command written, which fails at `deadline` (loop time)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.waiting.append((future, deadline))
        if deadline < self._watch_at:
            self._arm(loop, deadline)
        return future

    def write(self, data: bytes) -> None:
        """Send `data` at the end of this turn of the loop, with every command written in it: one system
        call for all the calls admitted in a turn, where each of them cost one (and the server's reading
        and answering one), the larger part of what a command costs the gateway."""
        if not self._unsent:
            asyncio.get_running_loop().call_soon(self._send)
        self._unsent.append(data)

    def _send(self) -> None:
        unsent, self._unsent = self._unsent, []
        if self.transport is not None and not self.lost:  # else their commands have failed already
            self.transport.write(b"".join(unsent) if len(unsent) > 1 else unsent[0])

    def fail(self, exc: Exception) -> None:
        """Fail every command waiting and give the connection up."""
        self.lost = True
        if self._watch is not None:
            self._watch.cancel()
            self._watch, self._watch_at = None, math.inf
        while self.waiting:
            future, _ = self.waiting.popleft()
            if not future.done():
                future.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()

    def _arm(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        if self._watch is not None:
            self._watch.cancel()
        self._watch, self._watch_at = loop.call_at(deadline, self._check), deadline

    def _check(self) -> None:
        """At the earliest deadline known: fail the connection if a command passed its own, else watch on."""
        self._watch, self._watch_at = None, math.inf
        if not self.waiting:
            return
        loop = asyncio.get_running_loop()
        first = min(deadline for _, deadline in self.waiting)
        if first <= loop.time():
            self.fail(TimeoutError("the store did not answer in time"))
        elif first < math.inf:
            self._arm(loop, first)


def pack(*args: Any) -> bytes:
    """One command in RESP: an array of bulk strings."""
    return head(len(args)) + b"".join(map(_bulk, args))


def head(count: int) -> bytes:
    """The head of a command of `count` arguments, which follow it as `bulks`."""
    return b"*%d\r\n" % count


def bulks(*args: str | int) -> bytes:
    """Arguments of a command as RESP bulk strings, one after another: written as one text and encoded once
    when it is ASCII (keys and ids nearly always are), at a fraction of the cost of encoding each."""
    text = "".join([f"${len(arg)}\r\n{arg}\r\n" for arg in map(str, args)])
    return text.encode() if text.isascii() else b"".join(map(_bulk, args))


def _bulk(arg: Any) -> bytes:
    data = arg if isinstance(arg, bytes) else str(arg).encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


def _parse(buffer: bytes, start: int) -> tuple[Reply, int] | None:
    """The reply starting at `start` and where it ends; None while it is incomplete."""
    line_end = buffer.find(b"\r\n", start)
    if line_end < 0:
        return None
    kind, line, after = buffer[start], buffer[start + 1 : line_end], line_end + 2
    if kind == _INT:
        return int(line), after
    if kind == _ARRAY:
        return _array(buffer, int(line), after)
    if kind == _BULK:
        size = int(line)
        if size < 0:
            return None, after
        if len(buffer) < after + size + 2:
            return None
        return buffer[after : after + size], after + size + 2
    if kind == _STATUS:
        return line.decode(), after
    if kind == _ERROR:
        return ReplyError(line.decode(errors="replace")), after
    raise ConnectionError(f"the store sent something that is not RESP: {buffer[start : start + 20]!r}")


def _array(buffer: bytes, count: int, at: int) -> tuple[list[Reply], int] | None:
    """An array's `count` items from `at`; integers (all a script answers) read here, the rest by `_parse`."""
    items: list[Reply] = []
    for _ in range(count):
        line_end = buffer.find(b"\r\n", at)
        if line_end < 0:
            return None
        if buffer[at] == _INT:
            items.append(int(buffer[at + 1 : line_end]))
            at = line_end + 2
            continue
        parsed = _parse(buffer, at)
        if parsed is None:
            return None
        item, at = parsed
        items.append(item)
    return items, at


class Client:
    """Commands to one server over one connection, opened at the first command and after a failure."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None

    async def request(self, data: bytes, deadline: float) -> Reply:
        """Send one packed command; its reply (an error answered is returned, not raised). `deadline` is in
        the loop's time: past it, the command fails with TimeoutError."""
        protocol = self._protocol
        if protocol is None or protocol.lost:
            protocol = await self._connection(deadline)
        future = protocol.expect(deadline)
        protocol.write(data)
        return await future

    async def pipeline(self, commands: list[bytes], deadline: float) -> list[Reply]:
        """Send packed `commands` in one write; their replies in order (errors returned, not raised)."""
        protocol = self._protocol
        if protocol is None or protocol.lost:
            protocol = await self._connection(deadline)
        futures = [protocol.expect(deadline) for _ in commands]
        protocol.write(b"".join(commands))
        # gather(): when the connection fails, every future fails, and each failure is retrieved.
        return list(await asyncio.gather(*futures))

    async def execute(self, *args: Any, timeout_s: float = math.inf) -> Reply:
        """Send one command and return its reply; a ReplyError is raised."""
        reply = await self.request(pack(*args), asyncio.get_running_loop().time() + timeout_s)
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    async def close(self) -> None:
        if self._protocol is not None:
            self._protocol.fail(ConnectionError("the client was closed"))
            self._protocol = None

    async def _connection(self, deadline: float) -> _Protocol:
        self._connecting = self._connecting or asyncio.Lock()
        async with self._connecting:  # the calls waiting meanwhile share the one connection made
            if self._protocol is None or self._protocol.lost:
                async with asyncio.timeout_at(deadline if deadline < math.inf else None):
                    self._protocol = await self._connect(deadline)
            return self._protocol

    async def _connect(self, deadline: float) -> _Protocol:
        url, loop = urlsplit(self.url), asyncio.get_running_loop()
        if url.scheme == "unix":
            _, protocol = await loop.create_unix_connection(_Protocol, url.path)
            db = parse_qs(url.query).get("db", ["0"])[0]
        else:
            tls = ssl.create_default_context() if url.scheme == "rediss" else None
            host, port = url.hostname or "127.0.0.1", url.port or 6379
            _, protocol = await loop.create_connection(_Protocol, host, port, ssl=tls)
            db = url.path.strip("/") or "0"
        hello: list[tuple[Any, ...]] = []
        if url.password is not None:
            user = unquote(url.username) if url.username else None
            hello.append(("AUTH", user, unquote(url.password)) if user else ("AUTH", unquote(url.password)))
        if db != "0":
            hello.append(("SELECT", db))
        futures = [protocol.expect(deadline) for _ in hello]  # a hung server: the connection is given up
        if hello:
            protocol.write(b"".join(pack(*command) for command in hello))
        for reply in await asyncio.gather(*futures):
            if isinstance(reply, ReplyError):
                protocol.fail(ConnectionError("the store refused the connection"))
                raise reply
        return protocol
