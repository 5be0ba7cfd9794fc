"""A small real MCP server for the agent runner's tests: three tools over Streamable HTTP, SSE or stdio.

`add` and `lookup` answer; `lookup` of an unknown city and `slow` past its limit fail the way real tools do
(a `ToolError`, which reaches the client as a result with `isError` set).

Run on its own: `python tests/mcp_server.py --port 0` prints the URL it serves on its first line of stdout,
so a test can start it on a free port without racing for one; `serve_in_subprocess()` does that for tests.
"""

from __future__ import annotations

import argparse
import asyncio
import select
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

CITIES = {
    "paris": "Paris: capital of France, population 2.1 million",
    "tokyo": "Tokyo: capital of Japan, population 14 million",
    "lima": "Lima: capital of Peru, population 10 million",
}


def build_server() -> MCPServer:
    """The server with its three tools."""
    server = MCPServer("agent-test-tools", log_level="WARNING")

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @server.tool()
    def lookup(city: str) -> str:
        """Look up facts about a city."""
        try:
            return CITIES[city.strip().lower()]
        except KeyError:
            raise ToolError(f"no city named {city!r}") from None

    @server.tool()
    async def slow(seconds: float) -> str:
        """Wait a while, then answer (at most 30 seconds)."""
        if seconds > 30:
            raise ToolError("seconds must be at most 30")
        await asyncio.sleep(seconds)
        return f"waited {seconds} s"

    return server


async def serve_http(server: MCPServer, transport: str, host: str, port: int) -> None:
    """Serve over HTTP on a socket bound here, so port 0 works and the URL is known before serving."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)  # listening before the URL is printed: an early client waits in the backlog, not refused
    bound = sock.getsockname()[1]
    if transport == "sse":
        app, path = server.sse_app(host=host), "/sse"
    else:
        app, path = server.streamable_http_app(host=host), "/mcp"
    print(f"http://{host}:{bound}{path}", flush=True)
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    await uvicorn.Server(config).serve(sockets=[sock])


@contextmanager
def serve_in_subprocess(transport: str = "streamable-http", wait_s: float = 30.0) -> Iterator[str]:
    """Start this server in a subprocess on a free loopback port; yield its URL; stop it afterwards."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--transport", transport, "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], wait_s)
        url = proc.stdout.readline().strip() if ready else ""
        if not url.startswith("http"):
            raise RuntimeError(f"the MCP test server did not start (exit {proc.poll()})")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transport", choices=["streamable-http", "sse", "stdio"], default="streamable-http")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = build_server()
    if args.transport == "stdio":
        server.run("stdio")
    else:
        asyncio.run(serve_http(server, args.transport, args.host, args.port))


if __name__ == "__main__":
    main()
