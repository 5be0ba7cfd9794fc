"""Bounded closed-loop load over aiohttp, and the percentiles of what came back."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from bench.processes import Server

MODEL = "mock-gpt"
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=60)
DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True)
class Target:
    """Where the load goes: the upstream itself, the floor or a gateway, with its process when we run it."""

    name: str
    url: str
    session: aiohttp.ClientSession
    headers: dict[str, str]
    server: Server | None = None


@dataclass
class Sample:
    """One call: whether its answer was whole, how long it took, and when its first chunk came."""

    ok: bool
    total: float = 0.0
    ttfb: float | None = None
    error: str | None = None


@dataclass
class Run:
    """The samples of one closed loop and how long it ran."""

    samples: list[Sample]
    wall: float

    @property
    def ok(self) -> list[Sample]:
        return [s for s in self.samples if s.ok]

    @property
    def errors(self) -> int:
        return len(self.samples) - len(self.ok)

    def pct(self, q: float, ttfb: bool = False) -> float:
        """The q-th percentile in ms, of the whole call or of its first chunk."""
        values = sorted((s.ttfb if ttfb else s.total) or 0.0 for s in self.ok)
        return percentile(values, q) * 1000

    @property
    def rps(self) -> float:
        return len(self.ok) / self.wall if self.wall else 0.0


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values (as the shared harness computes it)."""
    if not values:
        return math.nan
    return values[max(0, min(len(values) - 1, math.ceil(q / 100 * len(values)) - 1))]


def request_body(
    stream: bool, chunks: int = 0, delay_ms: float = 0.0, pause_ms: float = 0.0, history_kb: int = 0
) -> bytes:
    """A chat completion request; the mock_* fields shape the bench upstream's answer.

    `history_kb` puts earlier turns of about that many KB before the question, as an agent's calls carry.
    """
    turns = [{"role": ("user", "assistant")[i % 2], "content": "x" * 500} for i in range(history_kb * 2)]
    body: dict[str, Any] = {"model": MODEL, "messages": [*turns, {"role": "user", "content": "Say hello."}]}
    body["max_tokens"] = 32
    if stream:  # asking for usage ourselves means the gateway forwards our bytes unchanged
        body |= {"stream": True, "stream_options": {"include_usage": True}}
        body |= {"mock_chunks": chunks, "mock_chunk_delay_ms": delay_ms}
    if pause_ms > 0:
        body["mock_pause_ms"] = round(pause_ms, 1)
    return orjson.dumps(body)


async def one_call(target: Target, body: bytes, stream: bool, last_token: bytes) -> Sample:
    """Send one call and check its answer down to the last token (and `[DONE]` for a stream)."""
    start = time.perf_counter()
    ttfb = None
    try:
        async with target.session.post(target.url, data=body, headers=target.headers) as response:
            if not stream:
                data = await response.read()
            else:
                parts = []
                async for chunk in response.content.iter_any():
                    ttfb = ttfb or time.perf_counter() - start
                    parts.append(chunk)
                data = b"".join(parts)
            total = time.perf_counter() - start
            status = response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Sample(False, error=type(exc).__name__)
    if status != 200:
        return Sample(False, error=f"HTTP {status}")
    if last_token not in data or (stream and not data.endswith(DONE)):
        return Sample(False, error="incomplete answer")
    return Sample(True, total, ttfb)


async def closed_loop(
    target: Target, n: int, concurrency: int, max_s: float, stream: tuple[int, float] | None = None
) -> Run:
    """`n` calls from `concurrency` workers, each starting its next call when the last one ends.

    `stream` asks for (chunks, delay ms) streams; every answer is checked down to its last token.
    """
    body = request_body(stream is not None, *(stream or (0, 0.0)))
    last = f"tok{stream[0] - 1} ".encode() if stream else b"bench upstream"
    samples: list[Sample] = []
    todo = iter(range(n))
    deadline = time.monotonic() + max_s

    async def worker() -> None:
        for _ in todo:
            if time.monotonic() > deadline:
                return
            samples.append(await one_call(target, body, stream is not None, last))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Run(samples, time.perf_counter() - start)
