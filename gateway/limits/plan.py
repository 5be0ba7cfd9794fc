"""What limits one key's calls to one model rule: its meters, and the counters they charge this second.

A plan is made once per key and model rule. Its counters (keys, buckets, windows), their form bound to the
store, and the header texts that go with them change at most once a second, so they are worked out once a
second, not once a call: a call then only brings its amounts, and its headers are that second's lines with
the remainders filled in (`lines`, written into the answer's head as they are: see
`gateway.edge.LinesStreamResponse`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, Final

from gateway.limits.config import Meter, Rule
from gateway.limits.store import Counter, Kind, resets_in
from gateway.limits.windows import Window, bucket, reset_text

AMOUNTS: Final = ("requests", "tokens", "cost", "concurrent")  # a call's amounts, in this order
_KINDS: Final = {Window.MINUTE: Kind.SLIDING, Window.DAY: Kind.CALENDAR, Window.MONTH: Kind.CALENDAR}
_HEADER_NAMES: Final = {
    metric: (f"x-ratelimit-limit-{metric}", f"x-ratelimit-remaining-{metric}", f"x-ratelimit-reset-{metric}")
    for metric in ("requests", "tokens")  # the metrics OpenAI's x-ratelimit-* headers describe
}
CalendarWindow = Callable[[Window, float], tuple[str, float]]  # the window id, and when it ends
Picker = Callable[[tuple[int, int, int, int]], tuple[int, ...]]


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


def _picker(picks: tuple[int, ...]) -> Picker:
    """A function taking a call's four AMOUNTS to the amount of each meter, in one C call when it can."""
    if len(picks) > 1:
        return itemgetter(*picks)
    only = picks[0] if picks else None

    def pick(values: tuple[int, int, int, int]) -> tuple[int, ...]:
        return () if only is None else (values[only],)

    return pick


@dataclass(slots=True)
class Plan:
    """One key's meters for one model rule, with the counters and header texts of the current second."""

    meters: tuple[Meter, ...]
    key: str = ""  # the key name whose calls it meters
    counts_tokens: bool = False
    counts_cost: bool = False
    holds_slots: bool = False  # some meter counts calls in flight: every settlement frees a slot
    second: int = -1  # the second `counters`, `bound` and `head` were worked out for
    counters: tuple[Counter, ...] = ()
    bound: Any = None  # `counters` as the store bound them (`Store.bind`), set with them by the limiter
    # Per header metric (requests, tokens): its three header names and its meters.
    headed: tuple[tuple[str, str, str, tuple[int, ...]], ...] = ()
    # The same when each header metric has one meter (the usual plan): the meter and its limit.
    single: tuple[tuple[int, int], ...] | None = None
    # The usual plan of all, a meter each for requests and for tokens: (meter, limit) of both, in one tuple.
    pair: tuple[int, int, int, int] | None = None
    limits: tuple[int, ...] = ()
    texts: tuple[str, ...] = ()  # each limit as a header writes it
    resets: tuple[str, ...] = ()  # each counter's reset as a header writes it, this second
    # The usual plan's header lines this second, a `%d` where each remainder goes.
    head: bytes = b""
    # What its settlements used since the keys' metrics were last brought up to date (`Limiter.publish`):
    # tokens, and millionths of a USD.
    tokens_due: int = 0
    cost_due: int = 0
    # A call's four AMOUNTS (a settlement's corrections) taken to each meter's: a function, not a method,
    # which would cost as much again.
    pick: Picker = field(default=_picker(()), init=False, repr=False)

    def __post_init__(self) -> None:
        self.pick = _picker(tuple(AMOUNTS.index(m.metric) for m in self.meters))
        self.counts_tokens = "tokens" in (m.metric for m in self.meters)
        self.counts_cost = "cost" in (m.metric for m in self.meters)
        self.holds_slots = "concurrent" in (m.metric for m in self.meters)
        self.headed = tuple(
            (*_HEADER_NAMES[metric], indices)
            for metric in _HEADER_NAMES
            if (indices := tuple(i for i, m in enumerate(self.meters) if m.metric == metric))
        )
        if all(len(indices) == 1 for *_, indices in self.headed):
            self.single = tuple((i, self.meters[i].limit) for *_, (i,) in self.headed)
            if len(self.single) == 2:
                (i, most), (j, most_tokens) = self.single
                self.pair = (i, most, j, most_tokens)
        self.limits = tuple(m.limit for m in self.meters)
        self.texts = tuple(str(m.limit) for m in self.meters)

    def counters_at(self, now: float, lease_s: float, calendar: CalendarWindow) -> tuple[Counter, ...]:
        """The counters to charge at `now`, worked out again only when the second has changed."""
        second = bucket(now)
        if second != self.second:
            self.counters = tuple(counter_of(m, now, lease_s, calendar) for m in self.meters)
            self.resets = tuple(reset_text(resets_in(c, now)) for c in self.counters)
            if self.single is not None:  # names and texts of the gateway's own making: no `%` among them
                self.head = "".join(
                    f"{limit}: {self.texts[i]}\r\n{remaining}: %d\r\n{reset}: {self.resets[i]}\r\n"
                    for limit, remaining, reset, (i,) in self.headed
                ).encode("ascii")
            self.second = second
        return self.counters

    def lines(self, used: Sequence[int], amounts: Sequence[int]) -> bytes:
        """An admitted call's `headers`, as the lines of an HTTP head."""
        if (pair := self.pair) is not None:  # the usual plan, on every call's path: no loop, no list
            i, most, j, most_tokens = pair
            left, left_tokens = most - used[i] - amounts[i], most_tokens - used[j] - amounts[j]
            return self.head % (left if left > 0 else 0, left_tokens if left_tokens > 0 else 0)
        single = self.single
        if single is None:
            return head_lines(self.headers(used, amounts, True))
        # one meter each, the remainders put into this second's `head`
        remainders = []
        for i, most in single:
            n = most - used[i] - amounts[i]
            remainders.append(n if n > 0 else 0)
        return self.head % tuple(remainders)

    def headers(self, used: Sequence[int], amounts: Sequence[int], admitted: bool) -> dict[str, str]:
        """OpenAI's `x-ratelimit-*` trio for requests and for tokens, each from its tightest window.

        `used` is what each counter held before the call; an admitted call's own amounts are taken off too.
        """
        headers: dict[str, str] = {}
        limits = self.limits
        for limit, remaining, reset, indices in self.headed:
            tightest, least = -1, 0
            for i in indices:
                left = limits[i] - used[i] - (amounts[i] if admitted else 0)
                if tightest < 0 or left < least:
                    tightest, least = i, left
            headers[limit] = self.texts[tightest]
            headers[remaining] = str(least) if least > 0 else "0"
            headers[reset] = self.resets[tightest]
        return headers


def head_lines(headers: dict[str, str]) -> bytes:
    """`headers` as the lines of an HTTP head (names and values of the gateway's own making)."""
    return "".join(f"{name}: {value}\r\n" for name, value in headers.items()).encode("ascii")
