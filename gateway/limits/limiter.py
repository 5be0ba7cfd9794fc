"""Admission and settlement of one call under its key's limits.

At admission every limit that applies to the call (its key's, or the default's, and its model's) charges
its counter: one request, the tokens it may use (its prompt's bytes over `prompt_bytes_per_token`, plus
`max_completion_tokens` / `max_tokens` / `max_output_tokens`, else `completion_tokens_estimate`) and their
price. The store admits them all or none. When the call is over, its settlement replaces each reservation by
what was really used (the usage the upstream reported; for a call cut short without usage, the prompt and
the text that came; for an upstream error, nothing). So the sum admitted can pass a limit only by what calls
not yet settled used beyond their reservation: calls in flight, and with a shared store those whose
settlement is on its way (it is sent once the answer has left, so the client's next call may come first).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from gateway.errors import LimitsUnavailable, RateLimited
from gateway.limits.answers import refusal, usage_row
from gateway.limits.config import MICRO, LimitSettings, Meter
from gateway.limits.memory import MemoryStore
from gateway.limits.plan import Plan, counter_of, meters_of
from gateway.limits.store import Store, StoreError, Verdict
from gateway.limits.usage import usage_cost, usage_tokens
from gateway.limits.windows import Window, day_window, month_window
from gateway.prices import PriceTable
from providers.base import Endpoint

if TYPE_CHECKING:
    from gateway.calls import Call
    from gateway.metrics import Metrics

OPEN: Final = "open"  # the key name of callers of a gateway that runs without keys
_COMPLETION_FIELDS: Final = ("max_completion_tokens", "max_tokens", "max_output_tokens")
_COUNT_TOKENS: Final = Endpoint.COUNT_TOKENS  # an enum's member is slow to look up
_EMBEDDINGS: Final = Endpoint.EMBEDDINGS


class Ticket(NamedTuple):
    """What an admitted call reserved, kept (as `call.ticket`) until its settlement."""

    plan: Plan
    bound: Any  # the counters as the store bound them at admission: a settlement corrects the very same
    tokens: int  # reserved: the prompt's estimate and the completion's
    cost: int  # reserved, in millionths of a USD
    prompt_tokens: int  # the prompt's estimate, used when a call ends without usage
    void: bool = False  # refused although the store may have admitted it: settled as if it used nothing


# A ticket made at every admission: tuple's own __new__ takes its six fields at once, without the Python
# function a NamedTuple's constructor is.
_ticket: Final = tuple.__new__


class Limiter:
    """Applies `LimitSettings` with one store; disabled (and free) when no limit is configured."""

    def __init__(
        self,
        settings: LimitSettings | None = None,
        store: Store | None = None,
        metrics: Metrics | None = None,
        prices: PriceTable | None = None,
        *,
        lease_s: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings or LimitSettings()
        self.enabled = self.settings.enabled
        self._bytes_per_token = self.settings.prompt_bytes_per_token
        self._completion_estimate = self.settings.completion_tokens_estimate
        self._model_rules = bool(self.settings.models)
        self.store: Store = store or MemoryStore()
        # The in-process store answers at once: its admissions and settlements are made in place, without a
        # suspension (and without reading the clock for a settlement that does not need it).
        memory = self.store if isinstance(self.store, MemoryStore) else None
        self._admit_now = memory.admit_now if memory else None
        self._settle_now = memory.settle_now if memory else None
        self.metrics = metrics
        self.prices = prices or PriceTable()
        self.lease_s = lease_s + 60  # a crashed replica's concurrency slots lapse after the longest call
        self.clock = clock
        self.store_errors = 0
        self._plans: dict[tuple[str, str | None], Plan] = {}
        self._key_plans: dict[str, Plan] = {}  # the same, of keys without model rules: no tuple to build
        self._calendar: tuple[float, dict[Window, tuple[str, float]]] = (0.0, {})
        self._children: dict[tuple[str, str], Any] = {}

    def admit(self, call: Call, body_bytes: int) -> bytes | Awaitable[bytes]:
        """Admit `call` (or raise RateLimited); the `x-ratelimit-*` headers its answer carries, as the lines
        of an HTTP head (`Plan.lines`).

        With the in-process store they come at once. A shared store is waited for: what comes is then an
        awaitable of them, which raises the refusal."""
        if not self.enabled:
            return b""
        key = call.key_name or OPEN
        if self._model_rules:
            rule = self.model_rule(call.model)
            plan = self._plans.get((key, rule)) or self.plan(key, rule)
        else:
            plan = self._key_plans.get(key) or self.plan(key, None)
        if not plan.meters:
            return b""
        now = self.clock()
        if plan.second != int(now):
            self._bind(plan, now)
        # The tokens reserved: the prompt's estimate and the completion's (worked out here, not in a method of
        # their own: a call costs as much as all of it).
        endpoint = call.endpoint
        if endpoint is _COUNT_TOKENS:
            prompt = completion = 0  # counting a prompt's tokens uses none
        else:
            prompt = math.ceil(body_bytes / self._bytes_per_token)
            completion = self._completion_estimate
            if endpoint is _EMBEDDINGS:
                completion = 0
            elif body := call.body:
                for name in _COMPLETION_FIELDS:
                    value = body.get(name)
                    if type(value) is int and value >= 0:  # type(), not isinstance(): a bool is no count
                        completion = value
                        break
        tokens = prompt + completion
        cost = self._price(call.model, prompt, completion) if plan.counts_cost else 0
        amounts = plan.pick((1, tokens, cost, 1))
        call.ticket = ticket = _ticket(Ticket, (plan, plan.bound, tokens, cost, prompt, False))
        if self._admit_now is None:
            return self._admitted(call, ticket, amounts, now)
        outcome = self._admit_now(plan.bound, amounts, now)
        if type(outcome) is list:  # admitted (the usual answer, read here): what each counter held before
            return plan.lines(outcome, amounts)
        return self._answer(call, ticket, amounts, outcome)

    async def _admitted(self, call: Call, ticket: Ticket, amounts: tuple[int, ...], now: float) -> bytes:
        """`admit`'s answer from a store that is waited for."""
        return self._answer(call, ticket, amounts, await self._admit_in_store(call, ticket, amounts, now))

    def _answer(
        self, call: Call, ticket: Ticket, amounts: tuple[int, ...], outcome: list[int] | Verdict | None
    ) -> bytes:
        """The headers of an admitted call, or the refusal raised."""
        if isinstance(outcome, list):
            return ticket.plan.lines(outcome, amounts)
        if outcome is None:
            return b""  # the store failed: let through unaccounted
        call.ticket = None
        raise self._refusal(call, ticket, amounts, outcome)

    def _bind(self, plan: Plan, now: float) -> None:
        """The plan's counters, header texts and store-bound counters for the second `now` falls in."""
        plan.counters_at(now, self.lease_s, self._window)
        plan.bound = self.store.bind(plan.counters, now)

    async def _admit_in_store(
        self, call: Call, ticket: Ticket, amounts: tuple[int, ...], now: float
    ) -> list[int] | Verdict | None:
        """As `MemoryStore.admit_now` answers, from a store that is waited for; None when it failed and
        `on_store_error` lets the call through."""
        try:
            verdict = await self.store.admit(call.request_id, ticket.bound, amounts, now)
            return list(verdict.used) if verdict.admitted else verdict
        except StoreError:
            self.count_store_error("admit")
            if self.settings.on_store_error == "allow":
                return None  # the settlement still applies if the store did admit it
            # had the store admitted it after all, its settlement takes it all back
            call.ticket = ticket._replace(void=True)
            call.limited_by = "limits.on_store_error"
            raise LimitsUnavailable("The limits store cannot be reached; try again shortly.") from None

    def settle(self, call: Call) -> None:
        """Replace the call's reservations by what it used, free its slots; once per call."""
        ticket = call.ticket
        if ticket is None:
            return
        call.ticket = None  # settled
        plan, bound, tokens, cost, _, void = ticket
        if void:
            self._send(call.request_id, bound, plan.pick((-1, -tokens, -cost, -1)))
            return
        usage = call.answer.usage
        prompt, completion, total = usage_tokens(usage) or self._estimated_tokens(call, ticket)
        # The cost counts for the key's metric too, whether or not a limit counts it: unless the model has no
        # price and the upstream reported none, it is 0.
        reported = type(usage) is dict and "cost" in usage
        priced = plan.counts_cost or reported or self.prices.lookup(call.model) is not None
        used_cost = self._cost(call, prompt, completion) if priced else 0
        tokens_delta, cost_delta = total - tokens, used_cost - cost
        # A request is a request: only tokens and cost need correcting, and a slot freeing. The in-process
        # store has nothing to do when none does; the shared one removes the call's marker all the same.
        if self._settle_now is None:
            self._send(call.request_id, bound, plan.pick((0, tokens_delta, cost_delta, -1)))
        elif plan.holds_slots or (tokens_delta and plan.counts_tokens) or (cost_delta and plan.counts_cost):
            self._settle_now(bound, plan.pick((0, tokens_delta, cost_delta, -1)), self.clock)
        # The key's tokens and cost, for /metrics: added up on the plan, taken into the metric by `publish`
        # (a metric's step costs several times this addition).
        plan.tokens_due += total
        plan.cost_due += used_cost

    def publish(self) -> None:
        """Take the tokens and cost settled since the last time into the keys' metrics: before a scrape, every
        second in a worker group, and at shutdown."""
        if self.metrics is None:
            return
        for plan in self._plans.values():  # each amount cleared once taken in: one that fails is tried again
            if plan.tokens_due:
                self._child("tokens", plan.key).inc(plan.tokens_due)
                plan.tokens_due = 0
            if plan.cost_due:
                self._child("cost", plan.key).inc(plan.cost_due / MICRO)
                plan.cost_due = 0

    def _send(self, call_id: str, bound: Any, deltas: tuple[int, ...]) -> None:
        """Hand the store a settlement: the in-process store applies it now; a shared one is given it once
        the call's task (aiohttp's, one per request) has ended, so that writing it never holds up the answer,
        which leaves after `Gateway.finish` (a non-stream answer once its records are written)."""
        task = None if self._admit_now is not None else asyncio.current_task()
        if task is None:
            self.store.settle(call_id, bound, deltas, self.clock())
        else:
            task.add_done_callback(lambda _: self.store.settle(call_id, bound, deltas, self.clock()))

    async def usage(self, key: str) -> dict[str, object]:
        """What `key` has used of each of its limits (its model rules' included), and what is left."""
        meters = self._key_meters(key)
        for rule in self.settings.models:
            meters += self._model_meters(key, rule)
        now = self.clock()
        counters = [counter_of(m, now, self.lease_s, self._window) for m in meters]
        used = await self.store.read(counters, now) if counters else ()
        rows = [usage_row(m, c, u, now) for m, c, u in zip(meters, counters, used, strict=True)]
        return {"object": "usage", "key_name": key, "store": self.store.name, "limits": rows}

    def plan(self, key: str, model_rule: str | None) -> Plan:
        """The plan of `key`'s calls to a model of `model_rule`, made once per pair."""
        found = self._plans.get((key, model_rule))
        if found is None:
            meters = self._key_meters(key)
            if model_rule is not None:
                meters += self._model_meters(key, model_rule)
            found = self._plans[key, model_rule] = Plan(meters, key)
            if model_rule is None:
                self._key_plans[key] = found
        return found

    def model_rule(self, model: str | None) -> str | None:
        """The `models` entry for `model`: the longest that is a prefix of it (an exact id included)."""
        if not model or not self.settings.models:
            return None
        matches = [rule for rule in self.settings.models if model.startswith(rule)]
        return max(matches, key=len) if matches else None

    def _key_meters(self, key: str) -> tuple[Meter, ...]:
        rule, label = self.settings.keys.get(key), f"keys.{key}"
        if rule is None:
            rule, label = self.settings.default, "default"
        return () if rule is None else meters_of(rule, label, f"{self.settings.key_prefix}:k={key}", None)

    def _model_meters(self, key: str, model_rule: str) -> tuple[Meter, ...]:
        rule = self.settings.models[model_rule]
        counters = f"{self.settings.key_prefix}:k={key}|m={model_rule}"
        return meters_of(rule, f"models.{model_rule}", counters, model_rule)

    def _price(self, model: str | None, prompt: int, completion: int) -> int:
        price = self.prices.lookup(model)
        return 0 if price is None else math.ceil(price.cost(prompt, completion) * MICRO)

    def _window(self, window: Window, now: float) -> tuple[str, float]:
        """The day or month `now` falls in, worked out once a day."""
        until, windows = self._calendar
        if now >= until or now < until - 86400:
            windows = {Window.DAY: day_window(now), Window.MONTH: month_window(now)}
            self._calendar = (windows[Window.DAY][1], windows)
        return windows[window]

    def _estimated_tokens(self, call: Call, ticket: Ticket) -> tuple[int, int, int]:
        """(prompt, completion, total) tokens used by a call without usage, from what came back."""
        if call.endpoint is _COUNT_TOKENS:
            return 0, 0, 0
        # Cut short (a client gone, a stream broken off): what the upstream had begun counts. An error status
        # the upstream chose, or one from before it was reached: nothing was generated.
        if call.client_disconnected or (call.status < 400 and (call.answer.kept or call.first_byte)):
            completion = math.ceil(call.answer.kept / self._bytes_per_token)
            return ticket.prompt_tokens, completion, ticket.prompt_tokens + completion
        return 0, 0, 0

    def _cost(self, call: Call, prompt: int, completion: int) -> int:
        usage = call.answer.usage
        if usage is None and prompt + completion:
            usage = {"prompt_tokens": prompt, "completion_tokens": completion}
        cost, _ = usage_cost(self.prices, call.model, usage)
        return 0 if cost is None else round(cost * MICRO)

    def _refusal(self, call: Call, ticket: Ticket, amounts: tuple[int, ...], verdict: Verdict) -> RateLimited:
        """The 429 for a call the store refused, with the headers of its key's windows."""
        i, plan = verdict.refused, ticket.plan
        meter = plan.meters[i]
        call.limited_by = meter.label
        if self.metrics is not None:
            self._child("refusals", plan.key, meter.label).inc()
        error = refusal(plan.key, meter, ticket.bound.counters[i], amounts[i], verdict, self.clock())
        error.headers = {**plan.headers(verdict.used, amounts, False), **(error.headers or {})}
        return error

    def count_store_error(self, operation: str) -> None:
        """Count a store operation that failed."""
        self.store_errors += 1
        if self.metrics is not None:
            self._child("store_errors", operation).inc()

    def _child(self, name: str, *labels: str) -> Any:
        """A metric's child for `labels`, looked up once: labels come from config, so they are few."""
        found = self._children.get((name, *labels))  # type: ignore[arg-type]
        if found is None:
            assert self.metrics is not None
            metric = {
                "tokens": self.metrics.key_tokens,
                "cost": self.metrics.key_cost,
                "refusals": self.metrics.limit_refusals,
                "store_errors": self.metrics.limit_store_errors,
            }[name]
            found = self._children[(name, *labels)] = metric.labels(*labels)  # type: ignore[index]
        return found

    def health(self) -> dict[str, object]:
        """What /health shows of the limits: the store, and whether it is failing."""
        if not self.enabled:
            return {"enabled": False}
        return {"enabled": True, **self.store.health(), "store_errors": self.store_errors}
