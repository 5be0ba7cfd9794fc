"""Everything one run needs to know, gathered from the command line and the environment."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

McpTransport = Literal["auto", "http", "sse", "stdio"]


@dataclass(frozen=True)
class RunSettings:
    """The options of one run, already validated."""

    question: str
    model: str
    proxy_url: str
    api_key: str
    session_id: str
    mcp_url: str | None = None
    mcp_transport: McpTransport = "auto"
    system_prompt: str | None = None  # a path or an http(s) URL, read at start
    origin: str | None = None
    max_turns: int = 20
    stream: bool = False
    transcript: Path | None = None
    quiet: bool = False
    timeout: float = 120.0

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL of the gateway."""
        return self.proxy_url.rstrip("/") + "/v1"
