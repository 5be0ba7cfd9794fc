"""One whole run: read the prompt, connect the tools and the model, drive the loop, report how it ended."""

from __future__ import annotations

import asyncio
import sys
from typing import TextIO

from gateway.agent.errors import AgentError, ExitCode
from gateway.agent.loop import drive
from gateway.agent.model import ModelClient
from gateway.agent.prompt import load_system_prompt
from gateway.agent.report import Reporter
from gateway.agent.settings import RunSettings
from gateway.agent.stats import RunResult
from gateway.agent.toolbox import open_toolbox
from gateway.agent.turns import opening_messages


async def run(settings: RunSettings, stdout: TextIO | None = None, stderr: TextIO | None = None) -> ExitCode:
    """Run the agent once and return its exit code; every ending, failures included, gets a summary."""
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr  # looked up now: tests swap sys.stdout
    try:
        reporter = Reporter(settings, stdout, stderr)
    except OSError as exc:
        stderr.write(f"error: cannot write the transcript: {exc}\n")
        return ExitCode.USAGE
    try:
        result = await _run(settings, reporter)
    except AgentError as exc:
        reporter.finish(RunResult(None, exc.exit_code, exc.message), exc.request_id)
        return exc.exit_code
    except asyncio.CancelledError:
        reporter.finish(RunResult(None, ExitCode.INTERRUPTED, "interrupted"))
        raise
    reporter.finish(result)
    return result.exit_code


async def _run(settings: RunSettings, reporter: Reporter) -> RunResult:
    system_prompt = await load_system_prompt(settings.system_prompt)
    async with open_toolbox(settings) as toolbox, ModelClient(settings, toolbox.openai_tools()) as model:
        reporter.start(toolbox.names, system_prompt)
        messages = opening_messages(settings.question, system_prompt)
        return await drive(model, toolbox, messages, settings.max_turns, reporter)
