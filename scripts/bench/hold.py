"""The hold phase: thousands of slow streams open at once, through one target, with its memory watched.

Streams are sent at a bounded rate (a burst of thousands of connects would overflow the listen backlog and
measure SYN retries instead). Each gets its headers and first chunk at once, then asks the upstream to pause
until every stream has been sent, plus a random fraction of one chunk interval: all of them are open at the
same time, and then stream with their chunks spread evenly over the interval, as independent clients' would.
The gap after the pause is not counted; the cost of starting a stream falls in the ramp, not in the gaps.
Likewise the cost of ending one: every connection stays open, as a pooled client's and a provider's do, until
all streams have ended. Torn down as each stream ends, 8,000 connections close within one chunk interval,
and that wave, not the relay, set the last gap of every stream (direct's p99 by about 170 ms).
Descriptors are counted only outside the streaming (listing 16,000 of them stops the load for 11 ms).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

from bench.load import Target, percentile, request_body
from bench.processes import Server, cpu_seconds, open_fds
from bench.wire import WHOLE_END, Stream, connect, http_request

SETTLE_S = 2.0  # between the last stream sent and the first paced chunk: the last ones get their first
GRACE_S = 20.0  # a stream not finished this long after its last chunk was due is stalled
WATCH_EVERY_S = 0.5
COUNTS = ("complete", "incomplete", "failed", "stalled", "seconds")
MEDIANS = ("gap_p50_ms", "gap_p99_ms", "gap_p99_before_last_ms")


class Profiler(Protocol):
    """Something that looks into the target's memory: before the hold, and with every stream open."""

    def baseline(self) -> None: ...
    def peak(self) -> None: ...


@dataclass(frozen=True)
class HoldShape:
    """How many streams, how many chunks each, how far apart, and how fast they are opened."""

    streams: int
    chunks: int = 10
    delay_ms: float = 400.0
    open_per_s: float = 1000.0
    history_kb: int = 0  # earlier turns in each request: the gateway holds a call's body while it streams


@dataclass
class Tally:
    """What the streams of one hold saw, updated as their chunks arrive."""

    total: int
    events: int  # in a whole stream
    start: float = field(default_factory=time.monotonic)
    open: int = 0
    peak: int = 0
    all_open_at: float = math.nan
    complete: int = 0
    incomplete: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    gaps: list[float] = field(default_factory=list)
    before_last: list[float] = field(default_factory=list)  # the gaps but the one before `[DONE]`

    def opened(self, now: float) -> None:
        self.open += 1
        if self.open > self.peak:
            self.peak = self.open
            if self.peak == self.total:
                self.all_open_at = now - self.start

    def gap(self, seconds: float, last: bool) -> None:
        self.gaps.append(seconds)
        if not last:
            self.before_last.append(seconds)

    def ended(self, error: str | None, body: bytes, opened: bool) -> None:
        self.open -= opened
        if error is not None:
            self.errors[error] += 1
        elif body.count(b"data: ") == self.events and body.endswith(WHOLE_END):
            self.complete += 1
        else:
            self.incomplete += 1

    @property
    def ended_count(self) -> int:
        return self.complete + self.incomplete + sum(self.errors.values())


