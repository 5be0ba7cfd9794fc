"""What the gateway is held to, as ratios within one run, and whether this run met each target."""

from __future__ import annotations

import json
import math
import operator
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HOLD_STREAMS = 8000  # the hold targets are stated for this many streams
PEER_TARGETS = {"portkey": 5.0, "litellm": 40.0}  # our throughput per core, at least this many times theirs


@dataclass(frozen=True)
class Goal:
    """One target: the measured value, the limit it is held to, how they compare, and how to print them."""

    name: str
    value: float | None
    limit: float
    compare: Callable[[float, float], bool]
    unit: str = ""
    note: str = ""
    applies: bool = True  # False: measured under other conditions than the target's, so not judged

    @property
    def met(self) -> bool | None:
        if not self.applies or self.value is None or math.isnan(self.value):
            return None
        return self.compare(self.value, self.limit)

    def as_dict(self) -> dict[str, Any]:
        return {"goal": self.name, "value": self.value, "limit": self.limit, "unit": self.unit,
                "met": self.met, "note": self.note}  # fmt: skip


def goals(report: dict[str, Any]) -> list[Goal]:
    """Every target, from the phases this run had (a phase not run gives a goal with no value)."""
    return [*overhead_goals(report), *logging_goals(report), *peer_goals(report), *hold_goals(report)]


def overhead_goals(report: dict[str, Any]) -> list[Goal]:
    """One worker with summary logging against the floor, in the same rounds."""
    summary = report["meta"]["logging"] == "summary"
    note = "" if summary else "stated for summary logging; run with --logging summary"
    lat = report.get("latency", {}).get("gateway", {})
    stm = report.get("streams", {}).get("gateway", {})
    le = operator.le
    return [
        Goal("CPU per request, gateway / floor", lat.get("floor_ratio_cpu_ms"), 1.3, le, "x", note, summary),
        Goal(
            "added p50 at c=1, gateway - floor", lat.get("floor_added_p50_c1"), 0.1, le, "ms", note, summary
        ),
        Goal(
            "stream TTFB p99, gateway - floor", stm.get("floor_added_ttfb_p99"), 0.5, le, "ms", note, summary
        ),
    ]


def logging_goals(report: dict[str, Any]) -> list[Goal]:
    """Throughput lost to each logging mode against logging off, on fresh gateways in the same rounds."""
    modes = (report.get("logging") or {}).get("modes", {})
    out = []
    for mode, limit in (("full", 10.0), ("summary", 5.0)):
        ratio = modes.get(mode, {}).get("ratio_rps")
        cost = None if ratio is None else (1 - ratio) * 100
        note = "" if modes else "not measured (--no-logging-cost)"
        out.append(Goal(f"{mode} logging: throughput cost vs off", cost, limit, operator.le, "%", note))
    return out


def peer_goals(report: dict[str, Any]) -> list[Goal]:
    """Our throughput per core against each peer's, from one shared-harness run (each on one core)."""
    peers = report.get("peers") or {}
    out = []
    for peer, limit in PEER_TARGETS.items():
        ratio, note = peers.get(f"rps_ratio_{peer}"), peers.get("note", "not measured (no --peers file)")
        if ratio is not None:
            note = f"CPU per request: theirs / ours = {peers[f'cpu_ratio_{peer}']:.1f}x"
        out.append(Goal(f"throughput per core vs {peer}", ratio, limit, operator.ge, "x", note))
    return out


def hold_goals(report: dict[str, Any]) -> list[Goal]:
    """The hold: every stream whole, the gateway's peak RSS, and its chunk gaps against direct's."""
    holds = report.get("hold") or {}
    gateway = holds.get("gateway")
    if not gateway:
        return []
    n = gateway["streams"]
    full = n >= HOLD_STREAMS
    small = "" if full else f"stated for {HOLD_STREAMS:,} streams; this run held {n:,}"
    lost = gateway["failed"] + gateway["incomplete"] + gateway["stalled"]
    held = full and not lost and gateway["peak_open"] >= n  # memory and gaps mean something only then
    note = small or ("" if held else "not judged: not every stream was open at once and whole")
    ge, le = operator.ge, operator.le
    return [
        Goal("hold: streams open at once through the gateway", gateway["peak_open"], n, ge, "", small, full),
        Goal("hold: streams stalled, failed or incomplete", lost, 0, le, "", small, full),
        Goal("hold: gateway peak RSS", gateway.get("rss_peak_mb"), 350, operator.lt, "MB", note, held),
        Goal(
            "hold: chunk gap p99, gateway - direct", gateway.get("added_gap_p99_ms"), 50, le, "ms", note, held
        ),
    ]


def load_peers(path: Path) -> dict[str, Any]:
    """Throughput and CPU ratios of ours to each peer, medians over the repeats of one harness run.

    `path` is the harness's results.json or the run folder holding it; the run must include `ours`.
    """
    data = json.loads((path / "results.json" if path.is_dir() else path).read_text())
    rows = [row for repeat in data["repeats"] for row in repeat if not row.get("error") and "tput" in row]

    def med(name: str, key: str) -> float | None:
        values = [r["tput"][key] for r in rows if r["name"] == name and r["tput"].get(key)]
        return statistics.median(values) if values else None

    out: dict[str, Any] = {
        "file": str(path),
        "versions": data.get("versions"),
        "repeats": len(data["repeats"]),
    }
    ours_rps, ours_cpu = med("ours", "rps"), med("ours", "proxy_cpu_ms_per_req")
    if not ours_rps or not ours_cpu:
        return out | {"note": "not measured (the peers file has no 'ours' row)"}
    for peer in PEER_TARGETS:
        rps, cpu = med(peer, "rps"), med(peer, "proxy_cpu_ms_per_req")
        out |= {f"rps_{peer}": rps, f"cpu_ms_{peer}": cpu}
        if rps and cpu:
            out |= {f"rps_ratio_{peer}": ours_rps / rps, f"cpu_ratio_{peer}": cpu / ours_cpu}
    return out | {"rps_ours": ours_rps, "cpu_ms_ours": ours_cpu}
