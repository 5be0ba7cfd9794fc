"""The agent loop: ask the model, run the tools it asks for (in parallel), hand back the results, repeat."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from gateway.agent.errors import AgentError, ExitCode
from gateway.agent.report import Reporter
from gateway.agent.stats import RunResult, final_result
from gateway.agent.turns import ModelTurn, ToolCall, ToolOutcome


class Model(Protocol):
    """Anything that answers a conversation with one turn (`ModelClient`, or a plain fake in tests)."""

    async def complete(self, messages: list[dict[str, Any]], on_text: Callable[[str], None]) -> ModelTurn: ...


class Tools(Protocol):
    """Anything that runs one tool call (`Toolbox`, or a plain fake in tests)."""

    async def call(self, call: ToolCall) -> ToolOutcome: ...


async def drive(
    model: Model, tools: Tools, messages: list[dict[str, Any]], max_turns: int, reporter: Reporter
) -> RunResult:
    """Run turns until the model answers without tools or `max_turns` model calls have been made."""
    for number in range(1, max_turns + 1):
        turn = await model.complete(messages, reporter.text)
        reporter.model_turn(number, turn)
        messages.append(turn.as_message())
        if not turn.tool_calls:
            return final_result(reporter.stats, turn.content)
        if number == max_turns:
            break  # nobody would read these results: stop rather than run tools for nothing
        reporter.tool_calls(number, turn.tool_calls)
        for outcome in await run_tools(tools, turn.tool_calls):
            reporter.tool_outcome(number, outcome)
            messages.append(outcome.as_message())
    wanted = ", ".join(call.name for call in turn.tool_calls)
    return RunResult(
        None, ExitCode.MAX_TURNS, f"--max-turns {max_turns} reached; the model still wanted: {wanted}"
    )


async def run_tools(tools: Tools, calls: tuple[ToolCall, ...]) -> list[ToolOutcome]:
    """Run the calls of one turn concurrently, keeping the model's order in the results."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(tools.call(call)) for call in calls]
    except* AgentError as failed:
        # The TaskGroup has cancelled the sibling calls; report the first real failure, not a group.
        raise failed.exceptions[0] from None
    return [task.result() for task in tasks]
