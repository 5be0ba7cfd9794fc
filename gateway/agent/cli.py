"""The command line of `scripts/agent_runner.py`: options, environment defaults, exit codes."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

from gateway.agent.errors import ExitCode, exit_codes_table
from gateway.agent.runner import run
from gateway.agent.settings import RunSettings, openai_base_url

DEFAULT_PROXY_URL = "http://127.0.0.1:8080"
DESCRIPTION = (
    "Replay an MCP tool-use session through the gateway, so the run shows up in its logs exactly as "
    "production traffic does. Prints the answer on stdout; progress and a summary go to stderr."
)


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    """The argument parser, with defaults taken from `env`."""
    parser = argparse.ArgumentParser(
        prog="agent_runner.py",
        description=DESCRIPTION,
        epilog=f"exit codes:\n{exit_codes_table()}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("question", metavar="QUESTION", help='the user\'s question ("-" reads it from stdin)')
    _add_endpoint_options(parser, env)
    _add_run_options(parser, env)
    return parser


def _add_endpoint_options(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    add = parser.add_argument
    add("--model", default=env.get("AGENT_MODEL"), help="model id to ask (env AGENT_MODEL)")
    add(
        "--proxy-url",
        type=_proxy_url,
        default=env.get("AGENT_PROXY_URL", DEFAULT_PROXY_URL),
        help="the gateway's URL, as an OpenAI SDK's base_url or without /v1, under any path prefix: "
        f"https://host/v1, https://host, https://host/llm-proxy/v1 (env AGENT_PROXY_URL; "
        f"default {DEFAULT_PROXY_URL})",
    )
    add("--api-key", default=env.get("OPENAI_API_KEY"), help="the gateway's key (env OPENAI_API_KEY)")
    add(
        "--mcp-url",
        default=env.get("AGENT_MCP_URL"),
        help="MCP server: an http(s) URL (Streamable HTTP; a path ending in /sse means SSE) or a command "
        "line for stdio, such as 'stdio:python server.py' (env AGENT_MCP_URL; none: no tools)",
    )
    add(
        "--mcp-transport",
        choices=["auto", "http", "sse", "stdio"],
        default="auto",
        help="how to talk to the MCP server (default: auto, from --mcp-url)",
    )
    add(
        "--origin",
        default=env.get("AGENT_ORIGIN"),
        help="sent as the Origin header, so the gateway's records are tagged with the app (env AGENT_ORIGIN)",
    )


def _add_run_options(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    add = parser.add_argument
    add(
        "--system-prompt",
        default=env.get("AGENT_SYSTEM_PROMPT"),
        metavar="PATH_OR_URL",
        help="system prompt from a file or an http(s) URL (env AGENT_SYSTEM_PROMPT)",
    )
    add("--max-turns", type=_positive_int, default=20, help="most model calls in one run (default 20)")
    add("--session-id", default=None, help="session id for every call of the run (default: a fresh one)")
    add("--stream", action=argparse.BooleanOptionalAction, default=False, help="print tokens as they come")
    add("--transcript", type=Path, metavar="FILE", help="write every turn and tool call to FILE as JSONL")
    add("--quiet", "-q", action="store_true", help="print only the answer (and errors)")
    add(
        "--timeout",
        type=_positive_float,
        default=env.get("AGENT_TIMEOUT", "120"),
        help="seconds to wait for the model and for each tool call (env AGENT_TIMEOUT; default 120)",
    )


def settings_from_args(argv: Sequence[str] | None, env: Mapping[str, str]) -> RunSettings:
    """Parse the command line into settings; a usage error exits with code 2."""
    parser = build_parser(env)
    args = parser.parse_args(argv)
    if not args.model:
        parser.error("no model: give --model or set AGENT_MODEL")
    if not args.api_key:
        parser.error("no API key: give --api-key or set OPENAI_API_KEY")
    question = sys.stdin.read().strip() if args.question == "-" else args.question
    if not question:
        parser.error("the question is empty")
    return RunSettings(
        question=question,
        model=args.model,
        proxy_url=args.proxy_url,
        api_key=args.api_key,
        session_id=args.session_id or uuid.uuid4().hex,
        mcp_url=args.mcp_url,
        mcp_transport=args.mcp_transport,
        system_prompt=args.system_prompt,
        origin=args.origin,
        max_turns=args.max_turns,
        stream=args.stream,
        transcript=args.transcript,
        quiet=args.quiet,
        timeout=args.timeout,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the agent runner's command line; returns the exit code."""
    settings = settings_from_args(argv, os.environ)
    try:
        return int(asyncio.run(run(settings)))
    except KeyboardInterrupt:
        return int(ExitCode.INTERRUPTED)


def _proxy_url(text: str) -> str:
    try:
        openai_base_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text.strip()


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value:g}")
    return value
