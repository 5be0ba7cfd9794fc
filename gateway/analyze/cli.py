"""`analyze_logs.py SOURCE...`: usage, latency, cost, tool and error reports over the gateway's JSONL logs."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import TextIO

from gateway.analyze import transcript
from gateway.analyze.calls import Filters, build_calls
from gateway.analyze.html import render_html
from gateway.analyze.read import SourceError, read_sources
from gateway.analyze.report import Report
from gateway.analyze.sections import SECTIONS, build_sections
from gateway.analyze.sections.common import Context
from gateway.analyze.sources import Window, parse_since, parse_until
from gateway.analyze.store import REPORT_FIELDS, REPORT_PROJECTION, RecordTable, connect
from gateway.analyze.text import render_report
from gateway.prices import PriceTable, PriceTableError, find_price_file, load_prices

EPILOG = """
SOURCE is a chunk file, a folder (date folders outside --since/--until are skipped), a glob, or
s3://bucket/prefix (endpoint from AWS_S3_ENDPOINT_URL, AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL;
credentials the standard AWS way). A file of `kubectl logs` output (with or without --prefix and
--timestamps) is read too: the records are picked out, and the other lines counted as skipped.
--origin, --model and --key-name take globs and may repeat; `none` matches calls where the field is unset.
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="analyze_logs.py",
        description=__doc__.split(": ", 1)[1],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("sources", nargs="+", metavar="SOURCE")
    parser.add_argument("--since", type=parse_since, help="first date (or ISO time) to include, UTC")
    parser.add_argument(
        "--until", type=parse_until, help="last date to include (inclusive), or an exact ISO time"
    )
    parser.add_argument("--origin", action="append", default=[], help="only calls from this origin (app)")
    parser.add_argument("--model", action="append", default=[], help="only calls to this model")
    parser.add_argument(
        "--key-name", action="append", default=[], help="only calls made with this proxy key name"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of tables")
    parser.add_argument("--html", type=Path, metavar="PATH", help="also write a self-contained HTML report")
    parser.add_argument("--session", metavar="ID", help="print one session as a transcript instead")
    parser.add_argument(
        "--prices",
        type=Path,
        metavar="PATH",
        help="price table (default: ./config/prices.yaml, else the shipped one)",
    )
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}"
    )
    parser.add_argument("--limit", type=int, default=15, help="rows in ranked tables (default 15; 0: all)")
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )
    parser.add_argument(
        "--memory-limit", default="1GB", help="DuckDB memory limit (default 1GB); it spills beyond"
    )
    parser.add_argument("--threads", type=int, help="DuckDB threads (default: one per core)")
    args = parser.parse_args(argv)
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None, stdout: TextIO | None = None) -> int:
    """Run the command: exit status 0, or 2 with one line on stderr when a source or file is unusable."""
    args = parse_args(argv)
    out = stdout or sys.stdout
    filters = Filters(
        Window(args.since, args.until), tuple(args.origin), tuple(args.model), tuple(args.key_name)
    )
    try:
        with tempfile.TemporaryDirectory(prefix="analyze-logs-") as temp:
            if args.session:
                return _transcript(args, filters, Path(temp), out)
            prices = _prices(args.prices)
            report = analyze(args, filters, prices, Path(temp))
    except (SourceError, PriceTableError) as exc:
        print(f"analyze_logs: {exc}", file=sys.stderr)
        return 2
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.html:
        args.html.write_text(render_html(report), encoding="utf-8")
        print(f"wrote {args.html}", file=sys.stderr)
    out.write(json.dumps(report.as_json(), indent=2) + "\n" if args.json else render_report(report))
    return 0


def _prices(path: Path | None) -> PriceTable:
    found = find_price_file(path)
    return load_prices(found) if found is not None else PriceTable()


def analyze(args: argparse.Namespace, filters: Filters, prices: PriceTable, temp: Path) -> Report:
    """Read the sources and compute the report."""
    con = connect(temp, args.memory_limit, args.threads)
    table = RecordTable(con, "records", REPORT_FIELDS, REPORT_PROJECTION)
    stats = read_sources(args.sources, filters.window, table, temp, progress=args.progress)
    report = Report(args.sources, filters.describe(), stats, 0)
    if not table.created:
        return report
    report.calls = build_calls(con, prices, filters)
    con.execute("DROP TABLE records")  # everything below reads `calls`; free the memory
    if report.calls:
        context = Context(args.limit if args.limit > 0 else 2**62, prices.source)
        report.sections = build_sections(con, tuple(args.sections.split(",")), context)
    return report


def _transcript(args: argparse.Namespace, filters: Filters, temp: Path, out: TextIO) -> int:
    con = connect(temp, args.memory_limit, args.threads)
    table = transcript.session_table(con, args.session)
    stats = read_sources(args.sources, filters.window, table, temp, progress=args.progress)
    conversation = (
        transcript.load(con, args.session) if table.created else transcript.Transcript(args.session)
    )
    if args.json:
        out.write(json.dumps(conversation.as_json(), indent=2) + "\n")
    else:
        out.write(transcript.render(conversation, stats))
    return 0
