"""Where counters live: the interface every store keeps (`memory` and `redis_store` keep it).

An admission is one atomic step over all of a call's charges: each counter is read, and only when every one
of them has room are all of them charged. A settlement adds each charge's correction (real minus reserved)
to the very bucket or calendar window the reservation went to, and frees the call's concurrency slots (their
correction is -1). The shared store applies it once per call however often it is sent; the limiter sends it
once.

A plan's counters change once a second: a store `bind`s them then, working out once what every admission
and settlement of that second would otherwise work out again, and is given that bound form back.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

from gateway.limits.windows import bucket_leaves


class Kind(enum.Enum):
    SLIDING = "m"  # a sliding minute: `slot` is the bucket charged
    CALENDAR = "f"  # a day or month: `slot` is when the window ends (the key names the window)
    CONCURRENT = "c"  # calls in flight: `slot` is when the call's lease lapses, had it never been settled


class Counter(NamedTuple):
    """One counter as a call at this moment charges it: the key, its kind, the bucket or window, the limit."""

    key: str
    kind: Kind
    slot: int
    limit: int


class Verdict(NamedTuple):
    """The store's answer to an admission: what each counter held before it, and which refused (or -1)."""

    used: tuple[int, ...]
    refused: int = -1
    retry_after: float | None = None  # seconds, for a refusal by a sliding minute; None: another kind

    @property
    def admitted(self) -> bool:
        return self.refused < 0


def need(amount: int) -> int:
    """What must fit: at least one unit, so a spent budget refuses a call that reserves nothing."""
    return amount if amount > 0 else 1


class StoreError(Exception):
    """The store could not be reached or answered badly: the call follows `on_store_error`."""


class Store(Protocol):
    """Counters for admissions and settlements; see the module docstring for what they guarantee."""

    name: str
    on_error: Callable[[str], None]  # told of each failed operation in the background

    async def start(self) -> None: ...

    def bind(self, counters: Sequence[Counter], now: float) -> Any:
        """`counters` as this store admits and settles them during the second `now` falls in; the bound
        form has them as `counters`."""

    async def admit(self, call_id: str, bound: Any, amounts: Sequence[int], now: float) -> Verdict: ...

    def settle(self, call_id: str, bound: Any, deltas: Sequence[int], now: float) -> None: ...

    async def read(self, counters: Sequence[Counter], now: float) -> tuple[int, ...]: ...

    def health(self) -> dict[str, object]: ...

    async def close(self) -> None: ...


def resets_in(counter: Counter, now: float) -> float:
    """Seconds until the counter of `counter` is back to zero, if nothing more is charged to it."""
    if counter.kind is Kind.SLIDING:
        return max(0.0, bucket_leaves(counter.slot) - now)
    if counter.kind is Kind.CALENDAR:
        return max(0.0, counter.slot - now)
    return 0.0
