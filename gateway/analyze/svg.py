"""Charts as inline SVG strings: no script and no network, so the report opens anywhere, offline."""

from __future__ import annotations

from collections.abc import Callable
from html import escape

from gateway.analyze.model import Chart, Value

Formatter = Callable[[Value, str], str]

PALETTE = ["#3b6fb6", "#d9534f", "#5cb85c", "#f0ad4e", "#8e6cc1", "#4bb3c4", "#a0785a", "#e377c2"]
FONT = 'font-family="system-ui, sans-serif" font-size="11"'


def render_chart(chart: Chart, fmt: Formatter) -> str:
    """The chart as an `<svg>` element (an empty string when there is nothing to draw)."""
    if not chart.labels or not chart.series or not any(any(s.values) for s in chart.series):
        return ""
    if chart.kind == "columns":
        body, width, height = _columns(chart)
    elif chart.kind == "histogram":
        body, width, height = _grouped(chart)
    else:
        body, width, height = _bars(chart, fmt)
    legend = _legend(chart, width) if len(chart.series) > 1 else ""
    return (
        f'<svg class="chart" data-chart="{escape(chart.key)}" role="img" aria-label="{escape(chart.title)}" '
        f'xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height + 24}" width="{width}" '
        f'height="{height + 24}"><title>{escape(chart.title)}</title>{legend}'
        f'<g transform="translate(0,24)">{body}</g></svg>'
    )


def _legend(chart: Chart, width: int) -> str:
    items, x = [], 8
    for i, series in enumerate(chart.series):
        items.append(
            f'<rect x="{x}" y="6" width="10" height="10" fill="{PALETTE[i % len(PALETTE)]}"/>'
            f'<text x="{x + 14}" y="15" {FONT}>{escape(series.name)}</text>'
        )
        x += 24 + 7 * len(series.name)
    return "".join(items)


def _columns(chart: Chart) -> tuple[str, int, int]:
    """Vertical bars over an ordered axis (days); later series drawn over the first (failed over calls)."""
    n = len(chart.labels)
    step = max(4.0, min(28.0, 860 / n))
    left, plot_h = 48, 160
    width = max(360, int(left + step * n + 10))
    top = max(max(s.values) for s in chart.series) or 1.0
    parts = [
        f'<line x1="{left}" y1="{plot_h}" x2="{width - 4}" y2="{plot_h}" stroke="#999"/>',
        f'<text x="{left - 4}" y="10" text-anchor="end" {FONT}>{top:,.0f}</text>',
        f'<text x="{left - 4}" y="{plot_h}" text-anchor="end" {FONT}>0</text>',
    ]
    for s_index, series in enumerate(chart.series):
        color = PALETTE[s_index % len(PALETTE)]
        for i, value in enumerate(series.values):
            h = value / top * (plot_h - 6)
            x = left + i * step + step * 0.1
            parts.append(
                f'<rect class="bar" x="{x:.1f}" y="{plot_h - h:.1f}" width="{step * 0.8:.1f}" '
                f'height="{h:.1f}" fill="{color}"><title>{escape(chart.labels[i])}: '
                f"{value:,.0f} {escape(series.name)}</title></rect>"
            )
    every = max(1, round(n / 10))
    for i in range(0, n, every):
        parts.append(
            f'<text x="{left + (i + 0.5) * step:.1f}" y="{plot_h + 14}" text-anchor="middle" {FONT}>'
            f"{escape(chart.labels[i][5:] if len(chart.labels[i]) == 10 else chart.labels[i])}</text>"
        )
    return "".join(parts), width, plot_h + 20


def _bars(chart: Chart, fmt: Formatter) -> tuple[str, int, int]:
    """Horizontal ranked bars; stacked series add up, otherwise the first series sets the length."""
    label_w, plot_w, row_h = 230, 420, 22
    totals = [sum(vals) for vals in zip(*(s.values for s in chart.series), strict=True)]
    lengths = totals if chart.stacked else chart.series[0].values
    top = max(lengths) or 1.0
    parts = []
    for i, name in enumerate(chart.labels):
        y = i * row_h
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end" {FONT}>{escape(name[:34])}</text>'
        )
        x = float(label_w)
        series = chart.series if chart.stacked else chart.series[:1]
        for s_index, s in enumerate(series):
            w = s.values[i] / top * plot_w
            parts.append(
                f'<rect class="bar" x="{x:.1f}" y="{y + 4}" width="{w:.1f}" height="{row_h - 8}" '
                f'fill="{PALETTE[s_index % len(PALETTE)]}"><title>{escape(name)}: '
                f"{escape(fmt(s.values[i], chart.fmt))} {escape(s.name)}</title></rect>"
            )
            x += w if chart.stacked else 0
        if not chart.stacked:
            for s_index, s in enumerate(chart.series[1:], start=1):
                w = s.values[i] / top * plot_w
                parts.append(
                    f'<rect class="bar" x="{label_w}" y="{y + 8}" width="{w:.1f}" height="{row_h - 16}" '
                    f'fill="{PALETTE[s_index % len(PALETTE)]}"/>'
                )
        shown = fmt(totals[i] if chart.stacked else lengths[i], chart.fmt)
        parts.append(f'<text x="{label_w + plot_w + 6}" y="{y + 15}" {FONT}>{escape(shown)}</text>')
    return "".join(parts), label_w + plot_w + 90, row_h * len(chart.labels)


def _grouped(chart: Chart) -> tuple[str, int, int]:
    """A histogram: one group of bars per bucket, one bar per series."""
    groups, per = len(chart.labels), len(chart.series)
    group_w = max(40, 12 * per + 12)
    left, plot_h = 48, 150
    width = left + group_w * groups + 10
    top = max(max(s.values) for s in chart.series) or 1.0
    parts = [
        f'<line x1="{left}" y1="{plot_h}" x2="{width - 4}" y2="{plot_h}" stroke="#999"/>',
        f'<text x="{left - 4}" y="10" text-anchor="end" {FONT}>{top:,.0f}</text>',
    ]
    bar_w = (group_w - 12) / per
    for g, name in enumerate(chart.labels):
        for s_index, series in enumerate(chart.series):
            h = series.values[g] / top * (plot_h - 6)
            x = left + g * group_w + 6 + s_index * bar_w
            parts.append(
                f'<rect class="bar" x="{x:.1f}" y="{plot_h - h:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                f'fill="{PALETTE[s_index % len(PALETTE)]}"><title>{escape(series.name)}, {escape(name)}: '
                f"{series.values[g]:,.0f}</title></rect>"
            )
        parts.append(
            f'<text x="{left + g * group_w + group_w / 2:.1f}" y="{plot_h + 14}" text-anchor="middle" '
            f"{FONT}>{escape(name)}</text>"
        )
    return "".join(parts), width, plot_h + 20
