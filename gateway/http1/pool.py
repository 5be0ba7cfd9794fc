"""Kept-alive connections per origin, bounded in number; requests written in one buffer."""

from __future__ import annotations

import asyncio
import collections
import re
import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohappyeyeballs
from yarl import URL

from gateway.http1.connection import Connection
from gateway.http1.errors import ConnectFailed, Disconnected, ProtocolError, Stale
from gateway.http1.pacer import EndPacer
from gateway.http1.response import Response

_OWN = frozenset({"content-length", "transfer-encoding", "host"})  # request headers only the client writes
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # what RFC 9110 allows in a header name
TRIM_SLICE = 256  # idle connections past the cap closed in one loop turn, between other work


@dataclass(frozen=True, slots=True)
class _Target:
    origin: tuple[str, str, int]
    host: str
    port: int
    tls: bool
    start: str  # request line and Host header, up to the caller's headers


class Pool:
    """Kept-alive connections per origin (scheme, host, port), most recently used first.

    `max_connections` (0: no limit) bounds the connections open at once over every origin; a request
    beyond it waits for one to close or come back idle. Idle connections older than `keepalive_s` are
    closed when next looked at, and one whose peer closed it between two requests is replaced once.

    An origin keeps at most `max_idle_per_origin` idle connections, past the `trim_after_s` that follow
    the moment it went over: the end of a burst (thousands of streams ending together) does not close
    thousands of sockets in the turns that relay the other streams' last chunks, and a burst that comes
    back within that time finds its connections open. What is over the cap then closes oldest first, a
    slice of TRIM_SLICE per loop turn. No more is ever open than the burst itself held.
    """

    def __init__(
        self,
        *,
        max_connections: int = 0,
        connect_timeout_s: float = 10.0,
        keepalive_s: float = 60.0,
        max_idle_per_origin: int = 1024,
        trim_after_s: float = 1.0,
        user_agent: str = "open-llm-proxy",
        ssl_context: ssl.SSLContext | None = None,
        dns_ttl_s: float = 300.0,
    ) -> None:
        self.max_connections = max_connections
        self.dns_ttl_s = dns_ttl_s
        self.connect_timeout_s = connect_timeout_s
        self.keepalive_s = keepalive_s
        self.max_idle_per_origin = max_idle_per_origin
        self.trim_after_s = trim_after_s
        self._trimming: asyncio.Handle | None = None
        self.ends = EndPacer()  # the readers of relayed bodies that ended, woken a slice per loop turn
        self.user_agent = user_agent
        self._ssl = ssl_context
        # Per origin, oldest first: an ordered dict, so that a connection lost while idle (or not: one the
        # cap has just closed) is found and removed at once, where a queue of a thousand would be scanned.
        self._idle: dict[tuple[str, str, int], collections.OrderedDict[Connection, None]] = {}
        self._open: set[Connection] = set()
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._connecting = 0
        self._targets: dict[tuple[str, str], _Target] = {}
        self.opened = 0  # connections made over the pool's life
        self.lookups = 0  # name resolutions asked of the system
        self.closed = False
        self._addresses: dict[tuple[str, int], tuple[float, list[Any]]] = {}
        self._resolving: dict[tuple[str, int], asyncio.Future[list[Any]]] = {}
        self._swept = time.monotonic()

    async def request(self, method: str, url: str, headers: Mapping[str, str], body: bytes = b"") -> Response:
        """Send one request and return the answer once its headers arrived (any status)."""
        if self.closed:
            raise ConnectFailed("The connection pool is closed.")
        target = self._target(method, url)
        data = _encode(target.start, headers, self.user_agent, body)
        for fresh in (False, True):  # a request a kept-alive connection dropped goes again on a new one
            conn = None if fresh else self._take(target.origin)
            if conn is None:
                conn = await self._connect(target, fresh)
            try:
                return await conn.send(data)
            except Stale:
                continue
            except BaseException:
                conn.abort()  # cancelled or failed mid-request: the connection's state is unknown
                raise
        raise Disconnected("The upstream closed the connection without answering.")

    def put(self, conn: Connection) -> None:
        conn.reused, conn.idle_since = True, time.monotonic()
        idle = self._idle.get(conn.origin)
        if idle is None:
            idle = self._idle[conn.origin] = collections.OrderedDict()
        idle[conn] = None
        if len(idle) > self.max_idle_per_origin and self._trimming is None:
            self._trimming = asyncio.get_running_loop().call_later(self.trim_after_s, self._trim)
        if conn.idle_since - self._swept > self.keepalive_s:
            self._sweep(conn.idle_since)
        self._wake_one()

    def _sweep(self, now: float) -> None:
        """Close what sat idle past `keepalive_s` at every origin, those no call has asked for since too."""
        self._swept = now
        for idle in self._idle.values():
            _close_older(idle, now - self.keepalive_s)

    def _trim(self) -> None:
        """Close idle connections past each origin's cap, oldest first: a slice now, the rest next turn."""
        self._trimming = None
        budget, cap = TRIM_SLICE, self.max_idle_per_origin
        for idle in self._idle.values():
            while len(idle) > cap and budget:
                idle.popitem(last=False)[0].abort()
                budget -= 1
        if not budget and any(len(idle) > cap for idle in self._idle.values()):
            self._trimming = asyncio.get_running_loop().call_soon(self._trim)

    def forget(self, conn: Connection) -> None:
        self._open.discard(conn)
        idle = self._idle.get(conn.origin)
        if idle:
            idle.pop(conn, None)
        self._wake_one()

    async def close(self) -> None:
        """Close every connection and fail the requests waiting for one; the pool takes no more."""
        self.closed = True
        if self._trimming is not None:
            self._trimming.cancel()
        for conn in list(self._open):
            conn.abort()
        while self._waiters:
            if not (waiter := self._waiters.popleft()).done():
                waiter.set_exception(ConnectFailed("The connection pool is closed."))
        await asyncio.sleep(0)  # let the transports call connection_lost

    def _take(self, origin: tuple[str, str, int]) -> Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        _close_older(idle, time.monotonic() - self.keepalive_s)
        while idle:  # one aborted this loop turn (it sent bytes after its answer) is forgotten only later
            conn = idle.popitem()[0]
            if conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    async def _connect(self, target: _Target, fresh: bool) -> Connection:
        """A new connection to `target`; at the limit, unless `fresh`, one of its own come back idle."""
        while self.max_connections and len(self._open) + self._connecting >= self.max_connections:
            if not fresh and (conn := self._take(target.origin)) is not None:
                return conn
            if not self._close_idle():
                await self._turn()
        self._connecting += 1  # a connection still connecting counts against the limit too
        try:
            conn = await self._dial(target)
        except BaseException:
            self._wake_one()  # the place it held is free again
            raise
        finally:
            self._connecting -= 1
        self._open.add(conn)
        self.opened += 1
        return conn

    async def _turn(self) -> None:
        """Wait until a connection closes or comes back idle."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._wake_one()  # woken, then cancelled before it could act: the turn goes to the next
            raise

    async def _dial(self, target: _Target) -> Connection:
        loop = asyncio.get_running_loop()
        tls = (self._ssl or _default_tls()) if target.tls else None
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                infos = await self._resolve(target.host, target.port)
                # Happy eyeballs: a host whose IPv6 route is dead still connects over IPv4 at once.
                sock = await aiohappyeyeballs.start_connection(infos, happy_eyeballs_delay=0.25)
                try:
                    transport, conn = await loop.create_connection(
                        lambda: Connection(self, target.origin),
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
        return conn

    async def _resolve(self, host: str, port: int) -> list[Any]:
        """`host`'s addresses, kept `dns_ttl_s`: a burst of new connections (thousands of streams opening
        at once) asks the resolver once, not once each, and never through a cluster's DNS search path N times.
        """
        key = (host, port)
        cached = self._addresses.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        lookup = self._resolving.get(key)
        if lookup is None:
            self.lookups += 1
            loop = asyncio.get_running_loop()
            lookup = asyncio.ensure_future(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM))
            self._resolving[key] = lookup
            lookup.add_done_callback(lambda done: self._resolved(key, done))
        return await asyncio.shield(lookup)  # one waiter giving up does not cancel the others' lookup

    def _resolved(self, key: tuple[str, int], lookup: asyncio.Future[list[Any]]) -> None:
        del self._resolving[key]
        if lookup.cancelled() or lookup.exception() is not None:
            return  # not kept: the next connection asks again
        if len(self._addresses) >= 256:  # hosts come from the config: this only bounds the unexpected
            self._addresses.clear()
        self._addresses[key] = (time.monotonic() + self.dns_ttl_s, lookup.result())

    def _close_idle(self) -> bool:
        """Close the longest-idle connection of any origin to make room; False when none is idle."""
        firsts = (next(iter(idle)) for idle in self._idle.values() if idle)
        oldest = min(firsts, key=lambda c: c.idle_since, default=None)
        if oldest is None:
            return False
        del self._idle[oldest.origin][oldest]
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
    """The request's bytes: one buffer, so one write; a header that would split the head is refused.

    The body's framing is the client's alone: a caller's Content-Length or Transfer-Encoding could only
    contradict the one written here, and two lengths are what request smuggling is made of.
    """
    names = [name.lower() for name in headers]  # once: the framing filter and the User-Agent check use it
    fields = [item for item, name in zip(headers.items(), names, strict=True) if name not in _OWN]
    if not all(_TOKEN.fullmatch(name) for name, _ in fields):
        raise ProtocolError("A request header's name is not a valid HTTP field name.")
    lines = "".join([f"{name}: {value}\r\n" for name, value in fields])
    if lines.count("\n") != len(fields) or lines.count("\r") != len(fields) or "\0" in lines:
        raise ProtocolError("A request header holds a line break or a NUL byte.")
    if "user-agent" not in names:
        lines += f"User-Agent: {user_agent}\r\n"
    head = f"{start}{lines}Content-Length: {len(body)}\r\n\r\n".encode("utf-8", "surrogateescape")
    return head + body


_TLS: list[ssl.SSLContext] = []


def _default_tls() -> ssl.SSLContext:
    """The system's trust store, verified hostnames; built once, on the first https call."""
    if not _TLS:
        _TLS.append(ssl.create_default_context())
    return _TLS[0]


def _close_older(idle: collections.OrderedDict[Connection, None], since: float) -> None:
    """Close the idle connections (oldest first) that have been idle since before `since`."""
    while idle and next(iter(idle)).idle_since < since:
        idle.popitem(last=False)[0].abort()
