"""A one-line progress bar on stderr while many objects are read."""

from __future__ import annotations

import sys
import time
from typing import TextIO

MIN_OBJECTS = 20  # below this, reading is quick enough that a bar would only flicker
WIDTH = 30


class Progress:
    """Counts objects and bytes read; redraws at most ten times a second, only on a terminal."""

    def __init__(
        self,
        total: int,
        total_bytes: int,
        label: str,
        stream: TextIO | None = None,
        enabled: bool | None = None,
    ) -> None:
        self.total, self.total_bytes, self.label = total, total_bytes, label
        self.stream = stream or sys.stderr
        if enabled is None:
            enabled = total >= MIN_OBJECTS and self.stream.isatty()
        self.enabled = enabled
        self.done = self.done_bytes = 0
        self.started = time.monotonic()
        self._drawn = 0.0

    def advance(self, nbytes: int) -> None:
        """One more object of `nbytes` read."""
        self.done += 1
        self.done_bytes += nbytes
        now = time.monotonic()
        if self.enabled and (now - self._drawn >= 0.1 or self.done == self.total):
            self._drawn = now
            self.stream.write("\r" + self.line(now))
            self.stream.flush()

    def line(self, now: float | None = None) -> str:
        """The bar as text."""
        elapsed = (now or time.monotonic()) - self.started
        share = self.done / self.total if self.total else 1.0
        filled = int(share * WIDTH)
        bar = "#" * filled + "." * (WIDTH - filled)
        size = f"{self.done_bytes / 1e6:,.1f}/{self.total_bytes / 1e6:,.1f} MB"
        return f"{self.label} [{bar}] {self.done:,}/{self.total:,} objects, {size}, {elapsed:.1f} s"

    def close(self) -> None:
        """End the bar's line."""
        if self.enabled and self.done:
            self.stream.write("\r" + self.line() + "\n")
            self.stream.flush()
