"""The report as data: sections of facts, tables and charts that every renderer (text, JSON, HTML) reads.

Values stay raw (ints, floats, strings, None); each carries a format name so renderers agree on how to
show it: int, float, pct (a 0..1 share), usd, ms, text, time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import duckdb

Value = int | float | str | bool | None


@dataclass(frozen=True)
class Column:
    """One table column."""

    key: str
    title: str
    fmt: str = "text"


@dataclass(frozen=True)
class Table:
    """Rows in column order."""

    key: str
    title: str
    columns: tuple[Column, ...]
    rows: list[tuple[Value, ...]]

    def records(self) -> list[dict[str, Value]]:
        """The rows as dicts keyed by column key."""
        return [dict(zip([c.key for c in self.columns], row, strict=True)) for row in self.rows]


@dataclass(frozen=True)
class Fact:
    """One headline number."""

    key: str
    label: str
    value: Value
    fmt: str = "int"


@dataclass(frozen=True)
class Series:
    """One named line of values in a chart."""

    name: str
    values: list[float]


@dataclass(frozen=True)
class Chart:
    """A chart: `columns` (vertical bars over an ordered axis, like days) or `bars` (horizontal, ranked)."""

    key: str
    title: str
    kind: str
    labels: list[str]
    series: list[Series]
    fmt: str = "int"
    stacked: bool = False  # series add up to the bar's length, rather than the first series alone


@dataclass
class Section:
    """One part of the report."""

    key: str
    title: str
    facts: list[Fact] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    charts: list[Chart] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def fact(self, key: str) -> Value:
        """The value of fact `key`."""
        return next(f.value for f in self.facts if f.key == key)

    def table(self, key: str) -> Table:
        """The table `key`."""
        return next(t for t in self.tables if t.key == key)

    def as_json(self) -> dict[str, Any]:
        """The section as plain JSON-ready data."""
        return {
            "title": self.title,
            "facts": {f.key: f.value for f in self.facts},
            "tables": {t.key: t.records() for t in self.tables},
            "charts": {
                c.key: {"kind": c.kind, "labels": c.labels, "series": {s.name: s.values for s in c.series}}
                for c in self.charts
            },
            "notes": self.notes,
        }


def columns(spec: str) -> list[Column]:
    """Columns from a spec like `day, calls:int, cost_reported:usd=reported $` (key[:fmt][=title])."""
    out = []
    for item in spec.split(", "):
        head, _, title = item.strip().partition("=")
        key, _, kind = head.partition(":")
        out.append(Column(key, title or key.replace("_", " "), kind or "text"))
    return out


def query_table(
    con: duckdb.DuckDBPyConnection, key: str, title: str, spec: str, sql: str, params: Any = None
) -> Table:
    """Run `sql` (selecting the columns of `spec` in order) into a Table."""
    rows = con.execute(sql, params or []).fetchall()
    return Table(key, title, tuple(columns(spec)), [tuple(_plain(v) for v in row) for row in rows])


def query_facts(con: duckdb.DuckDBPyConnection, spec: str, sql: str) -> list[Fact]:
    """Run `sql` returning one row; its values are the facts of `spec` (as for `columns`)."""
    cols = columns(spec)
    row = con.execute(sql).fetchone() or tuple(None for _ in cols)
    return [Fact(c.key, c.title, _plain(v), c.fmt) for c, v in zip(cols, row, strict=True)]


def table_chart(
    table: Table, key: str, title: str, kind: str, by: str, series: dict[str, str], **options: Any
) -> Chart:
    """A chart of `table`: labels from column `by`, one series (name: column key) per entry of `series`."""
    index = {c.key: i for i, c in enumerate(table.columns)}
    labels = [label(row[index[by]]) for row in table.rows]
    lines = [
        Series(name, [float(row[index[col]] or 0) for row in table.rows]) for name, col in series.items()
    ]
    return Chart(key, title, kind, labels, lines, **options)


def label(value: Value) -> str:
    """A value as a chart label."""
    return "(none)" if value is None else str(value)


def row_facts(table: Table) -> list[Fact]:
    """The first row of `table` as facts (all None when it has no rows)."""
    row = table.rows[0] if table.rows else tuple(None for _ in table.columns)
    return [Fact(c.key, c.title, v, c.fmt) for c, v in zip(table.columns, row, strict=True)]


def _plain(value: object) -> Value:
    """DuckDB values as JSON-ready scalars (timestamps and decimals become strings and floats)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if hasattr(value, "isoformat"):
        return value.isoformat()
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(value)
