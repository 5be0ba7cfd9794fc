"""`python -m gateway.analyze SOURCE...`: the log report, as `scripts/analyze_logs.py`."""

import sys

from gateway.analyze.cli import main

sys.exit(main())
