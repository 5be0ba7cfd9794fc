"""The report as one self-contained HTML page: the same sections as the text, with inline SVG charts."""

from __future__ import annotations

from html import escape

from gateway.analyze.model import Section, Table
from gateway.analyze.report import Report
from gateway.analyze.svg import render_chart
from gateway.analyze.text import NUMERIC, fmt

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1180px; color: #222;
       padding: 0 16px; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 36px; border-bottom: 1px solid #ddd; }
h3 { font-size: 14px; margin: 18px 0 6px; color: #444; }
table { border-collapse: collapse; margin: 4px 0 12px; font-size: 13px; }
th, td { padding: 3px 10px; border-bottom: 1px solid #eee; text-align: left; vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.text { max-width: 420px; overflow-wrap: anywhere; }
dl.facts { display: grid; grid-template-columns: max-content max-content; gap: 2px 18px; }
dl.facts dt { color: #555; } dl.facts dd { margin: 0; font-variant-numeric: tabular-nums; }
.note { color: #666; font-size: 12px; } .warning { color: #a94442; }
figure { margin: 8px 0 16px; overflow-x: auto; } figcaption { font-weight: 600; font-size: 13px; }
nav a { margin-right: 12px; }
"""


def render_html(report: Report) -> str:
    """The whole page."""
    read = report.read
    head = [
        "<h1>open-llm-proxy log report</h1>",
        f"<p>sources: {escape(', '.join(report.sources))}<br>filters: {escape(report.filters)}<br>"
        f"read: {read.objects:,} objects, {read.bytes / 1e6:,.1f} MB, {read.records:,} records; "
        f"{report.calls:,} calls</p>",
        *(f'<p class="warning">warning: {escape(w)}</p>' for w in report.warnings),
    ]
    if report.empty_message:
        head.append(f"<p><strong>{escape(report.empty_message)}</strong></p>")
    nav = "<nav>" + "".join(f'<a href="#{s.key}">{escape(s.title)}</a>' for s in report.sections) + "</nav>"
    body = "".join(_section(s) for s in report.sections)
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Log report</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>'
        f"<body>{''.join(head)}{nav}{body}</body></html>\n"
    )


def _section(section: Section) -> str:
    parts = [f'<section id="{escape(section.key)}"><h2>{escape(section.title)}</h2>']
    if section.facts:
        parts.append(
            '<dl class="facts">'
            + "".join(
                f"<dt>{escape(f.label)}</dt><dd>{escape(fmt(f.value, f.fmt))}</dd>" for f in section.facts
            )
            + "</dl>"
        )
    for chart in section.charts:
        svg = render_chart(chart, fmt)
        if svg:
            parts.append(f"<figure><figcaption>{escape(chart.title)}</figcaption>{svg}</figure>")
    parts += [_table(t) for t in section.tables]
    parts += [f'<p class="note">{escape(note)}</p>' for note in section.notes]
    return "".join(parts) + "</section>"


def _table(table: Table) -> str:
    if not table.rows:
        return f'<h3>{escape(table.title)}</h3><p class="note">none</p>'
    kinds = ["num" if c.fmt in NUMERIC else "text" for c in table.columns]
    header = "".join(
        f'<th class="{k}">{escape(c.title)}</th>' for c, k in zip(table.columns, kinds, strict=True)
    )
    rows = "".join(
        "<tr>"
        + "".join(
            f'<td class="{k}">{escape(fmt(v, c.fmt))}</td>'
            for v, c, k in zip(row, table.columns, kinds, strict=True)
        )
        + "</tr>"
        for row in table.rows
    )
    return (
        f"<h3>{escape(table.title)}</h3><table><thead><tr>{header}</tr></thead><tbody>{rows}</tbody></table>"
    )
