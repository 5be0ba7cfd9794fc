"""The agent runner's MCP side against a real MCP server on loopback: every transport, every tool failure."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from mcp_server import serve_in_subprocess

from gateway.agent.errors import McpUnavailable
from gateway.agent.settings import RunSettings
from gateway.agent.toolbox import open_toolbox
from gateway.agent.turns import ToolCall

SERVER = Path(__file__).with_name("mcp_server.py")


@pytest.fixture(scope="module")
def http_url() -> Iterator[str]:
    with serve_in_subprocess("streamable-http") as url:
        yield url


def settings(mcp_url: str, **changes: Any) -> RunSettings:
    return RunSettings("q", "m", "http://gw", "k", "s1", mcp_url=mcp_url, **changes)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_streamable_http_lists_and_calls_tools(http_url: str) -> None:
    async with open_toolbox(settings(http_url)) as toolbox:
        assert toolbox.names == ["add", "lookup", "slow"]
        add = toolbox.openai_tools()[0]["function"]
        assert add["name"] == "add" and add["parameters"]["required"] == ["a", "b"]
        outcome = await toolbox.call(ToolCall("c0", "add", '{"a": 2, "b": 3}'))
        assert (outcome.content, outcome.failure) == ("5", None)


async def test_every_tool_failure_goes_back_to_the_model(http_url: str) -> None:
    calls = {
        "unknown_tool": ToolCall("c0", "teleport", "{}"),
        "bad_arguments": ToolCall("c1", "add", '{"a": 2,'),
        "tool_error": ToolCall("c2", "lookup", '{"city": "Atlantis"}'),
    }
    async with open_toolbox(settings(http_url)) as toolbox:
        outcomes = {kind: await toolbox.call(call) for kind, call in calls.items()}
        # The server checks the schema: a well-formed call with wrong types is the tool's error.
        wrong_type = await toolbox.call(ToolCall("c3", "add", '{"a": "two", "b": 3}'))
    for kind, outcome in outcomes.items():
        assert outcome.failure == kind
        assert outcome.content.startswith("Error")
    assert "no city named 'Atlantis'" in outcomes["tool_error"].content
    assert "add, lookup, slow" in outcomes["unknown_tool"].content
    assert wrong_type.failure == "tool_error" and "validation error" in wrong_type.content


async def test_a_slow_tool_times_out_as_a_tool_error(http_url: str) -> None:
    async with open_toolbox(settings(http_url, timeout=0.5)) as toolbox:
        outcome = await toolbox.call(ToolCall("c0", "slow", '{"seconds": 3}'))
    assert outcome.failure == "tool_error"


async def test_sse_transport() -> None:
    with serve_in_subprocess("sse") as url:
        assert url.endswith("/sse")
        async with open_toolbox(settings(url)) as toolbox:
            outcome = await toolbox.call(ToolCall("c0", "lookup", '{"city": "Tokyo"}'))
    assert outcome.content.startswith("Tokyo: capital of Japan")


async def test_stdio_transport() -> None:
    command = f"stdio:{sys.executable} {SERVER} --transport stdio"
    async with open_toolbox(settings(command)) as toolbox:
        outcome = await toolbox.call(ToolCall("c0", "add", '{"a": 40, "b": 2}'))
    assert outcome.content == "42"


@pytest.mark.parametrize(
    "make_url",
    [
        lambda: f"http://127.0.0.1:{closed_port()}/mcp",
        lambda: f"http://127.0.0.1:{closed_port()}/sse",
        lambda: "stdio:/nonexistent/mcp-server",
        lambda: f"stdio:{sys.executable} -c 'raise SystemExit(3)'",
    ],
    ids=["http", "sse", "stdio-missing", "stdio-exits"],
)
async def test_an_unreachable_server_is_mcp_unavailable(make_url: Any) -> None:
    with pytest.raises(McpUnavailable, match="cannot use the MCP server"):
        async with open_toolbox(settings(make_url(), timeout=10)):
            pass


async def test_no_mcp_url_means_no_tools() -> None:
    async with open_toolbox(settings("")) as toolbox:
        assert toolbox.names == [] and toolbox.openai_tools() == []


async def test_a_server_that_goes_away_mid_run_is_mcp_unavailable() -> None:
    with ExitStack() as servers:
        url = servers.enter_context(serve_in_subprocess("streamable-http"))
        with pytest.raises(McpUnavailable, match="failed"):
            async with open_toolbox(settings(url, timeout=10)) as toolbox:
                servers.close()
                await toolbox.call(ToolCall("c0", "add", '{"a": 1, "b": 1}'))
