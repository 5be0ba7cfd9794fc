"""The measured phases: rounds of closed loops alternating over targets, the hold, and the logging cost."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import statistics
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bench.hold import HoldShape, hold_streams, merge
from bench.load import Target, closed_loop
from bench.processes import Server, cpu_seconds, machine_busy_s
from bench.targets import Stack

Measure = Callable[[Target], Awaitable[dict[str, float]]]
Rounds = dict[str, dict[str, list[float]]]  # target -> metric -> one value per round
HOLD_PAUSE_S = 5.0  # between two targets' holds: the floor's idle connections close in 2 to 4 s


@dataclass(frozen=True)
class Sizes:
    """How much of everything a run does; every loop is bounded by these in count and in time."""

    rounds: int = 3
    lat_n: int = 1000
    tput_n: int = 4000
    tput_c: int = 32
    stream_n: int = 400
    stream_c: int = 16
    stream_chunks: int = 20
    stream_delay_ms: float = 5.0
    hold_streams: int = 8000
    hold_chunks: int = 10
    hold_delay_ms: float = 400.0
    hold_open_per_s: float = 1000.0
    hold_rounds: int = 2
    hold_history_kb: int = 0
    warmup_s: float = 3.0
    phase_max_s: float = 30.0

    @property
    def stream_shape(self) -> tuple[int, float]:
        return self.stream_chunks, self.stream_delay_ms

    @property
    def hold_shape(self) -> HoldShape:
        return HoldShape(
            self.hold_streams,
            self.hold_chunks,
            self.hold_delay_ms,
            self.hold_open_per_s,
            self.hold_history_kb,
        )


QUICK = Sizes(rounds=2, lat_n=300, tput_n=1500, stream_n=160, hold_streams=2000, hold_rounds=1, warmup_s=1)


async def warm_up(target: Target, sizes: Sizes) -> None:
    """Unmeasured load of both kinds, so that no target is measured cold."""
    await closed_loop(target, 1_000_000, sizes.tput_c, sizes.warmup_s)
    await closed_loop(target, 1_000_000, sizes.stream_c, sizes.warmup_s / 2, sizes.stream_shape)


def median(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else math.nan


async def alternate(targets: list[Target], rounds: int, measure: Measure) -> Rounds:
    """Run `measure` on every target for `rounds` rounds, order flipped each round; every value kept."""
    per: Rounds = {t.name: {} for t in targets}
    for r in range(rounds):
        for target in targets if r % 2 == 0 else targets[::-1]:
            for key, value in (await measure(target)).items():
                per[target.name].setdefault(key, []).append(value)
    return per


def summarize(per: Rounds, bases: dict[str, str]) -> dict[str, dict[str, float]]:
    """Medians per target and metric, and per base the medians of the per-round differences and ratios.

    `bases` maps a base target to the prefix of its keys: {"direct": "", "floor": "floor_"} gives
    `added_p50_c1` (against direct) and `floor_added_p50_c1` (against the floor), so each added value is the
    median of paired differences, not a difference of medians.
    """
    out = {name: {k: median(v) for k, v in metrics.items()} for name, metrics in per.items()}
    order = list(bases)
    for i, (base, prefix) in enumerate(bases.items()):
        if base not in per:
            continue
        for name, metrics in per.items():
            if name in order[: i + 1]:  # a base is compared with the bases before it only
                continue
            for key, values in metrics.items():
                if against := per[base].get(key):
                    pairs = list(zip(values, against, strict=True))
                    out[name][f"{prefix}added_{key}"] = median([v - b for v, b in pairs])
                    out[name][f"{prefix}ratio_{key}"] = median([v / b if b else math.nan for v, b in pairs])
    return out


class Latency:
    """Non-streaming at c=1 and at c=32: latency, throughput, CPU per call of the target's process."""

    def __init__(self, sizes: Sizes, stack: Stack) -> None:
        self.sizes, self.stack = sizes, stack

    async def __call__(self, target: Target) -> dict[str, float]:
        sizes = self.sizes
        c1 = await closed_loop(target, sizes.lat_n, 1, sizes.phase_max_s)
        cpu0, busy0, ours0 = self._cpu(target), machine_busy_s(), self._ours(target)
        tput = await closed_loop(target, sizes.tput_n, sizes.tput_c, sizes.phase_max_s)
        cpu1, busy1, ours1 = self._cpu(target), machine_busy_s(), self._ours(target)
        out = {"p50_c1": c1.pct(50), "p99_c1": c1.pct(99), "p50_c32": tput.pct(50), "p99_c32": tput.pct(99)}
        out |= {"rps": tput.rps, "errors": c1.errors + tput.errors}
        out["other_load"] = max(0.0, (busy1 - busy0) - (ours1 - ours0)) / tput.wall  # cores busy with others
        if target.server:
            out["cpu_ms"] = (cpu1 - cpu0) * 1000 / max(1, len(tput.samples))
        return out

    @staticmethod
    def _cpu(target: Target) -> float:
        return target.server.cpu_s() if target.server else 0.0

    def _ours(self, target: Target) -> float:
        """CPU seconds of this process, the upstream and the target's process: all but other people's work."""
        servers = [s for s in (target.server, self.stack.upstream) if s]
        return cpu_seconds(os.getpid()) + sum(s.cpu_s() for s in servers)


