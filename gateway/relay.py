"""Relaying a stream: upstream SSE events to the client as they arrive, and a copy to the call's records.

Each piece of the upstream body is split into whole events, scrubbed, written to the client's socket and
teed to the call's `Answer` in the upstream connection's own callback (`Response.pump`). No task wakes and
no coroutine runs per chunk: a gateway holding thousands of streams spends its core on their bytes, not on
scheduling them. The request's task waits once, for the stream's end, and wakes before it only when the
client reads slower than the upstream writes (the upstream socket is paused until the client catches up).

The events go out before they are teed: the log tee sits beside the stream, never in front of it.

`data: [DONE]` is the last event of an OpenAI stream: it goes out with the end of the client's body in the
same write, without waiting for the upstream's own end. The client's answer is whole (and its connection free
for its next call) at once; what the upstream still sends, or fails with, is the records' alone. It has
DONE_GRACE_S to end its body: an upstream that keeps it open past that is cut off, so that the call (its
slot under the limits, and the client's next call on the same connection) is not held until the deadline.
The call is timed to the client's last byte all the same. When the upstream's body ends, the request's task
wakes through the pool's `EndPacer`: with thousands of streams ending at once, a slice of them per loop turn,
so that their handlers' returns, records and metrics do not hold back the chunks of the streams still going.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable

from aiohttp import web
from aiohttp.http import StreamWriter

from gateway.calls import Call
from gateway.dialects import dialect_of
from gateway.edge import LinesStreamResponse
from gateway.errors import GatewayError, UpstreamTimeout, UpstreamTooLarge
from gateway.http1 import Response
from gateway.sse import DONE, EventSplitter, EventTooLarge, error_event, event_data
from gateway.state import RATE_HEADERS, Gateway

SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
CLIENT_HIGH_WATER = 64 * 1024  # bytes queued for a client before its upstream is paused (aiohttp's own)
DONE_GRACE_S = 5.0  # after [DONE] ended the client's body, the longest the upstream may take to end its own
_EMPTY_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')


async def relay_stream(
    gw: Gateway, request: web.Request, call: Call, upstream: Response, strip_usage: bool
) -> web.StreamResponse:
    """Forward SSE events as they arrive; a failure after the first byte ends with one error event."""
    response = LinesStreamResponse(status=200, headers=SSE_HEADERS)
    response.head_lines = request[RATE_HEADERS]
    writer = await response.prepare(request)
    assert isinstance(writer, StreamWriter)  # a response prepared once, on aiohttp's own connection
    writer.send_headers()  # the status goes out now, not with the first event
    call.status = 200
    relay = StreamRelay(gw, call, writer, upstream, strip_usage)
    gauge = gw.metrics.stream_gauge(call.provider or "", call.model)
    gauge.inc()
    try:
        await gw.upstream.relay(upstream, call.provider or "", call.deadline, relay, writer.drain)
        relay.finish()
        await response.write_eof()  # nothing more to write when [DONE] ended the body
    except GatewayError as exc:
        upstream.close()  # an upstream cut off mid-answer is not left to go on sending
        call.error = exc.message
        relay.release()  # text held back in case it was markup is the model's: it goes out first
        if not relay.ended:  # after [DONE] the client's answer was whole: the failure is the records'
            await response.write(_error_event(call, exc))
        await response.write_eof()
    except ConnectionResetError:
        call.client_disconnected = True
    finally:
        relay.stop_grace()
        gauge.dec()
    return response


class StreamRelay:
    """The sink `Response.pump` hands each piece of an upstream stream to, in the connection's callback."""

    __slots__ = (
        "add", "call", "chunked", "ended", "grace", "repair", "scrub", "splitter", "strip_usage", "upstream",
        "writer",
    )  # fmt: skip

    def __init__(
        self, gw: Gateway, call: Call, writer: StreamWriter, upstream: Response, strip_usage: bool
    ) -> None:
        self.call = call
        self.writer = writer
        self.upstream = upstream
        self.chunked = writer.chunked  # HTTP/1.1: each write is one chunk; HTTP/1.0: bytes until the close
        self.splitter = EventSplitter(gw.config.upstream.max_event_bytes)
        self.repair = call.tool_repair
        self.strip_usage = (
            strip_usage  # the usage chunk the gateway asked for is the records', not the client's
        )
        self.scrub = gw.scrubber.stream
        self.add = call.answer.add_chunk
        self.ended = False  # the client's body has ended, with [DONE]
        self.grace: asyncio.TimerHandle | None = None  # from then on, for the upstream to end its own

    def __call__(self, data: bytes) -> bool:
        """Relay one piece of the body; True when the client's socket is full and the upstream must wait."""
        call = self.call
        if call.first_byte is None:
            call.first_byte = time.perf_counter()
        try:
            events = self.splitter.feed(data)
        except EventTooLarge as exc:
            raise UpstreamTooLarge(
                f"The provider {call.provider!r} sent an event over {self.splitter.max_event_bytes} bytes.",
                code="upstream_event_too_large",
            ) from exc
        return self.send(self.repair.feed(events) if self.repair else events) if events else False

    def finish(self) -> None:
        """At the stream's end: an event the upstream left unterminated, then whatever repair still holds."""
        if tail := self.splitter.flush():
            self.send(self.repair.feed([tail]) if self.repair else [tail])
        self.release()

    def release(self) -> None:
        """Text the tool-call repair held back in case it was markup: it is the model's, so it goes out."""
        if self.repair is not None:
            self.send(self.repair.finish())

    def stop_grace(self) -> None:
        if self.grace is not None:
            self.grace.cancel()

    def _overdue(self) -> None:
        """The upstream kept its body open DONE_GRACE_S after [DONE]: its answer fails, for the records."""
        if not self.upstream.closed and not self.upstream.complete:
            provider = self.call.provider
            message = f"The provider {provider!r} kept its answer open {DONE_GRACE_S:g} s after [DONE]."
            self.upstream.set_exception(UpstreamTimeout(message))

    def send(self, events: list[bytes]) -> bool:
        """Write `events` to the client, then tee them to the answer; True when its socket is full."""
        kept = [e for e in events if not _usage_only(e)] if self.strip_usage else events
        full = False
        if kept and not self.ended:
            data = self.scrub(kept[0] if len(kept) == 1 else b"".join(kept))
            full = self._write(data, self.chunked and DONE in kept[-1] and event_data(kept[-1]) == DONE)
        add = self.add
        for event in events:  # the tee: the answer is rebuilt after the bytes went out
            payload = event_data(event)
            if payload and payload != DONE:
                tee(self.call, add, payload)
        return full

    def _write(self, data: bytes, last: bool = False) -> bool:
        # aiohttp's `StreamWriter.write` is a coroutine; this is its synchronous core for a prepared,
        # uncompressed response whose head has been sent: frame the chunk, write it, count it. The `last`
        # chunk carries the body's end as `write_eof` writes it, and leaves the writer ended, as it does.
        writer = self.writer
        transport = writer.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("The client closed the connection.")
        if not self.chunked:
            transport.write(data)
        elif last:
            transport.write(b"%x\r\n%b\r\n0\r\n\r\n" % (len(data), data))
            writer._eof = self.ended = True  # the `write_eof` to come has nothing left to write
            self.call.ended = time.perf_counter()  # the client's last byte: the call's latency ends here
            self.grace = asyncio.get_running_loop().call_later(DONE_GRACE_S, self._overdue)
        else:
            transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        writer.output_size += len(data)
        return transport.get_write_buffer_size() > CLIENT_HIGH_WATER


def tee(call: Call, fold: Callable[[bytes], object], data: bytes) -> None:
    """Fold upstream bytes into the record's answer; whatever that fails on, the client is not affected."""
    try:
        fold(data)
    except Exception:  # the record says what it could not read; the client already has the bytes
        call.answer.bad_chunks += 1


def _error_event(call: Call, exc: GatewayError) -> bytes:
    """The gateway's error as one event of the stream's own dialect."""
    dialect = dialect_of(call.endpoint)
    return error_event(exc.body()) if dialect is None else dialect.error_event(exc.body())


def _usage_only(event: bytes) -> bool:
    """The usage chunk the gateway asked for: `"choices": []` with a `usage` object."""
    return b'"usage"' in event and _EMPTY_CHOICES.search(event) is not None
