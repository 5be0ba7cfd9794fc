"""Synthetic gateway log records in the real spool layout: `sessions` simulates the conversations, this
module spreads them over days and writes the chunk files."""

from __future__ import annotations

import argparse
import random
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import orjson

from synthetic.sessions import SessionSimulator

DAY_S = 86_400


@dataclass(frozen=True)
class SynthConfig:
    """What to generate."""

    records: int = 10_000
    start: date = date(2026, 10, 1)
    days: int = 30
    capture: str = "summary"  # or "full"
    seed: int = 7
    hosts: int = 2
    flush_interval_s: int = 300
    malformed_every: int = 0  # every Nth chunk gets a line that is not JSON
    truncated_every: int = 0  # every Nth chunk ends in a partially written line


@dataclass
class SynthStats:
    """What was written: counts the tests check the analyzer against."""

    records: int = 0
    files: int = 0
    bytes: int = 0
    malformed_lines: int = 0
    per_day: dict[str, int] = field(default_factory=dict)


def generate(root: Path, config: SynthConfig) -> SynthStats:
    """Write about `config.records` records under `root` in the `<date>/<chunk>.jsonl` layout."""
    rng = random.Random(config.seed)
    simulator = SessionSimulator(rng, capture=config.capture)
    writer = _ChunkWriter(root, config, rng)
    quotas = _day_quotas(rng, config)
    for offset, quota in enumerate(quotas):
        day_start = datetime.combine(config.start + timedelta(days=offset), datetime.min.time(), UTC)
        made = 0
        while made < quota:
            start = day_start + timedelta(seconds=_time_of_day(rng))
            records = simulator.session(start)
            writer.add(records)
            made += len(records)
        writer.flush_before(day_start.date())
    writer.flush_before(None)
    return writer.stats


def _day_quotas(rng: random.Random, config: SynthConfig) -> list[int]:
    """Records per day: quieter weekends, slow growth, some noise."""
    weights = []
    for offset in range(config.days):
        day = config.start + timedelta(days=offset)
        weekend = 0.4 if day.weekday() >= 5 else 1.0
        weights.append(weekend * (1.0 + offset / max(config.days, 1)) * rng.uniform(0.8, 1.2))
    total = sum(weights)
    return [max(1, round(config.records * w / total)) for w in weights]


def _time_of_day(rng: random.Random) -> float:
    """Seconds after midnight UTC, busiest in the US afternoon."""
    if rng.random() < 0.75:
        return rng.gauss(19.5 * 3600, 3.5 * 3600) % DAY_S
    return rng.uniform(0, DAY_S - 1)


class _ChunkWriter:
    """Buffers records by their own UTC date and writes them as per-host, per-flush-window chunks."""

    def __init__(self, root: Path, config: SynthConfig, rng: random.Random) -> None:
        self.root = root
        self.config = config
        self.rng = rng
        self.pending: dict[date, list[tuple[str, int, bytes]]] = defaultdict(list)
        self.stats = SynthStats()
        self.chunks = 0

    def add(self, records: list[dict[str, object]]) -> None:
        host = self.rng.randrange(self.config.hosts)
        for record in records:
            stamp = str(record["timestamp"])
            self.pending[date.fromisoformat(stamp[:10])].append((stamp, host, orjson.dumps(record)))

    def flush_before(self, day: date | None) -> None:
        """Write every buffered date older than `day` (all of them when `day` is None)."""
        for pending_day in sorted(self.pending):
            if day is None or pending_day < day:
                self._write_day(pending_day, self.pending.pop(pending_day))

    def _write_day(self, day: date, lines: list[tuple[str, int, bytes]]) -> None:
        lines.sort()
        chunks: dict[tuple[int, int], list[bytes]] = defaultdict(list)
        for stamp, host, line in lines:
            seconds = int(stamp[11:13]) * 3600 + int(stamp[14:16]) * 60 + int(stamp[17:19])
            chunks[(seconds // self.config.flush_interval_s, host)].append(line)
        folder = self.root / day.isoformat()
        folder.mkdir(parents=True, exist_ok=True)
        for (window, host), chunk in sorted(chunks.items()):
            self._write_chunk(folder, window, host, chunk)
        self.stats.per_day[day.isoformat()] = len(lines)

    def _write_chunk(self, folder: Path, window: int, host: int, chunk: list[bytes]) -> None:
        self.chunks += 1
        flushed = min(DAY_S - 1, (window + 1) * self.config.flush_interval_s)
        hh, mm, ss = flushed // 3600, flushed // 60 % 60, flushed % 60
        name = f"{hh:02d}-{mm:02d}-{ss:02d}-gateway-{host}-{100 + host}-{self.rng.getrandbits(32):08x}.jsonl"
        body = b"\n".join(chunk) + b"\n"
        if self.config.malformed_every and self.chunks % self.config.malformed_every == 0:
            body += b'{"timestamp": "2026-01-01T00:00:00+00:00", "type": "request", oops\n'
            self.stats.malformed_lines += 1
        if self.config.truncated_every and self.chunks % self.config.truncated_every == 0:
            body += chunk[0][: len(chunk[0]) // 2]
            self.stats.malformed_lines += 1
        (folder / name).write_bytes(body)
        self.stats.records += len(chunk)
        self.stats.files += 1
        self.stats.bytes += len(body)


def main(argv: list[str] | None = None) -> None:
    """Command line: write a synthetic data set."""
    parser = argparse.ArgumentParser(description="Write synthetic gateway log records.")
    parser.add_argument("out", type=Path)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--start", type=date.fromisoformat, default=date(2026, 10, 1))
    parser.add_argument("--capture", choices=["summary", "full"], default="summary")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    config = SynthConfig(args.records, args.start, args.days, args.capture, args.seed)
    stats = generate(args.out, config)
    print(f"{stats.records} records in {stats.files} files ({stats.bytes / 1e6:.1f} MB) under {args.out}")
