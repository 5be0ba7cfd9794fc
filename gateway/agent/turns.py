"""The values a run passes around: model turns, tool calls, tool outcomes, and the chat messages they make."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

FailureKind = Literal["unknown_tool", "bad_arguments", "tool_error"]


@dataclass(frozen=True)
class ToolCall:
    """One function call the model asked for, arguments still as the JSON text it wrote."""

    id: str
    name: str
    arguments: str

    def as_message_part(self) -> dict[str, Any]:
        """The call in OpenAI's `tool_calls` shape."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass(frozen=True)
class ModelTurn:
    """One answer from the model: text, tool calls, usage and the gateway's request id."""

    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    request_id: str | None = None
    latency_ms: int = 0

    def as_message(self) -> dict[str, Any]:
        """The assistant message to append to the conversation."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content or None}
        if self.tool_calls:
            message["tool_calls"] = [call.as_message_part() for call in self.tool_calls]
        return message


@dataclass(frozen=True)
class ToolOutcome:
    """What running one tool call gave: the text handed back to the model, and whether it failed."""

    call: ToolCall
    content: str
    failure: FailureKind | None = None
    latency_ms: int = 0

    def as_message(self) -> dict[str, Any]:
        """The `tool` message that answers the call."""
        return {"role": "tool", "tool_call_id": self.call.id, "content": self.content}


def opening_messages(question: str, system_prompt: str | None) -> list[dict[str, Any]]:
    """The conversation before the first turn."""
    messages: list[dict[str, Any]] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": question})
    return messages
