"""The clients `scripts/attack.py` runs: keyless uploads, made-up model names, ordinary calls, /livez probes,
hostile streams, and an RSS watch. Every one is bounded in count and in time, and talks to loopback only.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

PIECE = 256 * 1024  # bytes of body per chunk of a chunked upload
UPLOAD_HEAD = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
ASK = {"messages": [{"role": "user", "content": "Say hello."}]}


def framed(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@dataclass(frozen=True)
class Upload:
    """The chunks of one keyless chat body of about `size` bytes (valid JSON, no model)."""

    size: int
    first: bytes = field(init=False)
    middle: bytes = field(init=False)
    last: bytes = field(init=False)

    def __post_init__(self) -> None:
        head, tail = b'{"messages":[{"role":"user","content":"', b'"}]}'
        object.__setattr__(self, "first", framed(head + b"x" * (PIECE - len(head))))
        object.__setattr__(self, "middle", framed(b"x" * PIECE))
        object.__setattr__(self, "last", framed(tail) + b"0\r\n\r\n")

    def chunks(self) -> list[bytes]:
        return [self.first, *[self.middle] * max(0, self.size // PIECE - 1), self.last]


async def refused_upload(port: int, upload: Upload, timeout_s: float) -> str:
    """One keyless call that keeps sending its body until the gateway answers or hangs up; its outcome."""
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                return await _send_until_answered(reader, writer, upload)
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError):  # a reset, or asyncio prints it as never retrieved
                    await writer.wait_closed()
    except TimeoutError:
        return "no answer in time"
    except ConnectionError:
        return "connection refused or reset"


async def _send_until_answered(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upload: Upload
) -> str:
    answer = asyncio.ensure_future(reader.readline())
    try:
        writer.write(UPLOAD_HEAD)
        for chunk in upload.chunks():
            if answer.done():
                break
            writer.write(chunk)
            await writer.drain()
    except ConnectionError:
        pass  # the gateway stopped reading and closed: see whether it answered first
    try:
        line = await answer
    except ConnectionError:
        return "closed without an answer"
    parts = line.split()
    return f"HTTP {parts[1].decode()}" if len(parts) > 1 else "closed without an answer"


async def uploads(port: int, n: int, concurrency: int, size: int, max_s: float) -> dict[str, int]:
    """`n` refused uploads, `concurrency` at a time; how many ended which way."""
    upload, outcomes = Upload(size), collections.Counter[str]()
    todo, deadline = iter(range(n)), time.monotonic() + max_s

    async def worker() -> None:
        for _ in todo:
            left = deadline - time.monotonic()
            if left <= 0:
                outcomes["not sent: phase time limit"] += 1
                continue
            outcomes[await refused_upload(port, upload, min(60.0, left))] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return dict(outcomes)


async def made_up_models(session: aiohttp.ClientSession, url: str, key: str, n: int) -> dict[str, int]:
    """`n` made-up model names, each sent by a keyless and by a keyed caller; statuses counted."""
    names = [f"made-up-{i:03d}-{secrets.token_hex(3)}" for i in range(n)]
    statuses = collections.Counter[str]()
    limit = asyncio.Semaphore(20)

    async def one(model: str, headers: dict[str, str]) -> None:
        async with limit:
            try:
                async with session.post(url, json={"model": model, **ASK}, headers=headers) as response:
                    await response.read()
                    statuses[f"HTTP {response.status}"] += 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                statuses[type(exc).__name__] += 1

    keyed = {"Authorization": f"Bearer {key}"}
    await asyncio.gather(*(one(name, headers) for name in names for headers in ({}, keyed)))
    return dict(statuses)


@dataclass
class Window:
    """What ordinary clients saw during one scenario."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    probes: int = 0
    probes_answered: int = 0
    worst_probe_s: float = 0.0


