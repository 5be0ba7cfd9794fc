"""Where the records are: files, folders, globs and `s3://bucket/prefix`, pruned to the date folders needed.

The gateway writes `<root>/<YYYY-MM-DD>/<chunk>.jsonl`, the date being the records' own UTC date, so a
folder named by a date outside the asked window can be skipped without opening it.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

DATE_FOLDER = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class Window:
    """The time range asked for: `since` inclusive, `until` exclusive (both naive UTC), either open."""

    since: datetime | None = None
    until: datetime | None = None

    def covers_day(self, name: str) -> bool:
        """Whether the date folder `name` may hold records in the window."""
        day = date.fromisoformat(name)
        if self.since is not None and day < self.since.date():
            return False
        return self.until is None or datetime.combine(day, datetime.min.time()) < self.until

    def describe(self) -> str:
        """The window in words."""
        if self.since is None and self.until is None:
            return "all dates"
        start = self.since.isoformat(" ") if self.since else "the start"
        end = self.until.isoformat(" ") if self.until else "the end"
        return f"from {start} to {end} (exclusive)"


def parse_since(text: str) -> datetime:
    """A `--since` value: a date (that day's start) or an ISO datetime, as naive UTC."""
    return _parse_moment(text)


def parse_until(text: str) -> datetime:
    """An `--until` value: a date is inclusive (up to the next day's start); a datetime is exact."""
    moment = _parse_moment(text)
    return moment + timedelta(days=1) if len(text.strip()) == 10 else moment


def _parse_moment(text: str) -> datetime:
    moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


@dataclass(frozen=True)
class LocalFile:
    """A chunk on disk."""

    path: Path
    size: int


def is_s3(source: str) -> bool:
    """Whether `source` names a bucket rather than local files."""
    return source.startswith("s3://")


def local_files(source: str, window: Window) -> list[LocalFile]:
    """The chunk files a local source names: a file as is, a folder walked, a glob expanded."""
    if any(ch in source for ch in "*?["):
        found: list[LocalFile] = []
        for match in sorted(glob.glob(source, recursive=True)):
            path = Path(match)
            if path.is_dir():
                found += _walk(path, window) if _dir_in_window(path.name, window) else []
            elif _parent_in_window(path, window):
                found.append(_file(path))
        return found
    path = Path(source)
    if path.is_dir():
        return _walk(path, window)
    if path.is_file():
        return [_file(path)]
    raise FileNotFoundError(f"no such file or folder: {source}")


def _walk(folder: Path, window: Window) -> list[LocalFile]:
    found: list[LocalFile] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and _dir_in_window(d, window))
        # `.jsonl.open` is the spool's chunk being written: the freshest records, maybe a cut-off last line
        found += [
            _file(Path(root) / name) for name in sorted(files) if name.endswith((".jsonl", ".jsonl.open"))
        ]
    return found


def _dir_in_window(name: str, window: Window) -> bool:
    return not DATE_FOLDER.match(name) or (_valid_date(name) and window.covers_day(name))


def _parent_in_window(path: Path, window: Window) -> bool:
    return _dir_in_window(path.parent.name, window)


def _valid_date(name: str) -> bool:
    try:
        date.fromisoformat(name)
    except ValueError:
        return False
    return True


def _file(path: Path) -> LocalFile:
    return LocalFile(path, path.stat().st_size)
