"""A hostile OpenAI-compatible upstream for `scripts/attack.py`: quick ordinary answers, and four streams that
attack the gateway reading them, chosen by the requested model.

  any other model   a short completion, JSON or SSE as asked (what ordinary clients get)
  hostile/gzip      one SSE line that never ends (no blank line), gzip-compressed: about 1 MB on the wire
                    that inflates to about 1 GB
  hostile/plain     the same inflated bytes, uncompressed, written as fast as the gateway reads them
  hostile/endless   well-formed chunks every 10 ms that never finish
  hostile/drip      one byte every 0.5 s

Every hostile stream stops when the gateway hangs up, or after --max-s seconds (default 120) at the latest.
Run: `python scripts/attack_upstream.py --port 18001` (loopback only).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
import zlib
from collections.abc import AsyncIterator, Callable

import orjson
from aiohttp import web

BLOCK = b"x" * (1 << 16)
EVENT = b'data: {"id":"chatcmpl-hostile","object":"chat.completion.chunk","choices":[{"index":0,"delta":'
EVENT += b'{"content":"x"},"finish_reason":null}]}\n\n'
COMPLETION = orjson.dumps(
    {
        "id": "chatcmpl-attack",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "mock-gpt",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }
)
SHORT_STREAM = EVENT * 5 + b"data: [DONE]\n\n"


def gzip_line(wire_bytes: int) -> tuple[bytes, int]:
    """A gzip body of about `wire_bytes` holding `data: xxx...` with no line end; and its inflated size."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: a gzip header and trailer
    parts, wire, inflated = [compressor.compress(b"data: ")], 0, 6
    block = BLOCK * 16
    while wire < wire_bytes:
        parts.append(compressor.compress(block))
        wire += len(parts[-1])
        inflated += len(block)
    parts.append(compressor.flush())
    return b"".join(parts), inflated


class Hostile:
    """The request handler; `max_s` bounds every hostile stream."""

    def __init__(self, max_s: float, gzip_bytes: int) -> None:
        self.max_s = max_s
        self.gzip_body, self.inflated = gzip_line(gzip_bytes)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method == "GET":
            return web.Response(body=b'{"status":"ok"}', content_type="application/json")
        try:
            body = orjson.loads(await request.read())
            model, stream = str(body.get("model") or ""), body.get("stream") is True
        except (orjson.JSONDecodeError, AttributeError):
            return web.Response(status=400, body=b'{"error":{"message":"invalid JSON body"}}')
        source = self.sources().get(model)
        if source is None:
            if stream:
                return web.Response(body=SHORT_STREAM, content_type="text/event-stream")
            return web.Response(body=COMPLETION, content_type="application/json")
        headers = {"Content-Type": "text/event-stream"}
        if model == "hostile/gzip":
            headers["Content-Encoding"] = "gzip"  # set by hand: aiohttp must not compress it again
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        deadline = time.monotonic() + self.max_s
        try:
            async for data in source():
                if time.monotonic() > deadline:
                    break
                await response.write(data)
            await response.write_eof()
        except ConnectionError:
            pass  # the gateway hung up: that is what a good gateway does to these streams
        return response

    def sources(self) -> dict[str, Callable[[], AsyncIterator[bytes]]]:
        return {
            "hostile/gzip": self.gzip,
            "hostile/plain": self.plain,
            "hostile/endless": self.endless,
            "hostile/drip": self.drip,
        }

    async def gzip(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.gzip_body), len(BLOCK)):
            yield self.gzip_body[start : start + len(BLOCK)]

    async def plain(self) -> AsyncIterator[bytes]:
        yield b"data: "
        for _ in range(self.inflated // len(BLOCK)):
            yield BLOCK

    async def endless(self) -> AsyncIterator[bytes]:
        while True:
            yield EVENT
            await asyncio.sleep(0.01)

    async def drip(self) -> AsyncIterator[bytes]:
        while True:
            for byte in EVENT:
                yield bytes([byte])
                await asyncio.sleep(0.5)


async def serve(host: str, port: int, max_s: float, gzip_bytes: int) -> None:
    hostile = Hostile(max_s, gzip_bytes)
    runner = web.ServerRunner(web.Server(hostile.handle, access_log=None), handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    print(f"hostile upstream on http://{host}:{port}", flush=True)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", choices=["127.0.0.1", "::1", "localhost"])
    parser.add_argument("--port", type=int, default=18001)
    parser.add_argument("--max-s", type=float, default=120.0, help="longest any hostile stream lasts")
    parser.add_argument("--gzip-bytes", type=int, default=1 << 20, help="wire size of the gzip stream")
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port, args.max_s, args.gzip_bytes))


if __name__ == "__main__":
    main()
