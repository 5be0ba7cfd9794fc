"""Everything one run needs to know, gathered from the command line and the environment."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

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
        return openai_base_url(self.proxy_url)


def openai_base_url(proxy_url: str) -> str:
    """The openai SDK's base URL (`…/v1`) for the gateway's URL, with or without `/v1`; ValueError if bad."""
    parts = urlsplit(proxy_url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {proxy_url!r} (such as http://127.0.0.1:8080/v1)")
    try:
        _ = parts.port  # checked here: the SDK would fail on it only at the first call, with a traceback
    except ValueError as exc:
        raise ValueError(f"bad port in {proxy_url!r}: {exc}") from exc
    if parts.query or parts.fragment:
        raise ValueError(f"takes no query or fragment: {proxy_url!r}")
    path = parts.path.rstrip("/")
    # The whole endpoint, as the earlier proxy's provider configs spell it, names the same base.
    path = path.removesuffix("/chat/completions")
    if not path.endswith("/v1"):
        path += "/v1"  # the gateway's own root, or the path an ingress mounts it under
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))
