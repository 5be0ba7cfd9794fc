"""The DuckDB side of reading: typed columns for every field, one `records` table, one `calls` table.

Every field is read with an explicit type, so a field missing from older files, or of the wrong type in
one record, becomes NULL instead of failing the query; lines that are not JSON come out as all-NULL
rows (or not at all, depending on the DuckDB version) and are dropped, with any other line that is not a
record, by `loglines.RECORD_SQL`.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from gateway.analyze.loglines import RECORD_SQL

USAGE = (
    "STRUCT(prompt_tokens BIGINT, completion_tokens BIGINT, total_tokens BIGINT, cost DOUBLE, "
    "completion_tokens_details STRUCT(reasoning_tokens BIGINT), "
    "prompt_tokens_details STRUCT(cached_tokens BIGINT))"
)

# Only what the report needs: the JSON reader skips materialising everything else.
REPORT_FIELDS = {
    "timestamp": "VARCHAR",
    "type": "VARCHAR",
    "request_id": "VARCHAR",
    "sha256": "VARCHAR",  # read only to tell records from other lines (`RECORD_SQL`)
    "session_id": "VARCHAR",
    "key_name": "VARCHAR",
    "provider": "VARCHAR",
    "model": "VARCHAR",
    "origin": "VARCHAR",
    "endpoint": "VARCHAR",
    "tools_count": "BIGINT",
    "user_question": "VARCHAR",
    "user_message_this_turn": "VARCHAR",
    "tool_results_this_turn": "STRUCT(name VARCHAR, content VARCHAR)[]",
    "status": "BIGINT",
    "latency_ms": "DOUBLE",
    "ttft_ms": "DOUBLE",
    "has_tool_calls": "BOOLEAN",
    "tool_calls": "STRUCT(name VARCHAR)[]",
    "tokens": USAGE,
    "cost": "DOUBLE",
    "cost_source": "VARCHAR",
    "error": "VARCHAR",
    "client_disconnected": "BOOLEAN",
}

# A tool result "looks like a failure" when it starts with an error word, carries an error field,
# or is an MCP/tool error: what tools built on MCP and the common agent frameworks return on failure.
TOOL_FAILURE_RE = (
    r"^\W*(error|exception|traceback|failed|failure|fatal)\b"
    r'|"(is_?error|error)"\s*:\s*(true|"|\{)'
    r"|\b(mcp|tool) error\b"
)
TEXT_CAP = 300  # questions and error messages are grouped on at most this many characters

REPORT_PROJECTION = f"""
    try_cast("timestamp" AS TIMESTAMPTZ) AT TIME ZONE 'UTC' AS ts, type, request_id, session_id,
    key_name, provider, model, origin, endpoint, tools_count,
    left(coalesce(nullif(trim(user_message_this_turn), ''), user_question), {TEXT_CAP}) AS question,
    list_transform(tool_results_this_turn, lambda r: {{
        'name': r.name,
        'failed': coalesce(regexp_matches(left(r.content, 2000), '{TOOL_FAILURE_RE}', 'i'), false)
    }}) AS tool_results,
    status, latency_ms, ttft_ms, has_tool_calls, list_transform(tool_calls, lambda c: c.name) AS tool_names,
    tokens.prompt_tokens AS prompt_tokens, tokens.completion_tokens AS completion_tokens,
    tokens.total_tokens AS total_tokens,
    tokens.completion_tokens_details.reasoning_tokens AS reasoning_tokens,
    tokens.prompt_tokens_details.cached_tokens AS cached_tokens, tokens.cost AS usage_cost,
    cost, cost_source, left(error, {TEXT_CAP}) AS error, client_disconnected
"""


def connect(
    temp_dir: Path, memory_limit: str = "1GB", threads: int | None = None
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB that spills to `temp_dir` rather than growing past `memory_limit`."""
    con = duckdb.connect(config={"allow_unsigned_extensions": False})
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SET memory_limit = '{memory_limit}'")
    con.execute("SET temp_directory = ?", [str(temp_dir)])
    con.execute("SET preserve_insertion_order = false")  # order comes from ORDER BY; this saves memory
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    return con


def json_source(fields: dict[str, str]) -> str:
    """A `read_json` call over the list parameter `$files` with these typed columns."""
    columns = "{" + ", ".join(f"'{name}': '{kind}'" for name, kind in fields.items()) + "}"
    return (
        f"read_json($files, format = 'newline_delimited', columns = {columns}, ignore_errors = true, "
        "maximum_object_size = 33554432)"
    )


class RecordTable:
    """Appends batch files to one table through a projection; counts the records recognised."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        name: str,
        fields: dict[str, str],
        projection: str,
        where: str = "TRUE",
        params: dict[str, object] | None = None,
    ) -> None:
        self.con, self.name = con, name
        self.select = f"SELECT {projection} FROM {json_source(fields)} WHERE {RECORD_SQL} AND ({where})"
        self.params = params or {}
        self.created = False

    def ingest(self, files: list[Path]) -> None:
        """Parse `files` into the table."""
        if not files:
            return
        verb = f"INSERT INTO {self.name} " if self.created else f"CREATE TABLE {self.name} AS "
        self.con.execute(verb + self.select, {**self.params, "files": [str(f) for f in files]})
        self.created = True

    def count(self) -> int:
        """Records held."""
        if not self.created:
            return 0
        row = self.con.execute(f"SELECT count(*) FROM {self.name}").fetchone()
        return int(row[0]) if row else 0
