"""The client connections a process holds, and the most it keeps.

Every connection holds a descriptor until it closes, and a stream holds a second one to its upstream. A client
that opens connections and sends nothing (or its headers a byte at a time) holds each until the header
timeout: enough of them would leave the process no descriptor for anyone's upstream, its spool or its
probes. So a process keeps at most `limit` client connections. Past it, an idle connection is closed to take
the new one in: idle is waiting for a request, whether a new connection, one between two keep-alive requests,
or one still sending its headers. The one closed belongs to the client holding the most connections (an
address, or an IPv6 /64), and is the one of its connections idle the longest: a client flooding the gateway
with connections loses its own, not anyone else's. A connection whose call is being handled is never closed
for another, nor one whose answer is still being written: when every other is busy, the newcomer is.
"""

from __future__ import annotations

import ipaddress
import resource
from collections.abc import Callable

from aiohttp import web

# Descriptors kept for everything but client connections: the listening sockets, the spool, the log shipper's
# and the limits store's connections, files read at start.
RESERVED_FILES = 256
MOST_BY_DEFAULT = 16_384  # an idle connection holds about 5 KB: this many, under 100 MB of a worker


def default_limit() -> int:
    """Half the open-files limit less RESERVED_FILES (each client connection may need an upstream one),
    at most MOST_BY_DEFAULT."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MOST_BY_DEFAULT
    return max(1, min(MOST_BY_DEFAULT, (soft - RESERVED_FILES) // 2))


def client_of(handler: web.RequestHandler) -> str | bytes:
    """Who holds the connection: its peer's address, or the /64 an IPv6 address belongs to (one host may hold
    a whole /64)."""
    transport = handler.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    if not isinstance(peer, tuple) or not peer or not isinstance(peer[0], str):
        return ""  # a Unix socket, or gone already: all such connections count as one client
    host = peer[0]
    if ":" not in host:
        return host  # IPv4
    try:
        address = ipaddress.IPv6Address(host.partition("%")[0])  # without its zone
    except ValueError:
        return host
    return host if address.ipv4_mapped is not None else address.packed[:8]


class _Client:
    """One client's connections: how many are open, and the idle ones, the longest idle first."""

    __slots__ = ("idle", "key", "open")

    def __init__(self, key: str | bytes) -> None:
        self.key = key
        self.open = 0
        self.idle: dict[web.RequestHandler, None] = {}


class Connections:
    """The open client connections, by client; closes one past `limit` (0: no limit)."""

    def __init__(self, limit: int = 0, on_close: Callable[[], object] | None = None) -> None:
        self.limit = limit
        self.open = 0
        self.closed_idle = 0  # connections closed to take a new one in
        self._on_close = on_close
        self._client_of: dict[web.RequestHandler, _Client] = {}
        self._clients: dict[str | bytes, _Client] = {}
        # The clients by how many connections each holds. Distinct counts are few (k of them add up to at
        # least k(k+1)/2 connections: under 200 for 16,384), so the heaviest are found by sorting them.
        self._holding: dict[int, dict[_Client, None]] = {}

    def opened(self, handler: web.RequestHandler) -> None:
        """A new connection, idle until its first request; past the limit, an idle one is closed."""
        key = client_of(handler)
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = _Client(key)
        self._client_of[handler] = client
        self._move(client, +1)
        client.idle[handler] = None
        self.open += 1
        if self.limit and self.open > self.limit:
            self._close_one()

    def lost(self, handler: web.RequestHandler) -> None:
        client = self._client_of.pop(handler, None)
        if client is None:
            return
        self.open -= 1
        client.idle.pop(handler, None)
        self._move(client, -1)
        if not client.open:
            del self._clients[client.key]

    def busy(self, handler: web.RequestHandler) -> dict[web.RequestHandler, None]:
        """A request arrived on it: it is no longer idle. Its client's idle connections are returned, for
        the server to put it back in once the request is handled (the latest to be idle), unless it has
        closed meanwhile: on every request, one lookup instead of two."""
        client = self._client_of.get(handler)
        if client is None:
            return {}
        client.idle.pop(handler, None)
        return client.idle

    def _move(self, client: _Client, by: int) -> None:
        """Count one connection more (or less) for `client`, keeping it in its place among the others."""
        holding = self._holding
        if client.open:
            alike = holding[client.open]
            del alike[client]
            if not alike:
                del holding[client.open]
        client.open += by
        if client.open:
            holding.setdefault(client.open, {})[client] = None

    def _close_one(self) -> None:
        """Close the longest idle connection of the client holding the most; of the next, if it has none."""
        for count in sorted(self._holding, reverse=True):
            for client in self._holding[count]:
                for handler in client.idle:
                    # An answer still in the write buffer (a client reading slowly) is passed over: a close
                    # sends the buffer first, so closing its connection would free nothing until then.
                    transport = handler.transport
                    if transport is not None and not transport.get_write_buffer_size():
                        del client.idle[handler]
                        self.closed_idle += 1
                        if self._on_close is not None:
                            self._on_close()
                        handler.force_close()
                        return
