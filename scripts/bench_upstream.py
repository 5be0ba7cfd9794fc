"""A cheap OpenAI-compatible upstream for benchmarks: `POST /v1/chat/completions`, JSON or SSE.

The test suite's `tests/fake_upstream.py` keeps every request it sees and builds each answer afresh, which is
right for tests and wrong for a benchmark that sends tens of thousands of calls from the same core as the
load. This one uses aiohttp's low-level server (no router, no middleware, no access log), uvloop, bodies
serialised once per shape, and records nothing.

Stream shape per request, from optional body fields (the gateway forwards the client's bytes unchanged):
`mock_chunks` content chunks (default 20), `mock_chunk_delay_ms` between them (default 0: one write),
`mock_latency_ms` before the headers and `mock_pause_ms` after the first chunk (a stream open and silent).
Each stream is a role chunk, `tok0 ` .. `tok<N-1> ` content chunks, a finish chunk, a usage chunk
(`choices: []`) and `data: [DONE]`.

Run: `python scripts/bench_upstream.py --port 18000` (loopback only; port 0, the default, binds a free port).
It prints its URL once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import signal
from typing import Any

import orjson
from aiohttp import web

from gateway.server import settle_gc

CREATED = 1700000000
REPLY = "Hello from the bench upstream. " * 4


@functools.lru_cache(maxsize=64)
def completion(model: str) -> bytes:
    """The whole non-streamed answer for `model`."""
    message = {"role": "assistant", "content": REPLY}
    return orjson.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": CREATED,
            "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 24, "total_tokens": 36},
        }
    )


@functools.lru_cache(maxsize=64)
def stream_events(model: str, chunks: int) -> tuple[bytes, ...]:
    """Every SSE event of one streamed answer, in order."""
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": CREATED, "model": model}

    def event(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> bytes:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
        return b"data: " + orjson.dumps({**base, "choices": choices, **extra}) + b"\n\n"

    usage = {"prompt_tokens": 12, "completion_tokens": chunks, "total_tokens": 12 + chunks}
    return (
        event({"role": "assistant", "content": ""}),
        *(event({"content": f"tok{i} "}) for i in range(chunks)),
        event({}, "stop"),
        event(None, usage=usage),
        b"data: [DONE]\n\n",
    )


async def handle(request: web.BaseRequest) -> web.StreamResponse:
    if request.method != "POST" or not request.path.endswith("/chat/completions"):
        if request.method == "GET" and request.path in ("/health", "/v1/models"):
            return web.Response(body=b'{"status":"ok"}', content_type="application/json")
        return web.Response(status=404, body=b'{"error":{"message":"not found"}}')
    try:
        body = orjson.loads(await request.read())
        model = str(body.get("model") or "mock-gpt")
    except (orjson.JSONDecodeError, AttributeError):
        return web.Response(status=400, body=b'{"error":{"message":"invalid JSON body"}}')
    if latency := float(body.get("mock_latency_ms", 0)) / 1000:
        await asyncio.sleep(latency)
    if not body.get("stream"):
        return web.Response(body=completion(model), content_type="application/json")
    chunks, delay_ms = int(body.get("mock_chunks", 20)), body.get("mock_chunk_delay_ms", 0)
    pause = float(body.get("mock_pause_ms", 0)) / 1000
    return await _stream(request, model, (chunks, delay_ms, pause))


async def _stream(
    request: web.BaseRequest, model: str, shape: tuple[int, float, float]
) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    chunks, delay_ms, pause = shape
    events = stream_events(model, max(0, chunks))
    delay = float(delay_ms) / 1000
    if delay <= 0:
        await response.write(b"".join(events))
    else:
        # The role chunk and the first token go out at once (that is the time to first chunk), then one
        # token per delay; finish, usage and [DONE] leave together after the last one.
        head = 2 if chunks else 1
        await response.write(b"".join(events[:head]))
        if pause > 0:
            await asyncio.sleep(pause)
        for event in events[head : chunks + 1]:
            await asyncio.sleep(delay)
            await response.write(event)
        await asyncio.sleep(delay)
        await response.write(b"".join(events[chunks + 1 :]))
    await response.write_eof()
    return response


async def serve(host: str, port: int) -> None:
    runner = web.ServerRunner(web.Server(handle, access_log=None), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=4096).start()
    port = runner.addresses[0][1]  # the one bound, when asked for port 0
    settle_gc()  # as the gateway does: a full collection here would stall every held stream at once
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    print(f"bench upstream on http://{host}:{port}", flush=True)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", choices=["127.0.0.1", "::1", "localhost"])
    parser.add_argument("--port", type=int, default=0, help="0: a free port (the default)")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.host, args.port))
    else:
        uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
