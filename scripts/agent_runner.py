"""Replay an MCP tool-use session through the gateway: `python scripts/agent_runner.py "QUESTION" --help`."""

from __future__ import annotations

import sys
from pathlib import Path

# Run from a checkout without installing: the package lives one folder up.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.agent.cli import main

if __name__ == "__main__":
    sys.exit(main())
