"""What limits one key's calls to one model rule: its meters, and the counters they charge this second.

A plan is made once per key and model rule. Its counters (keys, buckets, windows) and the header texts that
go with them change at most once a second, so they are worked out once a second, not once a call: a call
then only brings its amounts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.limits.config import Meter, Rule
from gateway.limits.store import Counter, Kind, resets_in
from gateway.limits.windows import Window, bucket, reset_text

AMOUNTS = ("requests", "tokens", "cost", "concurrent")  # a call's amounts, in this order
_KINDS = {Window.MINUTE: Kind.SLIDING, Window.DAY: Kind.CALENDAR, Window.MONTH: Kind.CALENDAR}
_HEADER_NAMES = {
    metric: (f"x-ratelimit-limit-{metric}", f"x-ratelimit-remaining-{metric}", f"x-ratelimit-reset-{metric}")
    for metric in ("requests", "tokens")  # the metrics OpenAI's x-ratelimit-* headers describe
}
CalendarWindow = Callable[[Window, float], tuple[str, float]]  # the window id, and when it ends


def meters_of(rule: Rule, label: str, counter_prefix: str, model: str | None) -> tuple[Meter, ...]:
    """The meters of one rule entry: its limits, each with its counter under `counter_prefix`."""
    meters = [
        Meter(
            f"{label}.{lim.name}", lim.metric, lim.window, lim.amount, f"{counter_prefix}:{lim.name}", model
        )
        for lim in rule.limits
    ]
    if rule.concurrent is not None:
        counter = f"{counter_prefix}:concurrent"
        meters.append(Meter(f"{label}.concurrent", "concurrent", None, rule.concurrent, counter, model))
    return tuple(meters)


def counter_of(meter: Meter, now: float, lease_s: float, calendar: CalendarWindow) -> Counter:
    """The counter `meter` charges at `now`: its bucket, its day or month, or its lease."""
    if meter.window is None:
        return Counter(meter.counter, Kind.CONCURRENT, math.ceil(now + lease_s), meter.limit)
    kind = _KINDS[meter.window]
    if kind is Kind.SLIDING:
        return Counter(meter.counter, kind, bucket(now), meter.limit)
    window_id, end = calendar(meter.window, now)
    return Counter(f"{meter.counter}:{window_id}", kind, int(end), meter.limit)


@dataclass(slots=True)
class Plan:
    meters: tuple[Meter, ...]
    picks: tuple[int, ...] = ()  # per meter, which of a call's AMOUNTS it counts
    counts_cost: bool = False
    headed: tuple[tuple[str, tuple[int, ...]], ...] = ()  # per header metric, its meters
    second: int = -1  # the second `counters` and `resets` were worked out for
    counters: tuple[Counter, ...] = ()
    resets: tuple[str, ...] = ()
    limits: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        self.picks = tuple(AMOUNTS.index(m.metric) for m in self.meters)
        self.counts_cost = "cost" in (m.metric for m in self.meters)
        self.headed = tuple(
            (metric, indices)
            for metric in _HEADER_NAMES
            if (indices := tuple(i for i, m in enumerate(self.meters) if m.metric == metric))
        )
        self.limits = tuple(str(m.limit) for m in self.meters)

    def counters_at(self, now: float, lease_s: float, calendar: CalendarWindow) -> tuple[Counter, ...]:
        """The counters to charge at `now`, worked out again only when the second has changed."""
        second = bucket(now)
        if second != self.second:
            self.counters = tuple(counter_of(m, now, lease_s, calendar) for m in self.meters)
            self.resets = tuple(reset_text(resets_in(c, now)) for c in self.counters)
            self.second = second
        return self.counters

    def amounts(self, requests: int, tokens: int, cost: int) -> tuple[int, ...]:
        """A call's amount for each meter."""
        values = (requests, tokens, cost, 1)
        return tuple([values[i] for i in self.picks])

    def headers(self, used: tuple[int, ...], amounts: tuple[int, ...], admitted: bool) -> dict[str, str]:
        """OpenAI's `x-ratelimit-*` trio for requests and for tokens, each from its tightest window."""
        headers = {}
        meters = self.meters
        for metric, indices in self.headed:
            tightest, least = -1, 0
            for i in indices:
                left = meters[i].limit - used[i] - (amounts[i] if admitted else 0)
                if tightest < 0 or left < least:
                    tightest, least = i, left
            limit, remaining, reset = _HEADER_NAMES[metric]
            headers[limit] = self.limits[tightest]
            headers[remaining] = str(least if least > 0 else 0)
            headers[reset] = self.resets[tightest]
        return headers
