"""Benchmark the gateway (`python scripts/bench.py --help`); the code is the `bench` package."""

import sys

from bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
