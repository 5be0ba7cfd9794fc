"""Which system prompts already have a record: each is written once per UTC day by all the workers of a spool.

    <spool>/.prompts/<YYYY-MM-DD>/<sha256>   an empty marker: that day's record of the prompt is written

The worker whose `O_CREAT|O_EXCL` makes the marker writes the prompt record; the others find it made and do
not. Each worker remembers the hashes it has settled, so a prompt costs one system call the first time a
worker sees it on a day and nothing after. Markers are never uploaded; their folder starts with a dot, so
neither the uploader, the spool's measures nor the analyzer read it.

Why per day: the bucket is what gets queried, by date folder. Starting afresh each UTC day puts in every date
folder the prompt record of each hash that day's requests reference, so a query narrowed to some dates, or a
bucket whose old dates expire, still finds every prompt. It also bounds what a prompt record that never
reached the spool (spool full or unwritable, a kill -9 at the wrong moment) can cost: its references lack it
for the rest of that day. A spool folder lost with its pod only means the next pod writes the prompts again.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

MARKERS = ".prompts"  # under the spool folder
DAY_S = 86400


class PromptLedger:
    """Decides which process writes each system prompt's record; with no folder, this process alone."""

    def __init__(self, folder: str | Path | None = None) -> None:
        self.folder = None if folder is None else Path(folder)
        self._day = 0
        self._seen: set[str] = set()

    def claim(self, digest: str, ts: float) -> bool:
        """True when the caller is to write the record of the prompt `digest`, seen in a call at `ts`."""
        day = int(ts // DAY_S)
        if day > self._day:  # a late call of yesterday counts as today: the day only moves forward
            self._new_day(day)
        if digest in self._seen:
            return False
        self._seen.add(digest)
        return self.folder is None or self._make_marker(digest)

    def _new_day(self, day: int) -> None:
        self._day, self._seen = day, set()
        if self.folder is not None:
            with contextlib.suppress(OSError):  # a sibling worker may be clearing them at the same time
                for old in self.folder.iterdir():
                    if old.name < self._today:
                        shutil.rmtree(old, ignore_errors=True)

    @property
    def _today(self) -> str:
        return f"{datetime.fromtimestamp(self._day * DAY_S, UTC):%Y-%m-%d}"

    def _make_marker(self, digest: str) -> bool:
        assert self.folder is not None
        path = self.folder / self._today / digest
        for _ in range(2):
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640))
            except FileExistsError:
                return False
            except FileNotFoundError:  # the day's folder is not there yet, or was just cleared
                with contextlib.suppress(OSError):
                    path.parent.mkdir(parents=True, exist_ok=True)
            except OSError:
                break
            else:
                return True
        # No marker could be made (the disk refuses): write the prompt. A duplicate record is harmless, a
        # reference with no record is not.
        return True
