"""Usage, latency, cost, tool and error reports over the gateway's JSONL logs (see docs/ANALYZE.md)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from gateway.analyze.cli import main

if __name__ == "__main__":
    sys.exit(main())
