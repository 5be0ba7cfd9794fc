"""A lean HTTP/1.1 streaming client for the hold: one asyncio.Protocol per stream, no coroutine per chunk.

At 8,000 streams of a chunk every 400 ms, 20,000 chunks a second arrive. aiohttp's client spends tens of
microseconds on each (its parser, a stream reader, a coroutine resumed), which on the harness core it shares
with the upstream would be the bottleneck of the direct run itself. Here a chunk costs one `data_received`
call: its time is taken and its bytes kept; the answer is checked once it has ended.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, cast

from yarl import URL

END = b"\r\n0\r\n\r\n"  # the last chunk of a chunked body
DONE = b"data: [DONE]"
WHOLE_END = DONE + b"\n\n" + END  # a whole stream ends with [DONE], then the last chunk


class Tally(Protocol):
    """Where a stream reports: its first chunk, each gap after it, and how it ended."""

    def opened(self, now: float) -> None: ...
    def gap(self, seconds: float, last: bool) -> None: ...
    def ended(self, error: str | None, body: bytes, opened: bool) -> None: ...


def http_request(url: str, headers: dict[str, str], body: bytes) -> bytes:
    """One POST with a Content-Length, as bytes for the wire."""
    target = URL(url)
    lines = [f"POST {target.raw_path_qs} HTTP/1.1", f"Host: {target.host}:{target.port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines += [f"Content-Length: {len(body)}", "", ""]
    return "\r\n".join(lines).encode() + body


class Stream(asyncio.Protocol):
    """One streamed call: the request goes out on connect, every read after the first two is timed."""

    def __init__(self, request: bytes, tally: Tally) -> None:
        self.request, self.tally = request, tally
        self.head = b""
        self.status = 0
        self.parts: list[bytes] = []
        self.last = 0.0
        self.tail = b""
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        if not self.status:
            self.head += data
            if (end := self.head.find(b"\r\n\r\n")) < 0:
                return
            self.status = int(self.head[9:12])
            data, self.head = self.head[end + 4 :], b""
            if self.status != 200:
                return self.finish(f"HTTP {self.status}")
            if not data:
                return None
        if not self.parts:
            self.tally.opened(now)
        elif len(self.parts) > 1:  # the first gap is the pause every stream was asked for
            self.tally.gap(now - self.last, DONE in data)
        self.last = now
        self.parts.append(data)
        tail = self.tail + data
        if tail.endswith(END):
            self.finish(None)
        self.tail = tail[-len(END) :]
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.finish(type(exc).__name__ if exc else "closed before the end")

    def finish(self, error: str | None) -> None:
        """Report once. The connection stays open, as a client's pooled one would, until `close`."""
        if self.done.done():
            return
        self.tally.ended(error, b"".join(self.parts), bool(self.parts))
        self.done.set_result(None)

    def close(self) -> None:
        """Close the connection, once the measured part of the load is over."""
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Give up on a stream past its deadline (stalled)."""
        if not self.done.done():
            self.done.set_result(None)
        if self.transport is not None:
            self.transport.abort()


async def connect(stream: Stream, url: str) -> None:
    """Open the stream's connection; a failure to connect ends it."""
    target = URL(url)
    assert target.host, url
    try:
        await asyncio.get_running_loop().create_connection(lambda: stream, target.host, target.port or 80)
    except OSError as exc:
        stream.finish(type(exc).__name__)
