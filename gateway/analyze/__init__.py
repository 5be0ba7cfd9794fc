"""Usage, latency, cost, tool and error reports over the gateway's JSONL logs, built on DuckDB.

sources, s3      where the chunks are (folders, globs, buckets), pruned to the dates asked for
batches, read    chunks concatenated into large batch files, lines counted, parsed by DuckDB
store, calls     typed `records`, then one row per call with filters and prices applied
sections/        one module per section, each a `model.Section` of facts, tables and charts
text, html, svg  renderers; `--json` is `Report.as_json()`
transcript*      one session as a conversation
"""
