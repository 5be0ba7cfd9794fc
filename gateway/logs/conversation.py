"""Reading a call's conversation for its request record: from either end, no more of it than a field needs.

An agent's conversation may be long and a client may send any shape: the first and last user messages and the
trailing tool results are found without walking the rest, and a message of an odd shape is passed over.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway.calls import Call
from gateway.dialects import dialect_of
from gateway.logs.fields import NAME_CHARS, cap, clip, text_of
from providers.base import Endpoint


def messages_of(call: Call, body: dict[str, Any], errors: list[str]) -> Sequence[Any]:
    """The conversation as a list, or empty; "messages" goes into `errors` when it could not be read."""
    try:
        conversation = _conversation(call, body)
    except Exception:
        errors.append("messages")
        return ()
    return conversation if isinstance(conversation, list) else ()


def _conversation(call: Call, body: dict[str, Any]) -> Any:
    """The request's messages: chat's own, or another dialect's conversation read as chat messages."""
    dialect = None if call.endpoint is Endpoint.CHAT else dialect_of(call.endpoint)
    return body.get("messages") if dialect is None else dialect.conversation(body)


def first_user(messages: Any) -> dict[str, Any] | None:
    """The first user message `messages` yields (read from the end, the last one)."""
    for message in messages:
        if isinstance(message, dict) and message.get("role") == "user":
            return message
    return None


def user_text(message: dict[str, Any] | None, limit: int, errors: list[str], name: str) -> str | None:
    """The capped text of `message`; None when there is none, or (noted in `errors`) when none can be made."""
    if message is None:
        return None
    try:
        return cap(text_of(message.get("content")), limit)
    except Exception:
        errors.append(name)
        return None


def trailing_tools(messages: Sequence[Any]) -> tuple[list[dict[str, Any]], int]:
    """The tool messages that end the conversation, in order, and how many messages come before them."""
    run: list[dict[str, Any]] = []
    at = len(messages)
    while at:
        message = messages[at - 1]
        if isinstance(message, dict):
            if message.get("role") != "tool":
                break
            run.append(message)
        at -= 1
    run.reverse()
    return run, at


def tool_names(messages: Sequence[Any], before: int, wanted: set[str]) -> dict[str, str]:
    """Tool-call id -> function name, each from the latest assistant message before `before` that asked."""
    names: dict[str, str] = {}
    for at in range(before - 1, -1, -1):
        message = messages[at]
        if isinstance(message, dict) and message.get("role") == "assistant":
            for call_id, name in _asked_tools(message.get("tool_calls")).items():
                names.setdefault(call_id, name)
            if wanted <= names.keys():
                break
    return names


def _asked_tools(tool_calls: Any) -> dict[str, str]:
    """Tool-call id -> function name, from an assistant message's `tool_calls` of whatever shape."""
    names: dict[str, str] = {}
    for tc in tool_calls if isinstance(tool_calls, list) else ():
        function = tc.get("function") if isinstance(tc, dict) else None
        if isinstance(function, dict):
            names[str(tc.get("id"))] = clip(function.get("name"), NAME_CHARS) or ""
    return names
