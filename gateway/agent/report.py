"""What the user sees and keeps: the answer on stdout, progress and summary on stderr, the JSONL transcript.

The answer alone goes to stdout so a run can be piped; everything about the run goes to stderr.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from gateway.agent.settings import RunSettings
from gateway.agent.stats import RunResult, RunStats, format_summary
from gateway.agent.turns import ModelTurn, ToolCall, ToolOutcome

PREVIEW_CHARS = 160


class Transcript:
    """A JSONL file with one line per event of the run, flushed as it happens so a crash keeps the story."""

    def __init__(self, path: Path | None) -> None:
        self._file: TextIO | None = path.open("w", encoding="utf-8") if path else None

    def write(self, event: str, **fields: Any) -> None:
        """Append one event."""
        if self._file is None:
            return
        record = {"event": event, "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"), **fields}
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        """Close the file."""
        if self._file is not None:
            self._file.close()


class Reporter:
    """Counts, prints and records every step of one run."""

    def __init__(self, settings: RunSettings, stdout: TextIO, stderr: TextIO) -> None:
        self.stats = RunStats(settings.session_id)
        self._settings = settings
        self._out = stdout
        self._err = stderr
        self._transcript = Transcript(settings.transcript)
        self._streamed = False  # whether answer text already went to stdout as it came
        self._line_open = False  # whether stdout is mid-line after streamed text

    def start(self, tool_names: list[str], system_prompt: str | None) -> None:
        """Record the run's setup."""
        s = self._settings
        self._transcript.write(
            "start", session_id=s.session_id, model=s.model, proxy_url=s.proxy_url, base_url=s.base_url,
            origin=s.origin, mcp_url=s.mcp_url, tools=tool_names, system_prompt=system_prompt,
            question=s.question, stream=s.stream, max_turns=s.max_turns,
        )  # fmt: skip
        self._progress(
            f"session {s.session_id}; {len(tool_names)} tool(s): {', '.join(tool_names) or 'none'}"
        )

    def text(self, chunk: str) -> None:
        """Print streamed answer text as it comes."""
        self._out.write(chunk)
        self._out.flush()
        self._streamed = self._line_open = True

    def model_turn(self, number: int, turn: ModelTurn) -> None:
        """Count and record one model turn."""
        self.stats.add_turn(turn)
        self._end_line()
        self._transcript.write(
            "model", turn=number, request_id=turn.request_id, content=turn.content,
            tool_calls=[{"id": c.id, "name": c.name, "arguments": c.arguments} for c in turn.tool_calls],
            finish_reason=turn.finish_reason, usage=turn.usage, latency_ms=turn.latency_ms,
        )  # fmt: skip

    def tool_calls(self, number: int, calls: tuple[ToolCall, ...]) -> None:
        """Show the calls about to run."""
        for call in calls:
            self._progress(f"[turn {number}] -> {call.name}({_preview(call.arguments)})")

    def tool_outcome(self, number: int, outcome: ToolOutcome) -> None:
        """Count, show and record one finished tool call."""
        self.stats.add_tool(outcome)
        mark = f"FAILED ({outcome.failure})" if outcome.failure else "ok"
        self._progress(f"[turn {number}] <- {outcome.call.name} {mark}: {_preview(outcome.content)}")
        call = outcome.call
        self._transcript.write(
            "tool", turn=number, tool_call_id=call.id, name=call.name, arguments=call.arguments,
            content=outcome.content, failure=outcome.failure, latency_ms=outcome.latency_ms,
        )  # fmt: skip

    def finish(self, result: RunResult, request_id: str | None = None) -> None:
        """Print the answer (or the error) and the summary; close the transcript."""
        self.stats.add_request_id(request_id)
        self._end_line()
        if result.answer is not None and not self._streamed:
            self._out.write(result.answer + "\n")
            self._out.flush()
        if result.answer is None:
            self._err.write(f"error: {result.outcome}\n")
        if not self._settings.quiet:
            self._err.write(format_summary(self.stats, result, self._settings.max_turns) + "\n")
        self._err.flush()
        self._transcript.write(
            "end", exit_code=int(result.exit_code), outcome=result.outcome, answer=result.answer,
            summary=self.stats.as_dict(),
        )  # fmt: skip
        self._transcript.close()

    def _progress(self, line: str) -> None:
        if not self._settings.quiet:
            self._end_line()
            self._err.write(line + "\n")
            self._err.flush()

    def _end_line(self) -> None:
        if self._line_open:
            self._out.write("\n")
            self._out.flush()
            self._line_open = False


def _preview(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= PREVIEW_CHARS else flat[: PREVIEW_CHARS - 3] + "..."
