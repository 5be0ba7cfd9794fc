"""The tool-call markups models leak into `content`, each read from one whole block into calls.

A block runs from an opener to its closer. Each reader is strict: a block must be exactly its grammar
(whitespace aside) and name only offered tools, or it is not a tool call and stays text. Every reader walks
its block once, left to right, so reading is linear in the block's length whatever the block holds.

    hermes       <tool_call>{"name": "f", "arguments": {"k": "v"}}</tool_call>
    qwen3_coder  <tool_call><function=f><parameter=k>v</parameter></function></tool_call>
    glm45        <tool_call>f<arg_key>k</arg_key><arg_value>v</arg_value></tool_call>
    kimi_k2      <|tool_calls_section_begin|><|tool_call_begin|>functions.f:0<|tool_call_argument_begin|>
                 {"k": "v"}<|tool_call_end|><|tool_calls_section_end|>
    minimax_m2   <minimax:tool_call><invoke name="f"><parameter name="k">v</parameter></invoke>
                 </minimax:tool_call>
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.repair.tools import ToolCatalog

TOOL_CALL = "<tool_call>"
KIMI_SECTION = "<|tool_calls_section_begin|>"
MINIMAX = "<minimax:tool_call>"
CLOSERS = {
    TOOL_CALL: "</tool_call>",
    KIMI_SECTION: "<|tool_calls_section_end|>",
    MINIMAX: "</minimax:tool_call>",
}
OPENERS = tuple(CLOSERS)

_WS = re.compile(r"\s*")
_NAME = r"([^\s<>]{1,256})"  # a tool name: no markup, no spaces, a sane length
_QUOTED = r"(\"[^\"\n]{1,256}\"|'[^'\n]{1,256}'|[^\s>'\"]{1,256})"
_FUNCTION = re.compile(rf"<function={_NAME}>")
_PARAMETER = re.compile(rf"\s*<parameter={_NAME}>")
_GLM_NAME = re.compile(rf"{_NAME}\s*")
_ARG_KEY = re.compile(rf"\s*<arg_key>\s*{_NAME}\s*</arg_key>\s*<arg_value>")
_KIMI_CALL = re.compile(r"\s*<\|tool_call_begin\|>\s*([^\s<>]{1,300})\s*<\|tool_call_argument_begin\|>")
_INVOKE = re.compile(rf"\s*<invoke name={_QUOTED}>")
_MINIMAX_PARAMETER = re.compile(rf"\s*<parameter name={_QUOTED}>")


@dataclass(frozen=True, slots=True)
class Parsed:
    """The calls one block holds: its dialect, and (name, JSON arguments) for each call."""

    dialect: str
    calls: tuple[tuple[str, str], ...]


def parse_block(opener: str, inner: str, tools: ToolCatalog) -> Parsed | None:
    """The calls in the text between `opener` and its closer; None when it is not a call to offered tools."""
    body = inner.strip()
    reader: Callable[[str, ToolCatalog], list[tuple[str, str]] | None]
    if opener == KIMI_SECTION:
        dialect, reader = "kimi_k2", _kimi
    elif opener == MINIMAX:
        dialect, reader = "minimax_m2", _minimax
    elif body.startswith("{"):
        dialect, reader = "hermes", _hermes
    elif body.startswith("<function="):
        dialect, reader = "qwen3_coder", _qwen3_coder
    else:
        dialect, reader = "glm45", _glm
    calls = reader(body, tools)
    return Parsed(dialect, tuple(calls)) if calls else None


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _call(name: str, arguments: dict[str, Any], tools: ToolCatalog) -> tuple[str, str] | None:
    return (name, orjson.dumps(arguments).decode()) if tools.offers(name) else None


def _hermes(body: str, tools: ToolCatalog) -> list[tuple[str, str]] | None:
    found = _json_object(body)
    if found is None or not isinstance(name := found.get("name"), str):
        return None
    arguments = found.get("arguments", found.get("parameters", {}))
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        arguments = _json_object(arguments)
    call = _call(name, arguments, tools) if isinstance(arguments, dict) else None
    return [call] if call else None


def _trim(value: str) -> str:
    """A value as the XML dialects write it: one line break either side is layout, not value."""
    return value.removeprefix("\n").removesuffix("\n")


def _values(body: str, pos: int, opening: re.Pattern[str], closing: str) -> tuple[dict[str, str], int] | None:
    """`opening` NAME `>` value `closing`, repeated from `pos`: the values and where they stop."""
    values: dict[str, str] = {}
    while match := opening.match(body, pos):
        end = body.find(closing, match.end())
        if end < 0:
            return None
        values[match.group(1).strip("\"'")] = _trim(body[match.end() : end])
        pos = end + len(closing)
    space = _WS.match(body, pos)
    return values, space.end() if space else pos


def _qwen3_coder(body: str, tools: ToolCatalog) -> list[tuple[str, str]] | None:
    head = _FUNCTION.match(body)
    found = _values(body, head.end(), _PARAMETER, "</parameter>") if head else None
    if head is None or found is None or body[found[1] :] != "</function>":
        return None
    name = head.group(1)
    call = _call(name, tools.typed(name, found[0]), tools)
    return [call] if call else None


def _glm(body: str, tools: ToolCatalog) -> list[tuple[str, str]] | None:
    head = _GLM_NAME.match(body)
    found = _values(body, head.end(), _ARG_KEY, "</arg_value>") if head else None
    if head is None or found is None or found[1] != len(body):
        return None
    name = head.group(1)
    values = {key: value.strip() for key, value in found[0].items()}
    call = _call(name, tools.typed(name, values), tools)
    return [call] if call else None


def _kimi(body: str, tools: ToolCatalog) -> list[tuple[str, str]] | None:
    calls, pos, close = [], 0, "<|tool_call_end|>"
    while match := _KIMI_CALL.match(body, pos):
        end = body.find(close, match.end())
        arguments = _json_object(body[match.end() : end]) if end >= 0 else None
        # `functions.get_weather:0`: the namespace and the call's ordinal wrap the tool's name
        head, _, ordinal = match.group(1).rpartition(":")
        name = (head if ordinal.isdigit() else match.group(1)).removeprefix("functions.")
        call = _call(name, arguments, tools) if arguments is not None else None
        if call is None:
            return None
        calls.append(call)
        pos = end + len(close)
    return calls if body[pos:].strip() == "" else None


def _minimax(body: str, tools: ToolCatalog) -> list[tuple[str, str]] | None:
    calls, pos = [], 0
    while head := _INVOKE.match(body, pos):
        found = _values(body, head.end(), _MINIMAX_PARAMETER, "</parameter>")
        if found is None or not body.startswith("</invoke>", found[1]):
            return None
        name = head.group(1).strip("\"'")
        call = _call(name, tools.typed(name, found[0]), tools)
        if call is None:
            return None
        calls.append(call)
        pos = found[1] + len("</invoke>")
    return calls if pos == len(body) else None
