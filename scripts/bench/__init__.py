"""Benchmark the gateway against its upstream and a bare pass-through, on this machine, in one run.

Starts `scripts/bench_upstream.py`, the floor (`passthrough.py`: the thinnest aiohttp pass-through) and
`python -m gateway serve --workers 1` on loopback, pins the gateway and the floor to one core and the
upstream plus this load generator to another (taskset, as the shared peer harness does), and drives bounded
closed-loop load with aiohttp. Every phase is bounded in count and in time. Direct, floor and gateway rounds
alternate, and each number is the median over rounds, so slow drift from other work on the machine falls on
every side. Phases:

  latency   non-streaming, concurrency 1 and 32: p50/p99 added over direct and over the floor, requests/s,
            CPU ms per request (/proc utime+stime of the process tree over the c=32 phase)
  streams   streaming at concurrency 16, 20 chunks 5 ms apart: time to first chunk p50/p99
  hold      8,000 streams (10 chunks 400 ms apart) open and streaming at once through each target in turn,
            direct first: none stalled or incomplete, gaps between chunks, peak RSS, CPU and descriptors
  logging   fresh gateways with logging off, summary and full, and the floor, interleaved

Then every target is printed with whether this run met it. Modules: `processes` (starting and reading
processes), `targets` (the upstream, floor and gateways), `load` (closed loops), `wire` and `hold` (the
hold's client and phase), `phases`, `limits` (the cost of rate limits), `goals`, `report`, `cli`;
`passthrough` is the floor's server and `traced` the gateway under tracemalloc.

Usage: python scripts/bench.py [--quick] [--json] [--logging off|summary|full] [--streams N] [--peers FILE]
"""

from bench.cli import no_nan, run_loop
from bench.load import percentile
from bench.processes import ROOT, Server, child_env, free_port, loadavg
from bench.report import fmt, table

__all__ = [
    "ROOT", "Server", "child_env", "fmt", "free_port", "loadavg", "no_nan", "percentile", "run_loop", "table",
]  # fmt: skip
