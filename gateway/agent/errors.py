"""Why a run stopped, as exceptions and as exit codes.

    AgentError                    any failure that ends a run early
    ├── UsageError             2  bad options, no API key, a system prompt that cannot be read
    ├── McpUnavailable         5  the MCP server cannot be reached, refuses the handshake or goes away
    ├── KeyRefused             6  the gateway answers 401 or 403 to our key
    ├── ModelTimeout           7  the model (through the gateway) took longer than --timeout
    └── ModelCallFailed        8  any other gateway or model failure: unreachable, 4xx/5xx, a malformed reply

A failing *tool* is not an AgentError: unknown tool, bad arguments and tool errors go back to the model as
the tool's result, as MCP clients do, and only colour the exit code (3) of a run that still answered.
Foreign exceptions are mapped to these in one place per side: `gateway.agent.model` for the openai SDK,
`gateway.agent.toolbox` for the mcp SDK.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """The runner's exit codes; `docs/AGENT.md` and `--help` list the same table."""

    ANSWERED = 0
    USAGE = 2
    TOOL_FAILURES = 3
    MAX_TURNS = 4
    MCP_UNAVAILABLE = 5
    KEY_REFUSED = 6
    MODEL_TIMEOUT = 7
    MODEL_FAILED = 8
    INTERRUPTED = 130


EXIT_CODE_HELP = {
    ExitCode.ANSWERED: "the model answered and every tool call succeeded",
    ExitCode.USAGE: "bad options, no API key, or the system prompt could not be read",
    ExitCode.TOOL_FAILURES: "the model answered, but some tool calls failed (unknown tool, bad arguments, "
    "tool error)",
    ExitCode.MAX_TURNS: "--max-turns reached while the model still wanted tools",
    ExitCode.MCP_UNAVAILABLE: "the MCP server could not be reached or failed",
    ExitCode.KEY_REFUSED: "the gateway refused the API key (401/403)",
    ExitCode.MODEL_TIMEOUT: "the model did not answer within --timeout",
    ExitCode.MODEL_FAILED: "any other gateway or model error",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
}


class AgentError(Exception):
    """A failure that ends the run; `exit_code` says which kind."""

    exit_code = ExitCode.MODEL_FAILED

    def __init__(self, message: str, *, request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id  # the gateway's X-Request-Id when the failure came with one


class UsageError(AgentError):
    exit_code = ExitCode.USAGE


class McpUnavailable(AgentError):
    exit_code = ExitCode.MCP_UNAVAILABLE


class KeyRefused(AgentError):
    exit_code = ExitCode.KEY_REFUSED


class ModelTimeout(AgentError):
    exit_code = ExitCode.MODEL_TIMEOUT


class ModelCallFailed(AgentError):
    exit_code = ExitCode.MODEL_FAILED


def exit_codes_table() -> str:
    """The exit codes as aligned text lines, for `--help`."""
    return "\n".join(f"  {int(code):>3}  {text}" for code, text in EXIT_CODE_HELP.items())