def streaming(sizes: Sizes) -> Measure:
    """Streams at c=16: time to first chunk and the whole stream."""

    async def measure(target: Target) -> dict[str, float]:
        run = await closed_loop(target, sizes.stream_n, sizes.stream_c, sizes.phase_max_s, sizes.stream_shape)
        return {
            "ttfb_p50": run.pct(50, ttfb=True), "ttfb_p99": run.pct(99, ttfb=True),
            "stream_p50": run.pct(50), "stream_errors": run.errors,
        }  # fmt: skip

    return measure


@dataclass(frozen=True)
class Snapshots:
    """The traced gateway's tracemalloc snapshots, asked for by signal (see bench.traced)."""

    server: Server

    def baseline(self) -> None:
        self.server.signal(signal.SIGUSR2)

    def peak(self) -> None:
        self.server.signal(signal.SIGUSR1)


async def holds(targets: list[Target], sizes: Sizes, stack: Stack) -> dict[str, dict[str, Any]]:
    """The hold on each target in turn, direct first, order flipped each round, from the same load generator.

    Each target's own process and the upstream are watched; with a traced gateway, its memory report is
    taken a second after all of its streams are open. Gaps are also compared with direct's round by round.
    """
    per: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
    for r in range(sizes.hold_rounds):
        for target in targets if r % 2 == 0 else targets[::-1]:
            watched = [s for s in (target.server, stack.upstream) if s]
            traced = stack.traced and target.name == "gateway" and r == 0
            profiler = Snapshots(target.server) if traced and target.server else None
            per[target.name].append(await hold_streams(target, sizes.hold_shape, watched, profiler))
            await asyncio.sleep(HOLD_PAUSE_S)  # a quiet start for the next target
    out = {name: merge(rounds) for name, rounds in per.items()}
    for name, rounds in per.items():
        if name != "direct" and "direct" in per:
            pairs = zip(rounds, per["direct"], strict=True)
            out[name]["added_gap_p99_ms"] = median([a["gap_p99_ms"] - b["gap_p99_ms"] for a, b in pairs])
    return out


async def logging_cost(stack: Stack, floor: Target, sizes: Sizes) -> dict[str, Any]:
    """Throughput and unloaded p50 with logging off, summary and full, on fresh gateways, and the floor."""
    targets = []
    for mode in ("off", "summary", "full"):
        server, port = await stack.start_gateway(mode)
        targets.append(stack.target(mode, port, server))
    try:
        for target in targets:
            await warm_up(target, sizes)
        per = await alternate([*targets, floor], sizes.rounds, Latency(sizes, stack))
    finally:
        await asyncio.gather(*(t.session.close() for t in targets))
        for target in targets:
            if target.server:
                target.server.stop()
    return {"baseline": "off", "modes": summarize(per, {"off": ""})}
