"""Turn the model's replies (one JSON completion, or a stream of chunks) into a `ModelTurn`. Pure code."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.completion_usage import CompletionUsage

from gateway.agent.turns import ModelTurn, ToolCall

USAGE_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens")


def usage_counts(usage: CompletionUsage | None) -> dict[str, int]:
    """The token counts of a usage object (empty when the reply had none)."""
    if usage is None:
        return {}
    return {name: int(getattr(usage, name) or 0) for name in USAGE_FIELDS}


def turn_from_completion(completion: ChatCompletion, request_id: str | None, latency_ms: int) -> ModelTurn:
    """A whole (non-streamed) completion as a turn."""
    if not completion.choices:
        return ModelTurn("", (), None, usage_counts(completion.usage), request_id, latency_ms)
    choice = completion.choices[0]
    calls = tuple(
        ToolCall(call.id, call.function.name, call.function.arguments or "")
        for call in choice.message.tool_calls or ()
        if call.type == "function"
    )
    content = choice.message.content or ""
    return ModelTurn(
        content, calls, choice.finish_reason, usage_counts(completion.usage), request_id, latency_ms
    )


@dataclass
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass
class StreamedTurn:
    """Folds stream chunks into a turn: text deltas, tool-call fragments by index, the final usage."""

    content: list[str] = field(default_factory=list)
    calls: dict[int, _PartialCall] = field(default_factory=dict)
    finish_reason: str | None = None
    usage: dict[str, int] = field(default_factory=dict)

    def add(self, chunk: ChatCompletionChunk) -> str:
        """Take one chunk; return the text it adds, for printing as it comes."""
        if chunk.usage is not None:
            self.usage = usage_counts(chunk.usage)
        text = ""
        for choice in chunk.choices[:1]:
            delta = choice.delta
            if delta.content:
                text = delta.content
                self.content.append(text)
            for fragment in delta.tool_calls or ():
                self._add_fragment(fragment.index, fragment.id, fragment.function)
            if choice.finish_reason:
                self.finish_reason = choice.finish_reason
        return text

    def _add_fragment(self, index: int, call_id: str | None, function: Any) -> None:
        partial = self.calls.setdefault(index, _PartialCall())
        if call_id:
            partial.id = call_id
        if function is not None and function.name:
            partial.name += function.name  # one chunk in practice; some servers split long names
        if function is not None and function.arguments:
            partial.arguments.append(function.arguments)

    def build(self, request_id: str | None, latency_ms: int) -> ModelTurn:
        """The finished turn."""
        calls = tuple(
            ToolCall(partial.id or f"call_{index}", partial.name, "".join(partial.arguments))
            for index, partial in sorted(self.calls.items())
        )
        return ModelTurn("".join(self.content), calls, self.finish_reason, self.usage, request_id, latency_ms)
