"""Read the system prompt from a file or an http(s) URL, as chat apps keep theirs in either place."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from gateway.agent.errors import UsageError

FETCH_TIMEOUT = aiohttp.ClientTimeout(total=30)
MAX_PROMPT_BYTES = 4 * 1024 * 1024  # a prompt, not a download: refuse anything absurd rather than hold it


async def load_system_prompt(source: str | None) -> str | None:
    """The prompt text, or None when no source is given."""
    if not source:
        return None
    if source.startswith(("http://", "https://")):
        return await _fetch(source)
    try:
        return await asyncio.to_thread(_read, source)
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the system prompt {source}: {exc}") from exc


def _read(path: str) -> str:
    return Path(path).expanduser().read_text(encoding="utf-8")


async def _fetch(url: str) -> str:
    try:
        async with (
            aiohttp.ClientSession(timeout=FETCH_TIMEOUT) as session,
            session.get(url) as response,
        ):
            if response.status != 200:
                raise UsageError(f"cannot fetch the system prompt {url}: HTTP {response.status}")
            raw = await response.content.read(MAX_PROMPT_BYTES + 1)
    except (TimeoutError, aiohttp.ClientError) as exc:
        reason = f"{type(exc).__name__} {exc}".rstrip()
        raise UsageError(f"cannot fetch the system prompt {url}: {reason}") from exc
    if len(raw) > MAX_PROMPT_BYTES:
        raise UsageError(f"the system prompt at {url} is larger than {MAX_PROMPT_BYTES} bytes")
    return raw.decode("utf-8", errors="replace")