@dataclass
class Peaks:
    """The highest RSS seen while the streams were open (every half second), and descriptor counts."""

    servers: list[Server]
    rss_mb: dict[str, float] = field(default_factory=dict)
    fds: dict[str, int] = field(default_factory=dict)

    def sample(self) -> None:
        for server in self.servers:
            self.rss_mb[server.name] = max(self.rss_mb.get(server.name, 0.0), server.memory_mb("VmRSS"))

    def count_fds(self) -> None:
        """Descriptors held now: only while no chunk is timed, as listing them stops the load."""
        for server in self.servers:
            self.fds[server.name] = max(self.fds.get(server.name, 0), server.fds())
        self.fds["load"] = max(self.fds.get("load", 0), open_fds(os.getpid()))

    async def watch(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(WATCH_EVERY_S)


def cpu_now(servers: list[Server]) -> dict[str, float]:
    """CPU seconds so far of each watched process and of this one (the load generator)."""
    return {s.name: s.cpu_s() for s in servers} | {"load": cpu_seconds(os.getpid())}


async def open_streams(target: Target, shape: HoldShape, tally: Tally, start_at: float) -> list[Stream]:
    """Send every stream at `shape.open_per_s`, each asking to start at `start_at` plus a random offset."""
    jitter = random.Random(12)
    streams, connects = [], []
    for i in range(shape.streams):
        ahead = tally.start + i / shape.open_per_s - time.monotonic()
        if ahead > 0.005:
            await asyncio.sleep(ahead)
        pause_ms = (start_at - time.monotonic()) * 1000 + jitter.uniform(0, shape.delay_ms)
        body = request_body(True, shape.chunks, shape.delay_ms, pause_ms, history_kb=shape.history_kb)
        streams.append(Stream(http_request(target.url, target.headers, body), tally))
        connects.append(asyncio.create_task(connect(streams[-1], target.url)))
    await asyncio.gather(*connects)
    return streams


async def hold_streams(
    target: Target, shape: HoldShape, watched: list[Server], profiler: Profiler | None = None
) -> dict[str, Any]:
    """Hold `shape.streams` streams open at once through `target`; whether each completed, gaps, peaks.

    A profiler takes its baseline before the first stream is sent and its peak half a second after the last
    stream's first chunk was due.
    """
    tally = Tally(shape.streams, events=shape.chunks + 4)  # role, tokens, finish, usage, [DONE]
    start_at = tally.start + shape.streams / shape.open_per_s + SETTLE_S
    deadline = start_at + (shape.chunks + 1) * shape.delay_ms / 1000 + GRACE_S
    peaks = Peaks(watched)
    before = {s.name: s.memory_mb("VmRSS") for s in watched}
    watcher = asyncio.create_task(peaks.watch())
    if profiler is not None:
        profiler.baseline()
    streams: list[Stream] = []
    try:
        streams = await open_streams(target, shape, tally, start_at)
        ramp_s = time.monotonic() - tally.start
        peaks.count_fds()  # every stream open, none paced yet
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        cpu_before, streaming_from = cpu_now(watched), time.monotonic()
        open_at_snapshot = await _snapshot(profiler, tally, shape) if profiler is not None else None
        stalled = await until_ended(streams, deadline)
        streaming_s = time.monotonic() - streaming_from
        used = {k: v - cpu_before[k] for k, v in cpu_now(watched).items()}
        peaks.count_fds()  # every stream ended, none closed yet
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        for stream in streams:
            stream.close()
    out = summary(tally, stalled, ramp_s) | memory(target, before, peaks, tally.peak)
    out |= cpu(used, streaming_s, (tally.complete + tally.incomplete) * shape.chunks)  # paced writes
    if open_at_snapshot is not None:
        out["open_at_snapshot"] = open_at_snapshot
    return out | {"seconds": time.monotonic() - tally.start}


async def _snapshot(profiler: Profiler, tally: Tally, shape: HoldShape) -> int:
    """The profiler's peak, when every stream has had its first chunk if the target keeps up; how many had."""
    await asyncio.sleep(shape.delay_ms / 1000 + 0.5)
    profiler.peak()
    return tally.open


async def until_ended(streams: list[Stream], deadline: float) -> int:
    """Wait for every stream to end, until the deadline; abort the rest and say how many (stalled)."""
    if pending := [s.done for s in streams if not s.done.done()]:
        await asyncio.wait(pending, timeout=max(0.0, deadline - time.monotonic()))
    stalled = [s for s in streams if not s.done.done()]
    for stream in stalled:
        stream.abort()
    return len(stalled)


def cpu(used: dict[str, float], seconds: float, writes: int) -> dict[str, Any]:
    """Cores each process kept busy while the streams ran, and its CPU per chunk the upstream wrote."""
    return {
        "cpu_busy": {k: v / seconds for k, v in used.items()},
        "cpu_us_per_chunk": {k: v / writes * 1e6 if writes else math.nan for k, v in used.items()},
    }


def summary(tally: Tally, stalled: int, ramp_s: float) -> dict[str, Any]:
    """Counts, the time until all were open, and the gaps between chunks in ms."""
    gaps = sorted(tally.gaps)
    return {
        "streams": tally.total, "peak_open": tally.peak, "complete": tally.complete,
        "incomplete": tally.incomplete, "failed": sum(tally.errors.values()), "stalled": stalled,
        "errors": dict(tally.errors), "ramp_s": ramp_s, "all_open_after_s": tally.all_open_at,
        "gap_p50_ms": percentile(gaps, 50) * 1000, "gap_p99_ms": percentile(gaps, 99) * 1000,
        "gap_max_ms": (gaps[-1] if gaps else math.nan) * 1000,
        "gap_p99_before_last_ms": percentile(sorted(tally.before_last), 99) * 1000,
    }  # fmt: skip


def memory(target: Target, before: dict[str, float], peaks: Peaks, peak_open: int) -> dict[str, Any]:
    """RSS before and at the peak, and per stream, of the target's own process; descriptors of each."""
    out: dict[str, Any] = {"peak_fds": dict(peaks.fds), "peak_rss_mb": dict(peaks.rss_mb)}
    if server := target.server:
        grown = peaks.rss_mb.get(server.name, 0.0) - before[server.name]
        out |= {"rss_before_mb": before[server.name], "rss_peak_mb": peaks.rss_mb.get(server.name)}
        out["rss_per_stream_kb"] = grown * 1024 / peak_open if peak_open else math.nan
    return out


def merge(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One target's holds over its rounds: counts added up, gaps the median, peaks the worst."""
    out: dict[str, Any] = {"rounds": len(rounds)}
    for key, first in rounds[0].items():
        values = [r[key] for r in rounds]
        if key in COUNTS:
            out[key] = sum(values)
        elif key == "peak_open":
            out[key] = min(values)
        elif key in MEDIANS:
            out[key] = statistics.median(values)
        elif key == "errors":
            out[key] = dict(sum((Counter(v) for v in values), Counter()))
        elif isinstance(first, dict):
            out[key] = {k: max(v[k] for v in values) for k in first}
        elif isinstance(first, float):
            out[key] = max(values)
        else:
            out[key] = first
    if "rss_before_mb" in out:  # the growth from the process's first hold to its highest peak
        out["rss_before_mb"] = min(r["rss_before_mb"] for r in rounds)
        grown = out["rss_peak_mb"] - out["rss_before_mb"]
        out["rss_per_stream_kb"] = grown * 1024 / out["peak_open"] if out["peak_open"] else math.nan
    return out
