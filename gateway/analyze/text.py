"""The report as terminal text: facts, aligned tables and bar charts drawn with block characters."""

from __future__ import annotations

from gateway.analyze.model import Chart, Column, Fact, Section, Series, Table, Value
from gateway.analyze.report import Report

BAR_WIDTH = 40
MAX_CELL = 48
MAX_CHART_ROWS = 62  # a longer per-day chart is folded into weeks
BLOCKS = " ▏▎▍▌▋▊▉█"
NUMERIC = {"int", "float", "pct", "usd", "ms"}


def fmt(value: Value, kind: str) -> str:
    """One value as the reader should see it."""
    if value is None:
        return "-" if kind in NUMERIC else "(none)"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if kind == "int" and isinstance(value, int | float):
        return f"{round(value):,}"
    if kind == "float" and isinstance(value, int | float):
        return f"{value:,.2f}"
    if kind == "pct" and isinstance(value, int | float):
        return f"{value * 100:.1f}%"
    if kind == "usd" and isinstance(value, int | float):
        return f"${value:,.4f}" if abs(value) < 1 else f"${value:,.2f}"
    if kind == "ms" and isinstance(value, int | float):
        return f"{value / 1000:,.1f} s" if value >= 10_000 else f"{value:,.0f} ms"
    if kind == "time":
        return str(value)[:19].replace("T", " ")
    return str(value)


def _cell(text: str, width: int = MAX_CELL) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def render_table(table: Table) -> list[str]:
    """An aligned table with a title, or a note that it is empty."""
    if not table.rows:
        return [f"  {table.title}: none"]
    cells = [[_cell(fmt(v, c.fmt)) for v, c in zip(row, table.columns, strict=True)] for row in table.rows]
    widths = [max(len(c.title), *(len(row[i]) for row in cells)) for i, c in enumerate(table.columns)]

    def line(values: list[str]) -> str:
        parts = [
            v.rjust(w) if c.fmt in NUMERIC else v.ljust(w)
            for v, w, c in zip(values, widths, table.columns, strict=True)
        ]
        return "  " + "  ".join(parts).rstrip()

    rule = "  " + "  ".join("-" * w for w in widths)
    return [f"  {table.title}", line([c.title for c in table.columns]), rule, *(line(row) for row in cells)]


def render_facts(facts: list[Fact]) -> list[str]:
    """Facts as aligned `label  value` lines."""
    width = max((len(f.label) for f in facts), default=0)
    return [f"  {f.label.ljust(width)}  {fmt(f.value, f.fmt)}" for f in facts]


def _bar(value: float, top: float) -> str:
    if top <= 0 or value <= 0:
        return ""
    eighths = max(1, round(value / top * BAR_WIDTH * 8))
    return "█" * (eighths // 8) + (BLOCKS[eighths % 8] if eighths % 8 else "")


def render_chart(chart: Chart) -> list[str]:
    """Bars, one line per label; extra series as numbers beside; histograms as a count table."""
    if not chart.labels or not chart.series:
        return []
    labels, series = chart.labels, chart.series
    if chart.kind == "columns" and len(labels) > MAX_CHART_ROWS:
        labels, series = _fold_weeks(labels, series)
    if chart.kind == "histogram":
        return _histogram_lines(chart)
    main, rest = series[0], series[1:]
    if chart.stacked:
        main, rest = (
            Series("total", [sum(values) for values in zip(*(s.values for s in series), strict=True)]),
            series,
        )
    top = max(main.values, default=0.0)
    width = max(len(_cell(label, 32)) for label in labels)
    lines = [f"  {chart.title}"]
    for i, label in enumerate(labels):
        extra = "".join(f"  {s.name} {fmt(s.values[i], chart.fmt)}" for s in rest if s.values[i])
        value = fmt(main.values[i], chart.fmt)
        lines.append(
            f"  {_cell(label, 32).ljust(width)} │{_bar(main.values[i], top).ljust(BAR_WIDTH)} {value}{extra}"
        )
    return lines


def _fold_weeks(labels: list[str], series: list[Series]) -> tuple[list[str], list[Series]]:
    weeks = [labels[i] for i in range(0, len(labels), 7)]
    folded = [Series(s.name, [sum(s.values[i : i + 7]) for i in range(0, len(labels), 7)]) for s in series]
    return [f"week of {w}" for w in weeks], folded


def _histogram_lines(chart: Chart) -> list[str]:
    columns = (Column("bucket", "bucket"), *(Column(s.name, s.name, "int") for s in chart.series))
    rows: list[tuple[Value, ...]] = [
        (label, *(s.values[i] for s in chart.series)) for i, label in enumerate(chart.labels)
    ]
    return render_table(Table(chart.key, chart.title + " (calls per bucket)", columns, rows))


def render_section(section: Section) -> list[str]:
    """A section: title, facts, tables, charts, notes."""
    lines = ["", f"== {section.title} ==", *render_facts(section.facts)]
    for table in section.tables:
        if table.key == "per_day":
            continue  # the chart below says the same, more readably
        lines += ["", *render_table(table)]
    for chart in section.charts:
        lines += ["", *render_chart(chart)]
    lines += [f"  note: {note}" for note in section.notes]
    return lines


def render_report(report: Report) -> str:
    """The whole report as text."""
    read = report.read
    lines = [
        "open-llm-proxy log report",
        f"sources: {', '.join(report.sources)}",
        f"filters: {report.filters}",
        f"read: {read.objects:,} objects, {read.bytes / 1e6:,.1f} MB, {read.records:,} records "
        f"in {read.seconds:.1f} s; {report.calls:,} calls",
        *(f"warning: {w}" for w in report.warnings),
    ]
    if report.empty_message:
        return "\n".join([*lines, "", report.empty_message]) + "\n"
    for section in report.sections:
        lines += render_section(section)
    return "\n".join(lines) + "\n"
