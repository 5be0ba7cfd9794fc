"""The run as text tables: the three targets side by side, the hold, the logging cost, then every goal."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from bench.goals import Goal, goals

NAMES = ("direct", "floor", "gateway")


def fmt(value: float | None, digits: int = 2, sign: bool = False) -> str:
    """A number for a table cell; '-' for none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell; the first left-aligned, the rest right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [header, ["-" * w for w in widths], *rows]
    return "\n".join(
        "  ".join(c.ljust(w) if not i else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in lines
    )


def main_rows(report: dict[str, Any]) -> Iterator[list[str]]:
    """Latency, streams, throughput, CPU and memory; added is against direct, the last column the floor."""
    lat, stm, mem = report["latency"], report["streams"], report["memory"]
    for key, label, phase in [
        ("p50_c1", "latency p50, c=1 (ms)", lat), ("p99_c1", "latency p99, c=1 (ms)", lat),
        ("p50_c32", "latency p50, c=32 (ms)", lat), ("p99_c32", "latency p99, c=32 (ms)", lat),
        ("ttfb_p50", "first chunk p50, c=16 (ms)", stm), ("ttfb_p99", "first chunk p99, c=16 (ms)", stm),
        ("stream_p50", "whole stream p50, c=16 (ms)", stm),
    ]:  # fmt: skip
        d, f, g = (phase[n] for n in NAMES)
        added = [fmt(f.get("added_" + key), sign=True), fmt(g.get("added_" + key), sign=True)]
        yield [
            label,
            fmt(d[key]),
            fmt(f[key]),
            fmt(g[key]),
            *added,
            fmt(g.get("floor_added_" + key), sign=True),
        ]
    d, f, g = (lat[n] for n in NAMES)
    rps = [fmt(x["rps"], 0) for x in (d, f, g)]
    ratios = [fmt(x.get(k)) + "x" for x, k in ((f, "ratio_rps"), (g, "ratio_rps"), (g, "floor_ratio_rps"))]
    yield ["throughput, c=32 (req/s)", *rps, *ratios]
    cpu = [fmt(f.get("cpu_ms"), 3), fmt(g.get("cpu_ms"), 3)]
    yield ["CPU per request (ms)", "", *cpu, "", "", fmt(g.get("floor_ratio_cpu_ms")) + "x"]
    for key, label in (
        ("idle_rss_mb", "idle RSS (MB)"),
        ("peak_rss_after_load_mb", "peak RSS after load (MB)"),
    ):
        yield [label, "", fmt(mem["floor"].get(key), 1), fmt(mem["gateway"].get(key), 1), "", "", ""]


def hold_rows(hold: dict[str, Any]) -> Iterator[list[str]]:
    """One column per target held; direct's memory is the upstream's, in parentheses."""
    cols = [hold[n] for n in NAMES if n in hold]
    yield ["streams open at once", *(f"{h['peak_open']}/{h['streams']}" for h in cols)]
    yield ["all sent after (s)", *(fmt(h["ramp_s"]) for h in cols)]
    yield ["all open after (s)", *(fmt(h["all_open_after_s"]) for h in cols)]
    for key in ("complete", "incomplete", "failed", "stalled"):
        yield [f"streams {key}", *(str(h[key]) for h in cols)]
    for key, label in (("gap_p50_ms", "chunk gap p50 (ms)"), ("gap_p99_ms", "chunk gap p99 (ms)")):
        yield [label, *(fmt(h[key], 1) for h in cols)]
    yield ["  p99 added over direct's", *(fmt(h.get("added_gap_p99_ms"), 1, sign=True) for h in cols)]
    yield ["chunk gap max (ms)", *(fmt(h["gap_max_ms"], 1) for h in cols)]
    yield ["  p99 but the gap before [DONE]", *(fmt(h.get("gap_p99_before_last_ms"), 1) for h in cols)]
    yield ["RSS before (MB)", *(fmt(h.get("rss_before_mb"), 1) for h in cols)]
    yield ["peak RSS (MB)", *(_own(h, "peak_rss_mb", 1) for h in cols)]
    yield ["RSS per stream (KB)", *(fmt(h.get("rss_per_stream_kb"), 1) for h in cols)]
    yield ["cores busy while streaming, own", *(_own(h, "cpu_busy", 2) for h in cols)]
    yield ["  upstream's", *(fmt(h["cpu_busy"].get("upstream"), 2) for h in cols)]
    yield ["  load generator's", *(fmt(h["cpu_busy"].get("load"), 2) for h in cols)]
    yield ["CPU per chunk relayed (us), own", *(_own(h, "cpu_us_per_chunk", 1) for h in cols)]
    yield ["  upstream's", *(fmt(h["cpu_us_per_chunk"].get("upstream"), 1) for h in cols)]
    yield ["  load generator's", *(fmt(h["cpu_us_per_chunk"].get("load"), 1) for h in cols)]
    yield ["peak descriptors", *(_own(h, "peak_fds", 0) for h in cols)]
    yield ["  upstream's", *(str(h["peak_fds"].get("upstream", "-")) for h in cols)]
    yield ["  load generator's", *(str(h["peak_fds"].get("load", "-")) for h in cols)]


def _own(hold: dict[str, Any], key: str, digits: int) -> str:
    """The target process's own figure; for direct, the upstream's in parentheses."""
    values = {k: v for k, v in hold[key].items() if k not in ("upstream", "load")}
    if values:
        return fmt(sum(values.values()), digits)
    return f"({fmt(hold[key].get('upstream'), digits)})"


def logging_rows(logging: dict[str, Any]) -> Iterator[list[str]]:
    """Each logging mode and the floor against logging off."""
    for mode, values in logging["modes"].items():
        cells = [mode, fmt(values["rps"], 0), fmt(values["p50_c1"], 3), fmt(values.get("cpu_ms"), 3)]
        if mode in (logging["baseline"], "floor"):  # the floor is there to be seen, not held to a cost
            yield [*cells, "", ""]
        else:
            cost = 100 * (1 - values["ratio_rps"])
            yield [*cells, fmt(cost, 1) + " %", fmt(values["added_p50_c1"], 3, sign=True)]


def goal_row(goal: Goal) -> list[str]:
    """The goal, its value and limit in its unit, and yes/no (or '-' when not judged)."""
    digits = 0 if goal.unit in ("", "MB") else (1 if goal.unit in ("%", "x") else 2)
    sign = goal.unit == "ms"
    unit = {"": "", "x": "x", "%": " %"}.get(goal.unit, " " + goal.unit)
    op = {"le": "<=", "ge": ">=", "lt": "<"}.get(goal.compare.__name__, "?")
    value = "-" if goal.value is None else fmt(goal.value, digits, sign) + unit
    met = {True: "yes", False: "no", None: "-"}[goal.met]
    return [goal.name, value, f"{op} {fmt(goal.limit, digits, sign)}{unit}", met, goal.note]


def header(report: dict[str, Any]) -> list[str]:
    """What ran where, and how busy the machine was."""
    m, s = report["meta"], report["meta"]["sizes"]
    out = [
        f"open-llm-proxy bench ({m['commit']}): {m['cores']} cores; gateway and floor on CPU "
        f"{m['gateway_cpu']}, upstream and load on CPU {m['harness_cpu']}; logging={m['logging']}; "
        f"medians of {s['rounds']} rounds; gateway build: {m.get('compiled', '-')}",
        f"load average before/after: {' '.join(m['loadavg_before'])} / {' '.join(m['loadavg_after'])}",
        f"core check, sum(range(1000)) on the gateway core before/after: {m['core_speed_us_before']:.1f} / "
        f"{m['core_speed_us_after']:.1f} us (lower is faster; compare runs only at similar values)",
        f"open-file limits: gateway {m.get('fd_limit_gateway', '-')}, "
        f"upstream {m.get('fd_limit_upstream', '-')}, load generator {m['fd_limit_load']}",
    ]
    if lat := report.get("latency"):
        errors = sum(lat[n]["errors"] + report["streams"][n]["stream_errors"] for n in NAMES)
        other = fmt(lat["gateway"]["other_load"], 2)
        out.append(f"other work during the gateway's c=32 phases: {other} cores; errors: {int(errors)}")
    return out


def render(report: dict[str, Any]) -> str:
    """The whole report as text."""
    out = header(report)
    if "latency" in report:
        cols = ["measure", "direct", "floor", "gateway", "floor added", "gateway added", "gateway - floor"]
        out += ["", table(cols, list(main_rows(report)))]
    if hold := report.get("hold"):
        s = report["meta"]["sizes"]
        shape = f"{s['hold_streams']:,} streams x {s['hold_chunks']} chunks {s['hold_delay_ms']:g} ms apart"
        shape += f", {s['hold_history_kb']} KB of earlier turns each" if s["hold_history_kb"] else ""
        out += ["", f"hold: {shape}, sent at {s['hold_open_per_s']:g}/s, then all streaming at once"]
        if s["hold_rounds"] > 1:
            out.append(
                f"{s['hold_rounds']} rounds: counts added up, gaps and growth the median, peaks the worst"
            )
        out.append(table(["measure", *(n for n in NAMES if n in hold)], list(hold_rows(hold))))
    if logging := report.get("logging"):
        out += ["", f"logging cost vs {logging['baseline']}, fresh gateways in the same rounds"]
        cols = ["logging", "req/s c=32", "p50 c=1 ms", "CPU ms/req", "req/s cost", "added p50"]
        out.append(table(cols, list(logging_rows(logging))))
    if profile := report.get("tracemalloc"):
        open_then = report.get("hold", {}).get("gateway", {}).get("open_at_snapshot")
        out += ["", f"gateway memory with {open_then} streams open (tracemalloc):", profile]
    out += ["", "targets (ratios within this run)"]
    out.append(table(["target", "value", "limit", "met", "note"], [goal_row(g) for g in goals(report)]))
    return "\n".join(out)
