"""The gateway under tracemalloc, for `bench.py --tracemalloc`: SIGUSR2 takes a baseline, SIGUSR1 a report.

Run as `python -m bench.traced serve ...` with scripts/ and the gateway's tree on PYTHONPATH: the arguments
are the gateway's own. The report goes to $BENCH_TRACEMALLOC_OUT: what is held since the baseline (or in all),
by line, then the objects the garbage collector tracks, by type (a full collection walks every one of them).
One frame per allocation keeps tracing cheap enough to hold thousands of streams. tracemalloc sees Python's
allocators only (kernel socket buffers are not in it), and tracing makes the process larger and slower, so
its RSS and timings are not the gateway's.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import tracemalloc
from collections import Counter
from pathlib import Path
from types import FrameType

TOP = 30
BASELINE: list[tracemalloc.Snapshot] = []  # set by SIGUSR2, before the hold
UNTRACED = [tracemalloc.Filter(False, tracemalloc.__file__)]


def held(snapshot: tracemalloc.Snapshot, baseline: tracemalloc.Snapshot | None) -> str:
    """What is allocated now, or what was added since `baseline` and is still held, by line, largest first."""
    now = snapshot.filter_traces(UNTRACED)
    if baseline is None:
        stats = now.statistics("lineno")
        total, what = sum(s.size for s in stats), "held in all"
        rows = [(s.size, s.count, s.traceback[0]) for s in stats]
    else:
        diff = now.compare_to(baseline.filter_traces(UNTRACED), "lineno")
        total, what = sum(d.size_diff for d in diff), "held since the hold began"
        rows = [(d.size_diff, d.count_diff, d.traceback[0]) for d in diff]
    lines = [f"{what}: {total / 2**20:+.1f} MiB in Python's allocators, by line:"]
    lines += [f"{size / 1024:+10.0f} KiB {count:+8d} blocks  {frame}" for size, count, frame in rows[:TOP]]
    return "\n".join(lines) + "\n"


def objects() -> str:
    """What the cyclic garbage collector has to walk on every full collection, by type, most first."""
    counts = Counter(type(o).__qualname__ for o in gc.get_objects())
    lines = [f"objects tracked by the garbage collector: {sum(counts.values()):,}"]
    lines += [f"{n:10,d}  {name}" for name, n in counts.most_common(TOP)]
    return "\n".join(lines) + "\n"


def keep_baseline(_signum: int, _frame: FrameType | None) -> None:
    """Remember what is allocated now, so that the report shows what was added since."""
    BASELINE.append(tracemalloc.take_snapshot())


def dump(_signum: int, _frame: FrameType | None) -> None:
    """Write the report where the benchmark asked for it, whole or not at all."""
    text = held(tracemalloc.take_snapshot(), BASELINE[-1] if BASELINE else None) + "\n" + objects()
    out = Path(os.environ["BENCH_TRACEMALLOC_OUT"])
    out.with_suffix(".tmp").write_text(text)
    out.with_suffix(".tmp").rename(out)


def main() -> int:
    """Start tracing, arm the two signals, then run the gateway's own command line."""
    tracemalloc.start(1)
    signal.signal(signal.SIGUSR1, dump)
    signal.signal(signal.SIGUSR2, keep_baseline)
    from gateway.cli import main as gateway_main

    return gateway_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
