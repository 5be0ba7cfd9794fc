"""Window arithmetic, as pure functions of a moment (epoch seconds, UTC).

The minute is a sliding window kept in one-second buckets. An admission counts the current bucket and the
60 before it (61 buckets), so every call admitted in the 60 seconds before now is counted, whatever the
fraction of a second: no span of 60 seconds ever holds more than the limit. The price is that a unit leaves
the window between 60 and 61 seconds after it was counted. Days and months are calendar windows in UTC:
their counters start at zero at midnight and on the first of the month.
"""

from __future__ import annotations

import calendar
import enum
import math
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Final

BUCKETS: Final = 61  # one-second buckets a sliding minute counts: the current one and the 60 before it


class Window(enum.Enum):
    MINUTE = "minute"
    DAY = "day"
    MONTH = "month"


def bucket(now: float) -> int:
    """The one-second bucket `now` falls in."""
    return math.floor(now)


def oldest_bucket(now: float) -> int:
    """The oldest bucket still counted at `now`."""
    return math.floor(now) - (BUCKETS - 1)


def bucket_leaves(b: int) -> float:
    """When bucket `b` stops being counted."""
    return float(b + BUCKETS)


def day_window(now: float) -> tuple[str, float]:
    """The UTC day holding `now`, as its id (`2026-02-28`) and the moment it ends."""
    day = datetime.fromtimestamp(now, UTC)
    start = calendar.timegm((day.year, day.month, day.day, 0, 0, 0))
    return day.strftime("%Y-%m-%d"), float(start + 86400)


def month_window(now: float) -> tuple[str, float]:
    """The UTC month holding `now`, as its id (`2026-02`) and the moment it ends."""
    day = datetime.fromtimestamp(now, UTC)
    year, month = (day.year + 1, 1) if day.month == 12 else (day.year, day.month + 1)
    return f"{day.year:04d}-{day.month:02d}", float(calendar.timegm((year, month, 1, 0, 0, 0)))


def sliding_retry_after(
    buckets: Iterable[tuple[int, int]], need: int, limit: int, now: float
) -> float | None:
    """Seconds until `need` more fits under `limit` in a sliding minute of `buckets`; None if it never will.

    `buckets` are (bucket, amount) pairs; those no longer counted at `now` are skipped. The oldest buckets
    leave first, so the wait is until enough of them have left.
    """
    if need > limit:
        return None
    oldest = oldest_bucket(now)
    live = sorted((b, amount) for b, amount in buckets if b >= oldest)
    used = sum(amount for _, amount in live)
    if used + need <= limit:
        return 0.0
    for b, amount in live:
        used -= amount
        if used + need <= limit:
            return max(0.0, bucket_leaves(b) - now)
    return max(0.0, bucket_leaves(bucket(now)) - now)  # unreachable while need <= limit; safe all the same


def reset_text(seconds: float) -> str:
    """A wait as OpenAI's `x-ratelimit-reset-*` headers write it: `20ms`, `8.64s`, `6m0s`, `2h5m3s`."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    whole = math.ceil(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return (f"{hours}h" if hours else "") + f"{minutes}m{secs}s"
