"""Synthetic gateway log records in the real spool layout, for the tests, demos and benchmarks.

The records follow the gateway's record format field for field: browser chats, tool-using agents, one-off
scripts and rejected calls, with errors, rate limits, client disconnects and calls a crash left unanswered.
It is test and benchmark code, so it lives beside the scripts and not in the installed package:
`python scripts/synthetic_logs.py OUT_DIR --records 100000` makes a data set.

dataset   days, files and the chunk layout (`generate`)
sessions  one simulated conversation's records
catalog   the models and apps, and how calls fail
text      questions, answers, tool arguments and results
"""

from synthetic.dataset import SynthConfig, SynthStats, generate

__all__ = ["SynthConfig", "SynthStats", "generate"]