async def ordinary_calls(
    session: aiohttp.ClientSession, url: str, key: str, until: float, window: Window, pause_s: float = 0.02
) -> None:
    """Non-streaming calls for a real model, one after another (with a short pause) until `until`."""
    body, headers = {"model": "mock-gpt", **ASK}, {"Authorization": f"Bearer {key}"}
    timeout = aiohttp.ClientTimeout(total=10)
    while time.monotonic() < until:
        start = time.perf_counter()
        try:
            async with session.post(url, json=body, headers=headers, timeout=timeout) as response:
                await response.read()
                window.errors += response.status != 200
        except (aiohttp.ClientError, TimeoutError):
            window.errors += 1
        window.latencies.append(time.perf_counter() - start)
        await asyncio.sleep(pause_s)


async def livez_probes(
    session: aiohttp.ClientSession, url: str, until: float, window: Window, every_s: float = 0.1
) -> None:
    """GET /livez every `every_s` with a one-second timeout, as a kubelet would."""
    timeout = aiohttp.ClientTimeout(total=1)
    while time.monotonic() < until:
        start = time.perf_counter()
        window.probes += 1
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(url, timeout=timeout) as response:
                await response.read()
                window.probes_answered += response.status == 200
        window.worst_probe_s = max(window.worst_probe_s, time.perf_counter() - start)
        await asyncio.sleep(max(0.0, every_s - (time.perf_counter() - start)))


async def seconds_until_live(url: str, within_s: float) -> float | None:
    """Seconds until GET `url` answers within 100 ms again; None if that takes longer than `within_s`."""
    start = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=0.1)
    async with aiohttp.ClientSession() as session:
        while time.monotonic() - start < within_s:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(url, timeout=timeout) as response:
                    if response.status == 200:
                        return round(time.monotonic() - start, 2)
            await asyncio.sleep(0.1)
    return None


async def hostile_call(
    session: aiohttp.ClientSession, url: str, key: str, model: str, max_s: float
) -> dict[str, Any]:
    """One streamed call for a hostile model, read until the gateway ends it or `max_s` passes."""
    body = {"model": model, **ASK, "stream": True}
    start, received, status = time.perf_counter(), 0, 0
    outcome = "ended by the gateway"
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    try:
        async with asyncio.timeout(max_s):
            headers = {"Authorization": f"Bearer {key}"}
            async with session.post(url, json=body, headers=headers, timeout=timeout) as response:
                status = response.status
                async for data in response.content.iter_any():
                    received += len(data)
    except TimeoutError:
        outcome = "still open, client gave up"
    except aiohttp.ClientError as exc:
        outcome = f"broken off ({type(exc).__name__})"
    seconds = round(time.perf_counter() - start, 2)
    return {"outcome": outcome, "status": status, "seconds": seconds, "bytes": received}


async def silent_connections(
    port: int, count: int, until: float, source: str, reopen_s: float
) -> dict[str, Any]:
    """`count` connections from `source` that send nothing, each opened again `reopen_s` after the gateway
    closed it, until `until` (with no pause, a connection flood: as many as one client can open)."""
    opened = closed = 0

    async def one() -> None:
        nonlocal opened, closed
        pause = 0.0  # none before the first time
        while until - time.monotonic() > pause:
            await asyncio.sleep(pause)
            pause = reopen_s
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
            except OSError:
                await asyncio.sleep(0.05)
                continue
            opened += 1
            try:
                async with asyncio.timeout(max(0.0, until - time.monotonic())):
                    await reader.read(1)  # b"" once the gateway closes it
                closed += 1
            except ConnectionError:
                closed += 1
            except TimeoutError:
                pass
            finally:
                writer.close()

    await asyncio.gather(*(one() for _ in range(count)))
    again = f"{reopen_s:g} s after it was" if reopen_s else "as soon as it was"
    outcome = f"{count} silent, each opened again {again} closed: {opened} opened, {closed} closed"
    return {"outcome": outcome}


async def watch_rss(
    rss_mb: Callable[[], float], until: float, guard_mb: float, on_guard: Callable[[], None]
) -> tuple[float, bool]:
    """The highest RSS seen (polled every 50 ms) until `until`; calls `on_guard` once past `guard_mb`."""
    peak, tripped = 0.0, False
    while time.monotonic() < until:
        peak = max(peak, rss_mb())
        if peak > guard_mb and not tripped:
            tripped = True
            on_guard()
        await asyncio.sleep(0.05)
    return peak, tripped
