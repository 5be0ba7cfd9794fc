"""The MCP side: connect over Streamable HTTP, SSE or stdio, list the tools, run the calls the model asks for.

The mcp SDK's exceptions are mapped to ours here and nowhere else: a server that cannot be reached or goes
away becomes `McpUnavailable`; everything a single call can do wrong becomes a failed `ToolOutcome`.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

from mcp import Client, StdioServerParameters
from mcp.client import Transport
from mcp.client.sse import sse_client
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import (
    CONNECTION_CLOSED,
    CallToolResult,
    EmbeddedResource,
    TextContent,
    TextResourceContents,
    Tool,
)

from gateway.agent.errors import AgentError, McpUnavailable
from gateway.agent.settings import McpTransport, RunSettings
from gateway.agent.turns import FailureKind, ToolCall, ToolOutcome

MAX_TOOL_PAGES = 50  # a server whose tools/list never stops paginating must not hang the run


class Toolbox:
    """The tools of one MCP server: offered to the model in OpenAI's format, run by name."""

    def __init__(self, client: Client | None, tools: Sequence[Tool], timeout: float) -> None:
        self._client = client
        self._tools = {tool.name: tool for tool in tools}
        self._timeout = timeout

    @property
    def names(self) -> list[str]:
        """The tool names, in the server's order."""
        return list(self._tools)

    def openai_tools(self) -> list[dict[str, Any]]:
        """The tools in OpenAI's function-calling format."""
        return [openai_function(tool) for tool in self._tools.values()]

    async def call(self, call: ToolCall) -> ToolOutcome:
        """Run one call; every failure of the tool itself comes back as a failed outcome."""
        started = time.monotonic()
        content, failure = await self._run(call)
        return ToolOutcome(call, content, failure, int((time.monotonic() - started) * 1000))

    async def _run(self, call: ToolCall) -> tuple[str, FailureKind | None]:
        if self._client is None or call.name not in self._tools:
            offered = ", ".join(self._tools) or "none"
            return f"Error: unknown tool {call.name!r}; the tools offered are: {offered}", "unknown_tool"
        try:
            arguments = parse_arguments(call.arguments)
        except ValueError as exc:
            return f"Error: bad arguments for {call.name}: {exc}", "bad_arguments"
        try:
            result = await self._client.call_tool(call.name, arguments, read_timeout_seconds=self._timeout)
        except MCPError as exc:
            if exc.code == CONNECTION_CLOSED:
                raise McpUnavailable(f"the MCP server went away during {call.name}: {exc.message}") from exc
            return f"Error: {call.name} failed: {exc.message}", "tool_error"
        text = result_text(result)
        if not result.is_error:
            return text, None
        # OpenAI's tool message has no error flag: the text itself must tell the model the call failed.
        return (text if text.lower().startswith("error") else f"Error: {text}"), "tool_error"


def openai_function(tool: Tool) -> dict[str, Any]:
    """One MCP tool as an OpenAI `tools` entry."""
    function: dict[str, Any] = {"name": tool.name, "parameters": tool.input_schema}
    if tool.description:
        function["description"] = tool.description
    return {"type": "function", "function": function}


def parse_arguments(text: str) -> dict[str, Any]:
    """The model's argument text as a JSON object; models send "" for a call without arguments."""
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at position {exc.pos}): {text[:200]}") from None
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}: {text[:200]}")
    return value


def result_text(result: CallToolResult) -> str:
    """A tool result as the text a chat model reads."""
    parts = [_block_text(block) for block in result.content]
    if not parts and result.structured_content is not None:
        parts = [json.dumps(result.structured_content, ensure_ascii=False)]
    return "\n".join(parts)


def _block_text(block: Any) -> str:
    if isinstance(block, TextContent):
        return block.text
    if isinstance(block, EmbeddedResource) and isinstance(block.resource, TextResourceContents):
        return block.resource.text
    # Images, audio and links cannot travel in a text tool message; name them so the model knows they exist.
    described = getattr(block, "mime_type", None) or getattr(block, "uri", None) or ""
    return f"[{block.type} {described}]".replace(" ]", "]")


def transport_kind(url: str, requested: McpTransport) -> McpTransport:
    """Which transport a server address means when `--mcp-transport auto`."""
    if requested != "auto":
        return requested
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return "stdio"
    return "sse" if parts.path.rstrip("/").endswith("/sse") else "http"


def make_transport(url: str, kind: McpTransport, timeout: float) -> Transport:
    """The mcp SDK transport for an address: a URL, or a command line for stdio."""
    kind = transport_kind(url, kind)
    if kind == "sse":
        return sse_client(url, timeout=timeout)
    if kind == "stdio":
        command = shlex.split(url.removeprefix("stdio:"))
        if not command:
            raise McpUnavailable("--mcp-url names no command to run for the stdio transport")
        return stdio_client(StdioServerParameters(command=command[0], args=command[1:]))
    return streamable_http_client(url)


@asynccontextmanager
async def open_toolbox(settings: RunSettings) -> AsyncIterator[Toolbox]:
    """Connect to the MCP server (if any) for the length of the run."""
    url = settings.mcp_url
    if not url:
        yield Toolbox(None, (), settings.timeout)
        return
    try:
        async with AsyncExitStack() as stack:
            yield await _connect(stack, url, settings)
    except AgentError:
        raise
    except ExceptionGroup as group:
        # A transport that breaks mid-run cancels the run through anyio's task group, which leaves here as
        # a group: surface our own error if the run raised one, else the transport's failure.
        failure = McpUnavailable(f"the MCP server at {url} failed: {describe(group)}")
        raise _first_agent_error(group) or failure from group


async def _connect(stack: AsyncExitStack, url: str, settings: RunSettings) -> Toolbox:
    try:
        async with asyncio.timeout(settings.timeout):
            transport = make_transport(url, settings.mcp_transport, settings.timeout)
            client = await stack.enter_async_context(Client(transport, read_timeout_seconds=settings.timeout))
            tools = await _list_tools(client)
    except McpUnavailable:
        raise
    except Exception as exc:  # the SDK raises from every layer: OS, httpx2, anyio task groups, JSON-RPC
        raise McpUnavailable(f"cannot use the MCP server at {url}: {describe(exc)}") from exc
    return Toolbox(client, tools, settings.timeout)


async def _list_tools(client: Client) -> list[Tool]:
    tools: list[Tool] = []
    cursor: str | None = None
    for _ in range(MAX_TOOL_PAGES):
        page = await client.list_tools(cursor=cursor)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if cursor is None:
            break
    return tools


def _first_agent_error(group: BaseExceptionGroup[Any]) -> AgentError | None:
    for exc in group.exceptions:
        found = _first_agent_error(exc) if isinstance(exc, BaseExceptionGroup) else exc
        if isinstance(found, AgentError):
            return found
    return None


def describe(exc: BaseException) -> str:
    """The innermost useful message of an exception, looking inside anyio's exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, MCPError):
        return f"{exc.message} (MCP error {exc.code})"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
