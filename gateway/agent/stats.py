"""What a run did, counted as it goes, and the summary printed at its end."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from gateway.agent.errors import ExitCode
from gateway.agent.turns import ModelTurn, ToolOutcome


@dataclass(frozen=True)
class RunResult:
    """How a run ended: the answer (if any), the exit code and a one-line outcome."""

    answer: str | None
    exit_code: ExitCode
    outcome: str


@dataclass
class RunStats:
    """Turns, tool calls, tokens, time and the gateway's request ids of one run."""

    session_id: str
    started: float = field(default_factory=time.monotonic)
    turns: int = 0
    tool_calls: Counter[str] = field(default_factory=Counter)
    tool_failures: list[tuple[str, str]] = field(default_factory=list)  # (tool name, failure kind)
    tokens: Counter[str] = field(default_factory=Counter)
    request_ids: list[str] = field(default_factory=list)

    def add_turn(self, turn: ModelTurn) -> None:
        """Count one model turn."""
        self.turns += 1
        self.tokens.update(turn.usage)
        self.add_request_id(turn.request_id)

    def add_request_id(self, request_id: str | None) -> None:
        """Keep a request id (failed calls have one too)."""
        if request_id and request_id not in self.request_ids:
            self.request_ids.append(request_id)

    def add_tool(self, outcome: ToolOutcome) -> None:
        """Count one tool call and its failure, if it failed."""
        self.tool_calls[outcome.call.name] += 1
        if outcome.failure:
            self.tool_failures.append((outcome.call.name, outcome.failure))

    def elapsed_s(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self.started

    def as_dict(self) -> dict[str, Any]:
        """The counts as plain JSON values, for the transcript."""
        return {
            "session_id": self.session_id,
            "turns": self.turns,
            "tool_calls": dict(self.tool_calls),
            "tool_failures": [{"name": name, "failure": kind} for name, kind in self.tool_failures],
            "tokens": dict(self.tokens),
            "elapsed_s": round(self.elapsed_s(), 3),
            "request_ids": list(self.request_ids),
        }


def final_result(stats: RunStats, answer: str) -> RunResult:
    """The result of a run in which the model answered."""
    if stats.tool_failures:
        return RunResult(
            answer, ExitCode.TOOL_FAILURES, f"answered; {len(stats.tool_failures)} tool call(s) failed"
        )
    return RunResult(answer, ExitCode.ANSWERED, "answered")


def format_summary(stats: RunStats, result: RunResult, max_turns: int) -> str:
    """The human-readable summary printed at the end of a run."""
    rows = [
        ("outcome", f"{result.outcome} (exit {int(result.exit_code)})"),
        ("session", stats.session_id),
        ("turns", f"{stats.turns} (max {max_turns})"),
        ("tool calls", _tool_line(stats)),
        ("tokens", _token_line(stats.tokens)),
        ("time", f"{stats.elapsed_s():.2f} s"),
        ("request ids", ", ".join(stats.request_ids) or "none"),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    return "\n".join(["--- agent run summary ---", *lines])


def _tool_line(stats: RunStats) -> str:
    total = sum(stats.tool_calls.values())
    if not total:
        return "none"
    by_name = ", ".join(f"{name} x{count}" for name, count in stats.tool_calls.most_common())
    line = f"{total}: {by_name}"
    if stats.tool_failures:
        failed = ", ".join(f"{name} ({kind})" for name, kind in stats.tool_failures)
        line += f"; failed: {failed}"
    return line


def _token_line(tokens: Counter[str]) -> str:
    if not tokens:
        return "not reported"
    return ", ".join(f"{name.removesuffix('_tokens')} {tokens[name]}" for name in tokens)
