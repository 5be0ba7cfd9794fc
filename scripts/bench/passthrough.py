"""The floor: the thinnest aiohttp pass-through, one pooled ClientSession, no auth, routing or logging.

`POST /v1/chat/completions` goes to the upstream as it came; a streamed answer comes back chunk by chunk as
it arrives, any other answer in one piece. Every gateway feature costs something on top of this, so each
phase of the benchmark shows it as a row. It binds port 0 on loopback and prints its URL.

Run: `python scripts/bench/passthrough.py --upstream http://127.0.0.1:18000/v1/chat/completions`
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from gateway.server import settle_gc

JSON = {"Content-Type": "application/json"}
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def make_handler(
    session: aiohttp.ClientSession, upstream: str
) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
    """The one handler: health, or the call forwarded to `upstream`."""

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        if request.method == "GET" and request.path == "/health":
            return web.Response(body=b'{"status":"ok"}', headers=JSON)
        if request.method != "POST" or request.path != "/v1/chat/completions":
            return web.Response(status=404)
        async with session.post(upstream, data=await request.read(), headers=JSON) as answer:
            content_type = answer.headers.get("Content-Type", "application/json")
            if not content_type.startswith("text/event-stream"):
                body = await answer.read()
                return web.Response(status=answer.status, body=body, headers={"Content-Type": content_type})
            response = web.StreamResponse(status=answer.status, headers={"Content-Type": content_type})
            await response.prepare(request)
            async for chunk in answer.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    return handle


async def serve(upstream: str) -> None:
    """Serve on a free loopback port until SIGTERM or SIGINT."""
    # No pool limit: the hold phase keeps thousands of upstream streams open at once, as the gateway does.
    # Idle ones close within a few seconds: 8,000 kept into the next target's hold hold 8,000 ephemeral ports
    # to the upstream, and every connect() of the next target's ramp searches a nearly full port range.
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=2)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, skip_auto_headers=["User-Agent"]
    ) as s:
        server = web.Server(make_handler(s, upstream), access_log=None)
        runner = web.ServerRunner(server, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
        await site.start()
        port = runner.addresses[0][1]
        settle_gc()  # the gateway's collector settings: the floor differs from it by code alone
        print(f"pass-through on http://127.0.0.1:{port}", flush=True)
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()


def main() -> None:
    """Parse the one option and serve, with uvloop when it is installed (as the gateway does)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--upstream", required=True, help="the upstream's chat completions URL (loopback)")
    args = parser.parse_args()
    if urlsplit(args.upstream).hostname not in LOOPBACK:
        parser.error("the upstream must be on loopback (127.0.0.1, ::1 or localhost)")
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.upstream))
    else:
        uvloop.run(serve(args.upstream))


if __name__ == "__main__":
    main()
