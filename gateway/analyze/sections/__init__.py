"""The report's sections, one module each; every one reads only the `calls` table."""

from __future__ import annotations

from collections.abc import Callable

import duckdb

from gateway.analyze.model import Section
from gateway.analyze.sections import cost, errors, latency, models, questions, sessions, tools, volume
from gateway.analyze.sections.common import Context

BUILDERS: dict[str, Callable[[duckdb.DuckDBPyConnection, Context], Section]] = {
    "time": volume.build,
    "models": models.build,
    "latency": latency.build,
    "cost": cost.build,
    "tools": tools.build,
    "errors": errors.build,
    "sessions": sessions.build,
    "questions": questions.build,
}
SECTIONS = tuple(BUILDERS)


def build_sections(
    con: duckdb.DuckDBPyConnection, wanted: tuple[str, ...], context: Context
) -> list[Section]:
    """Compute the sections asked for, in report order."""
    return [build(con, context) for key, build in BUILDERS.items() if key in wanted]
