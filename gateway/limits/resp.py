"""A small Redis/Valkey client (RESP2) for the limits store: one connection, every command pipelined on it.

Commands are written as they come and their replies matched to them in order, so calls in flight at once
share one connection without waiting for each other. It is all the limits store needs (scripts and their
replies) and costs a fraction of a general client's CPU per command, which the request path pays for twice.
URLs: `redis://[[user]:password@]host[:port][/db]`, `rediss://` (TLS), `unix:///path[?db=N]`.

A connection that fails, or a command that times out (the caller's deadline), closes the connection: every
command waiting on it fails at once, and the next command connects anew.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

Reply = Any  # int, bytes, str, None, a list of replies, or a ReplyError


class ReplyError(Exception):
    """An error the server answered (`-ERR ...`, `-NOSCRIPT ...`)."""


class _Protocol(asyncio.Protocol):
    """Reads replies off the connection and hands each to the command waiting longest."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiting: collections.deque[asyncio.Future[Reply]] = collections.deque()
        self.buffer = b""
        self.lost = False

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
                future = self.waiting.popleft()
                if not future.done():
                    future.set_result(reply)
        self.buffer = buffer[at:]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(ConnectionError(f"the store closed the connection: {exc}"))

    def send(self, *commands: tuple[Any, ...]) -> list[asyncio.Future[Reply]]:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in commands]
        self.waiting.extend(futures)
        self.transport.write(b"".join(pack(*command) for command in commands))
        return futures


def pack(*args: Any) -> bytes:
    """One command in RESP: an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _parse(buffer: bytes, start: int) -> tuple[Reply, int] | None:
    """The reply starting at `start` and where it ends; None while it is incomplete."""
    line_end = buffer.find(b"\r\n", start)
    if line_end < 0:
        return None
    kind, line, after = buffer[start : start + 1], buffer[start + 1 : line_end], line_end + 2
    if kind == b":":
        return int(line), after
    if kind == b"+":
        return line.decode(), after
    if kind == b"-":
        return ReplyError(line.decode(errors="replace")), after
    if kind == b"$":
        size = int(line)
        if size < 0:
            return None, after
        if len(buffer) < after + size + 2:
            return None
        return buffer[after : after + size], after + size + 2
    if kind == b"*":
        items: list[Reply] = []
        for _ in range(max(int(line), 0)):
            parsed = _parse(buffer, after)
            if parsed is None:
                return None
            item, after = parsed
            items.append(item)
        return items, after
    raise ConnectionError(f"the store sent something that is not RESP: {buffer[start : start + 20]!r}")


class Client:
    """Commands to one server over one connection, opened at the first command and after a failure."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None

    async def execute(self, *args: Any) -> Reply:
        """Send one command and return its reply; a ReplyError is raised."""
        [reply] = await self.pipeline([args])
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    async def pipeline(self, commands: list[tuple[Any, ...]]) -> list[Reply]:
        """Send `commands` in one write; their replies in order (errors returned, not raised)."""
        protocol = await self._connection()
        futures = protocol.send(*commands)
        try:
            return list(await asyncio.gather(*futures))
        except BaseException:  # a timeout or a failure: the replies still due would answer other commands
            self._drop(protocol)
            raise

    async def close(self) -> None:
        if self._protocol is not None:
            self._drop(self._protocol)

    async def _connection(self) -> _Protocol:
        if self._protocol is not None and not self._protocol.lost:
            return self._protocol
        self._connecting = self._connecting or asyncio.Lock()
        async with self._connecting:  # the calls waiting meanwhile share the one connection made
            if self._protocol is None or self._protocol.lost:
                self._protocol = await self._connect()
            return self._protocol

    async def _connect(self) -> _Protocol:
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
        for reply in await asyncio.gather(*protocol.send(*hello)) if hello else ():
            if isinstance(reply, ReplyError):
                self._drop(protocol)
                raise reply
        return protocol

    def _drop(self, protocol: _Protocol) -> None:
        if protocol.transport is not None:
            protocol.transport.abort()
        protocol.connection_lost(None)
        if self._protocol is protocol:
            self._protocol = None
