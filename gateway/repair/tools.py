"""The tools a request offered, and the typing of markup argument values by each tool's JSON schema."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

MAX_TOOLS = 512  # tools read from one request; an offer past this many is not repaired against


@dataclass(frozen=True, slots=True)
class ToolCatalog:
    """Tool name -> its parameters' `properties` schema, as the request offered them."""

    properties: Mapping[str, Mapping[str, Any]]

    @classmethod
    def from_body(cls, body: Mapping[str, Any] | None) -> ToolCatalog | None:
        """The catalog of a chat body's `tools`, or None when it offers no named function."""
        tools = body.get("tools") if isinstance(body, Mapping) else None
        if not isinstance(tools, list) or not tools or len(tools) > MAX_TOOLS:
            return None
        found: dict[str, Mapping[str, Any]] = {}
        for tool in tools:
            function = tool.get("function") if isinstance(tool, dict) else None
            name = function.get("name") if isinstance(function, dict) else None
            if isinstance(name, str) and name:
                params = function.get("parameters") if isinstance(function, dict) else None
                props = params.get("properties") if isinstance(params, dict) else None
                found[name] = props if isinstance(props, dict) else {}
        return cls(found) if found else None

    def offers(self, name: str) -> bool:
        return name in self.properties

    def typed(self, tool: str, values: Mapping[str, str]) -> dict[str, Any]:
        """Markup values (all text) typed as the tool's schema says; a value that does not fit stays text."""
        props = self.properties.get(tool, {})
        return {key: typed_value(value, _types(props.get(key))) for key, value in values.items()}


def _types(schema: Any) -> tuple[str, ...]:
    """The JSON types a property's schema allows: `type` (one or a list), else its anyOf/oneOf branches."""
    if not isinstance(schema, dict):
        return ()
    kind = schema.get("type")
    if isinstance(kind, str):
        return (kind,)
    if isinstance(kind, list):
        return tuple(k for k in kind if isinstance(k, str))
    branches = schema.get("anyOf") or schema.get("oneOf")
    if isinstance(branches, list):
        return tuple(t for branch in branches for t in _types(branch))
    return ()


def typed_value(text: str, types: tuple[str, ...]) -> Any:
    """`text` as the first of `types` it parses as; text when none fits or the schema says nothing."""
    for kind in types:
        if kind == "string":
            return text
        value = _parse(text.strip(), kind)
        if value is not _NO_FIT:
            return value
    return text


_NO_FIT = object()
_JSON_TYPES: dict[str, type | tuple[type, ...]] = {
    "integer": int,
    "number": (int, float),
    "object": dict,
    "array": list,
    "null": type(None),
}


def _parse(text: str, kind: str) -> Any:
    if kind == "boolean":
        lowered = text.lower()
        return lowered == "true" if lowered in ("true", "false") else _NO_FIT
    wanted = _JSON_TYPES.get(kind)
    if wanted is None:
        return _NO_FIT
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return _NO_FIT
    # JSON's true is no number, and 5.0 is no integer: either stays text rather than change its meaning.
    return _NO_FIT if isinstance(value, bool) or not isinstance(value, wanted) else value
