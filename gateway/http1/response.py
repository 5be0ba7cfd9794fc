"""One answer: status and headers at once, the body handed over as it arrives, bounded as it is."""

from __future__ import annotations

import asyncio
import collections
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.http1.errors import ProtocolError

if TYPE_CHECKING:
    from gateway.http1.connection import Connection

HIGH_WATER = 256 * 1024  # body bytes buffered before the socket is paused
INFLATE_PIECE = 256 * 1024  # most bytes one read inflates from a compressed body
_INFLATED = frozenset({"gzip", "x-gzip", "deflate"})

Sink = Callable[[bytes], bool]  # takes a piece of the body; True when it can take no more for now


class Response:
    """One answer: its status and headers at once, its body as `readany()` hands it over."""

    __slots__ = (
        "_buffer",
        "_conn",
        "_encoded",
        "_exc",
        "_inflate",
        "_pending",
        "_sink",
        "_size",
        "_waiter",
        "complete",
        "headers",
        "reason",
        "status",
    )

    def __init__(self, conn: Connection, status: int, reason: str, headers: CIMultiDict[str]) -> None:
        self._conn: Connection | None = conn
        self.status, self.reason, self.headers = status, reason, CIMultiDictProxy(headers)
        self._buffer: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._sink: Sink | None = None  # while `pump` waits: takes each piece in the connection's callback
        self.complete = False  # the whole body arrived (it may still be buffered here)
        encoding = headers.get("Content-Encoding", "").strip().lower()
        self._encoded = encoding in _INFLATED
        # Made on the first compressed byte: an empty body (a 204, say) labelled gzip is empty, not cut short.
        self._inflate: zlib._Decompress | None = None
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
        return self.complete and self._exc is None and not self._encoded

    def read_nowait(self) -> bytes:
        """Everything buffered, at once (only for a plain body; `readany` inflates)."""
        data = self._take()
        self._drained()
        return data

    async def readany(self) -> bytes:
        """The next bytes of the body; b"" at its end. Raises what `set_exception` set, or HTTPError."""
        while True:
            if self._exc is not None:
                raise self._exc
            if self._encoded and (self._pending or self._buffer):
                if out := self._inflate_piece():
                    return out
                continue  # input that made no output yet (a gzip header): take more, or wait for it
            if self._buffer:
                data = self._take()
                self._drained()
                return data
            if self.complete:
                return self._finish_inflate()
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def pump(self, sink: Sink) -> bool:
        """Hand the body to `sink` as it arrives, from the connection's own callback: no task wakes per piece.

        True once the whole body went to `sink`. False when `sink` returned True (its reader is slow): the
        socket is paused until the next `pump`. Raises what `readany` raises, and whatever `sink` raised,
        after which nothing more is handed to it. At the body's end the reader wakes through the pool's
        `EndPacer`: with thousands ending at once, a slice of them per turn of the loop.
        """
        if self._encoded:  # inflated a bounded piece per read, as `readany` does
            while data := await self.readany():
                if self._give(sink, data):
                    return False
            return True
        while True:
            if self._exc is not None:
                raise self._exc
            if self._buffer:  # what arrived before (with the headers) or while the sink was full
                if self._give(sink, self._take()):
                    if self._conn is not None:
                        self._conn.pause()
                    return False
                continue
            if self.complete:
                return True
            self._drained()  # paused by a full buffer or a full sink: both are empty now
            self._sink = sink
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = self._sink = None

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
        if (sink := self._sink) is not None:
            try:
                full = sink(data)
            except Exception as exc:  # the sink's own failure ends the body for its reader
                self._sink = None
                self._end_reading(exc)
                return
            if full:
                self._sink = None  # the rest of this packet waits here, with the socket paused
                self._end_reading(None)
            return
        self._buffer.append(data)
        self._size += len(data)
        if self._size > HIGH_WATER and self._conn is not None:
            self._conn.pause()
        self._wake()

    def _end(self, exc: BaseException | None = None) -> None:
        conn, self._conn = self._conn, None
        if exc is None:
            self.complete = True
        elif self._exc is None:
            self._exc = exc
        waiter = self._waiter
        if self._sink is not None and waiter is not None and not waiter.done() and conn is not None:
            conn.pool.ends.wake(waiter)  # a relayed body's reader: woken with the others that end now
        else:
            self._wake()

    def _give(self, sink: Sink, data: bytes) -> bool:
        """`sink(data)`, from `pump`; what the sink raises fails the body, as it does from `_feed`."""
        try:
            return sink(data)
        except Exception as exc:
            self._end_reading(exc)
            raise

    def _end_reading(self, exc: BaseException | None) -> None:
        """Stop the socket and wake `pump`: to raise `exc`, or (None) because its sink is full."""
        if exc is not None and self._exc is None:
            self._exc = exc
        if self._conn is not None:
            self._conn.pause()
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _take(self) -> bytes:
        """Everything buffered, at once, the buffer emptied (the socket is resumed by `_drained`)."""
        buffer = self._buffer
        data = buffer.popleft() if len(buffer) == 1 else b"".join(buffer)
        buffer.clear()
        self._size = 0
        return data

    def _drained(self) -> None:
        if self._conn is not None:
            self._conn.resume()

    def _inflate_piece(self) -> bytes:
        if self._inflate is None:
            self._inflate = zlib.decompressobj(47)  # 47: a gzip or a zlib header, whichever comes
        if not self._pending:
            self._pending = self._take()
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
