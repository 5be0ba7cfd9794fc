"""The whole report: what was read, with which filters, and every section computed over `calls`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.analyze.batches import ReadStats
from gateway.analyze.model import Section


@dataclass
class Report:
    """Everything a renderer needs."""

    sources: list[str]
    filters: str
    read: ReadStats
    calls: int
    sections: list[Section] = field(default_factory=list)

    def section(self, key: str) -> Section:
        """The section `key`."""
        return next(s for s in self.sections if s.key == key)

    @property
    def warnings(self) -> list[str]:
        """What went wrong while reading, in plain words."""
        return read_warnings(self.read)

    @property
    def empty_message(self) -> str | None:
        """Why there is nothing to report, or None when there is."""
        if self.read.objects == 0:
            return f"No log files found in {', '.join(self.sources)} ({self.filters})."
        if self.read.records == 0:
            return f"No records in {self.read.objects} file(s) read from {', '.join(self.sources)}."
        if self.calls == 0:
            return f"{self.read.records} records read, but no calls match the filters ({self.filters})."
        return None

    def as_json(self) -> dict[str, Any]:
        """The report as plain JSON-ready data."""
        read = self.read
        return {
            "sources": self.sources,
            "filters": self.filters,
            "read": {
                "objects": read.objects,
                "bytes": read.bytes,
                "lines": read.lines,
                "records": read.records,
                "skipped_lines": read.skipped_lines,
                "partial_chunks": read.partial_chunks,
                "unreadable": read.unreadable,
                "seconds": round(read.seconds, 3),
            },
            "calls": self.calls,
            "empty": self.empty_message,
            "warnings": self.warnings,
            "sections": {s.key: s.as_json() for s in self.sections},
        }


def read_warnings(read: ReadStats) -> list[str]:
    """Skipped lines, partially written chunks and unreadable objects, in plain words."""
    warnings = []
    if read.skipped_lines:
        warnings.append(
            f"skipped {read.skipped_lines} line(s) that are not records (log lines, tracebacks, "
            "malformed or cut-off JSON, or of no known type)"
        )
    if read.partial_chunks:
        shown = ", ".join(read.partial_chunks[:3]) + (" ..." if len(read.partial_chunks) > 3 else "")
        warnings.append(f"{len(read.partial_chunks)} chunk(s) end in a partially written line: {shown}")
    warnings += [f"could not read {item}" for item in read.unreadable]
    return warnings
