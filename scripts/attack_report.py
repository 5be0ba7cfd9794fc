"""The report of `scripts/attack.py`: one table of measures, each with its target and whether it was met."""

from __future__ import annotations

import json
from typing import Any

from bench import fmt, table

TARGETS = {"rss_growth_mb": 20.0, "metrics_kb": 100.0, "spool_bytes_per_call": 2048.0, "p99_ms": 50.0}


def met(ok: bool) -> str:
    return "yes" if ok else "NO"


def rows(report: dict[str, Any]) -> list[list[str]]:
    """The table: measure, value, target, met (blank when the figure is only reported)."""
    up, models, t = report["uploads"], report["models"], TARGETS
    out = [
        ["idle RSS (MB)", fmt(report["idle_rss_mb"], 1), "", ""],
        ["uploads: answers", ", ".join(f"{k} x{v}" for k, v in up["outcomes"].items()), "", ""],
        ["uploads: RSS growth (MB)", fmt(up["rss_growth_mb"], 1, sign=True), f"<= +{t['rss_growth_mb']:g}",
         met(up["rss_growth_mb"] <= t["rss_growth_mb"])],
        ["uploads: peak RSS, VmHWM (MB)", fmt(up["peak_rss_mb"], 1), "", ""],
        ["uploads: /metrics after (KB)", fmt(up["metrics_kb"], 1), f"< {t['metrics_kb']:g}",
         met(up["metrics_kb"] < t["metrics_kb"])],
        ["uploads: spool per refused call (bytes)", str(up["spool_bytes_per_call"]),
         f"< {t['spool_bytes_per_call']:g}", met(up["spool_bytes_per_call"] < t["spool_bytes_per_call"])],
        ["models: answers", ", ".join(f"{k} x{v}" for k, v in models["statuses"].items()), "", ""],
        ["models: /metrics after (KB)", fmt(models["metrics_kb"], 1), f"< {t['metrics_kb']:g}",
         met(models["metrics_kb"] < t["metrics_kb"])],
        ["models: model labels in /metrics", str(models["model_labels"]), "", ""],
        ["models: real model keeps its label", met(models["real_model_labelled"]), "yes",
         met(models["real_model_labelled"])],
    ]  # fmt: skip
    for s in report["scenarios"]:
        out += scenario_rows(s)
    return out


def scenario_rows(s: dict[str, Any]) -> list[list[str]]:
    """One scenario's rows: what ordinary clients saw, memory, recovery, and how each hostile stream ended."""
    name, limit = s["scenario"], TARGETS["p99_ms"]
    all_answered = s["probes_answered"] == s["probes"]
    recovery = "not in time: killed, fresh gateway" if s["recovered_s"] is None else ""
    recovery = recovery or fmt(s["recovered_s"], 2)
    out = [
        [f"{name}: ordinary p99 (ms), {s['calls']} calls, {s['errors']} errors", fmt(s["p99_ms"], 1),
         f"< {limit:g}", met(s["p99_ms"] < limit)],
        [f"{name}: /livez answered (worst {s['worst_probe_ms']:g} ms)",
         f"{s['probes_answered']}/{s['probes']}", "all", met(all_answered)],
        [f"{name}: peak RSS during (MB)", fmt(s["peak_rss_mb"], 1), "", ""],
        [f"{name}: RSS after (MB)", fmt(s["rss_after_mb"], 1), "", ""],
        [f"{name}: /livez prompt again after (s)", recovery, "", ""],
    ]  # fmt: skip
    for i, h in enumerate(s["hostile"]):
        seconds = f" at {h['seconds']:g} s, {h['bytes']} B to the client" if "seconds" in h else ""
        what = "hostile client" if name == "silent" else f"hostile stream {i + 1}"
        out.append([f"{name}: {what}", h["outcome"] + seconds, "", ""])
    if s["guard_tripped"]:
        out.append([f"{name}: RSS guard", "tripped: hostile streams cut by the client", "", ""])
    return out


def render(report: dict[str, Any]) -> str:
    """The whole report as text: the setting, the gateway config, then the table."""
    m = report["meta"]
    dirty = ", with uncommitted changes" if m["uncommitted_changes"] else ""
    head = (
        f"open-llm-proxy attack ({m['commit']}{dirty}): {m['cores']} cores,"
        f" gateway on CPU {m['gateway_cpu']}, upstream + clients on CPU {m['harness_cpu']};"
        f" {m['hostile_calls']} hostile streams per scenario,"
        f" {m['scenario_s']:g} s each"
    )
    out = [
        head,
        f"load average before/after: {' '.join(m['loadavg_before'])} / {' '.join(m['loadavg_after'])}",
    ]
    out += ["gateway config:", json.dumps(report["config"]), ""]
    out.append(table(["measure", "value", "target", "met"], rows(report)))
    if died := report.get("gateway_died"):
        out += ["", "THE GATEWAY EXITED; the last lines of its log:", died]
    return "\n".join(out)
