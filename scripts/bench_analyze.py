"""Benchmark of scripts/analyze_logs.py: time and peak memory of the full report at growing sizes.

Generates synthetic records in the gateway's real layout (`<date>/<HH-MM-SS>-<host>-<pid>-<rand>.jsonl`,
one chunk per host per 5-minute flush window, summary capture) into a temporary folder, then runs the
analyzer as a separate process on each data set and reads its wall time, CPU time and peak RSS.

    python scripts/bench_analyze.py                      # 100k, 300k and 1M records
    python scripts/bench_analyze.py --sizes 20000 --keep /tmp/bench
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from synthetic import SynthConfig, generate

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Run:
    """One measured analyzer run."""

    records: int
    files: int
    megabytes: float
    wall_s: float
    cpu_s: float
    peak_rss_mb: float


def measure(folder: Path, extra: list[str]) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds and peak RSS (MB) of one full report over `folder`."""
    cmd = [sys.executable, str(ROOT / "scripts" / "analyze_logs.py"), str(folder), "--no-progress", *extra]
    started = time.monotonic()
    with open(os.devnull, "wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"analyzer failed: {proc.stderr.read().decode() if proc.stderr else ''}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def bench(size: int, workdir: Path, days: int, extra: list[str]) -> Run:
    """Generate `size` records (unless already there) and time the report over them."""
    folder = workdir / f"records-{size}"
    marker = folder / ".complete"
    if not marker.exists():
        shutil.rmtree(folder, ignore_errors=True)
        print(f"generating {size:,} records in {folder} ...", file=sys.stderr, flush=True)
        generate(folder, SynthConfig(records=size, start=date(2026, 10, 1), days=days, seed=size))
        marker.write_text("")
    files = [p for p in folder.rglob("*.jsonl")]
    megabytes = sum(p.stat().st_size for p in files) / 1e6
    records = sum(p.read_bytes().count(b"\n") for p in files)
    print(f"analyzing {records:,} records ...", file=sys.stderr, flush=True)
    wall, cpu, rss = measure(folder, extra)
    return Run(records, len(files), megabytes, wall, cpu, rss)


def table(runs: list[Run]) -> str:
    """The results, with growth relative to the first size."""
    head = (
        f"{'records':>10} {'files':>7} {'MB':>7} {'wall s':>8} {'CPU s':>7} {'peak RSS MB':>12} {'x time':>7}"
    )
    lines = [head, "-" * len(head)]
    for run in runs:
        growth = run.wall_s / runs[0].wall_s
        lines.append(
            f"{run.records:>10,} {run.files:>7,} {run.megabytes:>7.0f} {run.wall_s:>8.1f} {run.cpu_s:>7.1f} "
            f"{run.peak_rss_mb:>12.0f} {growth:>7.2f}"
        )
    return "\n".join(lines)


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description="Time the log analyzer at growing sizes.")
    parser.add_argument("--sizes", default="100000,300000,1000000", help="comma-separated record counts")
    parser.add_argument("--days", type=int, default=30, help="days the records span (default 30)")
    parser.add_argument(
        "--keep", type=Path, help="generate into (and reuse) this folder instead of a temp one"
    )
    parser.add_argument("analyzer_args", nargs="*", help="extra analyzer arguments, after --")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="bench-analyze-"))
    try:
        runs = [bench(size, workdir, args.days, args.analyzer_args) for size in sizes]
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"{os.cpu_count()} CPUs; full text report (all sections) per run\n")
    print(table(runs))


if __name__ == "__main__":
    main()
