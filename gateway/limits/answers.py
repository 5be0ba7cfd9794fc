"""What limits say to a client: the 429 naming the limit, Retry-After, and OpenAI's x-ratelimit-* headers.

The openai SDKs honour `retry-after-ms` / `Retry-After` up to two minutes and obey `x-should-retry`: a sliding
minute asks them to wait and retry; a spent day, month or budget, or a call larger than its limit, asks them
not to.
"""

from __future__ import annotations

import math

from gateway.errors import QuotaExceeded, RateLimited
from gateway.limits.config import MICRO, Meter
from gateway.limits.store import Counter, Kind, Verdict, need, resets_in
from gateway.limits.windows import reset_text


def refusal(
    key: str, meter: Meter, counter: Counter, amount: int, verdict: Verdict, now: float
) -> RateLimited:
    """The 429 for a call `meter` refused, with its Retry-After headers (the rate headers are added apart)."""
    wait = _wait(counter, amount, verdict, now)
    error = _refusal_error(key, meter, counter, verdict.used[verdict.refused], amount, wait)
    error.headers = _retry_headers(wait, counter)
    return error


def usage_row(meter: Meter, charge: Counter, used: int, now: float) -> dict[str, object]:
    """One limit as /v1/usage shows it; costs in USD."""

    def shown(amount: int) -> float | int:
        return amount / MICRO if meter.metric == "cost" else amount

    return {
        "name": meter.label,
        "model": meter.model,
        "metric": meter.metric,
        "window": None if meter.window is None else meter.window.value,
        "limit": shown(charge.limit),
        "used": shown(used),
        "remaining": shown(max(0, charge.limit - used)),
        "resets_in_s": None if meter.window is None else round(resets_in(charge, now), 3),
    }


def _wait(charge: Counter, amount: int, verdict: Verdict, now: float) -> float | None:
    """Seconds until the refused amount would fit; None when it never will (it asks more than the limit)."""
    if need(amount) > charge.limit:
        return None
    if charge.kind is Kind.SLIDING:
        return verdict.retry_after
    if charge.kind is Kind.CALENDAR:
        return max(0.0, charge.slot - now)
    return 1.0  # a concurrency slot: when one frees cannot be known; a second is a fair guess


def _retry_headers(wait: float | None, charge: Counter) -> dict[str, str]:
    """`Retry-After` (and the SDKs' `retry-after-ms`); `x-should-retry` tells the SDKs whether to wait."""
    if wait is None:
        return {"x-should-retry": "false"}
    wait = max(wait, 0.001)
    # A sliding minute always frees room within its 61 s (a burst in one second waits just over 60).
    soon = charge.kind is not Kind.CALENDAR
    return {
        "Retry-After": str(math.ceil(wait)),
        "retry-after-ms": str(math.ceil(wait * 1000)),
        "x-should-retry": "true" if soon else "false",
    }


def _refusal_error(
    key: str, meter: Meter, charge: Counter, used: int, amount: int, wait: float | None
) -> RateLimited:
    """The 429 naming the limit: `insufficient_quota` for a spent budget, else `rate_limit_exceeded`."""
    what = meter.label.rsplit(".", 1)[1].replace("_", " ")
    if meter.metric == "cost":
        window = meter.window.value if meter.window else ""
        spent, limit = used / MICRO, charge.limit / MICRO
        message = (
            f"The budget {meter.label} of key {key!r} is spent: {spent:.4f} of {limit:g} USD this {window}."
        )
        return QuotaExceeded(message + _when(wait))
    asked = "" if meter.metric == "concurrent" else f", requested {amount}"
    message = f"Rate limit reached for {what} ({meter.label}) of key {key!r}: limit {charge.limit}, "
    return RateLimited(message + f"used {used}{asked}." + _when(wait))


def _when(wait: float | None) -> str:
    if wait is None:
        return " This request asks for more than the limit allows at all."
    return f" Please try again in {reset_text(wait)}."
