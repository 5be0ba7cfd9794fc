"""Simulated conversations: browser chats, tool-using agents, one-off scripts and rejected calls.

Each session becomes the request and response records the gateway would write for it, field for
field, including errors, rate limits, client disconnects and requests left unanswered by a crash.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from synthetic.catalog import APPS, MODELS, App, Model, fail
from synthetic.text import (
    FOLLOW_UPS,
    QUESTIONS,
    SYSTEM_PROMPTS,
    answer,
    question_variant,
    tool_arguments,
    tool_result,
)

Record = dict[str, Any]
SUMMARY_CAP = 1000  # how much of a text summary capture keeps
PREVIEW_CAP = 200


@dataclass
class _Turn:
    """What one call sends: the conversation so far."""

    first_user: str
    last_user: str
    messages: list[Record]
    tool_results: list[Record]


class SessionSimulator:
    """Turns a random session into the records the gateway writes for it."""

    def __init__(self, rng: random.Random, capture: str = "summary") -> None:
        self.rng = rng
        self.full = capture == "full"
        self.prompts_logged: set[str] = set()

    def session(self, start: datetime) -> list[Record]:
        """All records of one session starting at `start`, in time order."""
        rng = self.rng
        app = rng.choices(APPS, [a.weight for a in APPS])[0]
        model = rng.choices(MODELS, [m.weight for m in MODELS])[0]
        ctx = _Context(self, app, model, start)
        if app.kind == "rejected":
            return ctx.rejected()
        user_turns = 1 if app.kind != "chat" else rng.choice((1, 1, 1, 2, 2, 3, 4, 6))
        for index in range(user_turns):
            text = (
                question_variant(rng, rng.choices(QUESTIONS, _ZIPF)[0])
                if index == 0
                else rng.choice(FOLLOW_UPS)
            )
            if not ctx.user_turn(text):
                break
            ctx.now += timedelta(seconds=rng.uniform(5, 240))
        return ctx.records

    def system_prompt_record(self, when: datetime, text: str) -> Record | None:
        digest = hashlib.sha256(text.encode()).hexdigest()
        if not self.full or digest in self.prompts_logged:
            return None
        self.prompts_logged.add(digest)
        return {"timestamp": _iso(when), "type": "system_prompt", "sha256": digest, "content": text}


_ZIPF = [1.0 / (rank + 1) ** 0.9 for rank in range(len(QUESTIONS))]


class _Context:
    """One session in progress."""

    def __init__(self, sim: SessionSimulator, app: App, model: Model, start: datetime) -> None:
        self.sim, self.app, self.model, self.now = sim, app, model, start
        self.rng = sim.rng
        self.records: list[Record] = []
        self.session_id = None if app.kind == "script" else f"sess-{self.rng.getrandbits(64):016x}"
        self.origin = self.rng.choice(app.origins)
        self.stream = app.stream or (app.kind == "script" and self.rng.random() < 0.3)
        self.thinking = self.rng.random() < 0.5 if model.thinking else None
        self.cost_logged = self.rng.random() < 0.6  # older gateways logged no price-table cost
        system = self.rng.choice(SYSTEM_PROMPTS)
        self.turn = _Turn(
            "", "", [{"role": "system", "content_sha256": hashlib.sha256(system.encode()).hexdigest()}], []
        )
        if (prompt := sim.system_prompt_record(start, system)) is not None:
            self.records.append(prompt)
        self.prev_prompt_tokens = 0

    def user_turn(self, text: str) -> bool:
        """The user asks; the model answers, maybe after tool loops. False when the session ends."""
        self.turn.first_user = self.turn.first_user or text
        self.turn.last_user = text
        self.turn.messages.append({"role": "user", "content": text})
        loops = 0 if not self.app.tools else self.rng.choice((0, 1, 1, 2, 3, 5, 8))
        for index in range(loops + 1):
            wants_tools = index < loops
            response = self.call(wants_tools)
            if response is None or response["status"] != 200:
                return self.rng.random() < 0.4
            self.now += timedelta(milliseconds=self.rng.uniform(20, 3000))
        self.turn.tool_results = []
        return True

    def rejected(self) -> list[Record]:
        status, error, model = self.rng.choice(
            [
                (401, "invalid proxy key", "kimi"),
                (404, "model 'gpt-5' is not served here", "gpt-5"),
                (400, "request body is not valid JSON", None),
            ]
        )
        request = self._request(status_model=model, provider=None)
        self.records.append(request)
        self.now += timedelta(milliseconds=self.rng.uniform(1, 5))
        response = self._response_base(request, status, self.rng.uniform(0.5, 4))
        response.update(provider=None, model=model, error=error)
        self.records.append(response)
        return self.records

    def call(self, wants_tools: bool) -> Record | None:
        """One request record, then its response record (or none: the gateway crashed)."""
        request = self._request()
        self.records.append(request)
        outcome = self._outcome()
        if outcome == "unanswered":
            return None
        latency = self.model.median_ms * self.rng.lognormvariate(0, 0.5) + 50
        response = self._response_base(request, 200, latency)
        if outcome == "ok":
            self._answer(response, wants_tools, latency)
        else:
            fail(self.rng, response, outcome)
        self.now += timedelta(milliseconds=response["latency_ms"])
        response["timestamp"] = _iso(self.now)
        self.records.append(response)
        return response

    def _outcome(self) -> str:
        roll = self.rng.random()
        for name, chance in (("unanswered", 0.003), ("rate_limited", 0.015), ("upstream", 0.01)):
            if roll < chance:
                return name
            roll -= chance
        return "disconnect" if self.stream and roll < 0.01 else "ok"

    def _request(self, status_model: str | None = "", provider: str | None = "") -> Record:
        turn = self.turn
        record: Record = {
            "timestamp": _iso(self.now),
            "type": "request",
            "request_id": f"{self.rng.getrandbits(128):032x}",
            "session_id": self.session_id,
            "client": self.app.client,
            "key_name": self.app.key_name,
            "provider": self.model.provider if provider == "" else provider,
            "model": self.model.name if status_model == "" else status_model,
            "origin": self.origin,
            "stream": self.stream,
            "message_count": len(turn.messages),
            "tools_count": len(self.app.tools),
            "enable_thinking": self.thinking,
            "user_question": turn.first_user[:SUMMARY_CAP],
            "user_message_this_turn": turn.last_user[:SUMMARY_CAP],
            "tool_results_this_turn": [
                {**r, "content": r["content"] if self.sim.full else r["content"][:PREVIEW_CAP]}
                for r in turn.tool_results
            ],
        }
        if self.sim.full:
            record["messages"] = list(turn.messages)
        record["endpoint"] = "chat.completions"
        return record

    def _response_base(self, request: Record, status: int, latency: float) -> Record:
        return {
            "timestamp": _iso(self.now),
            "type": "response",
            "request_id": request["request_id"],
            "session_id": self.session_id,
            "provider": request["provider"],
            "model": request["model"],
            "origin": self.origin,
            "key_name": request["key_name"],
            "status": status,
            "latency_ms": round(latency, 3),
            "ttft_ms": None,
            "finish_reason": None,
            "upstream_id": None,
            "has_content": False,
            "has_tool_calls": False,
            "content_preview": "",
            "content": None,
            "tool_calls": [],
            "has_reasoning_content": False,
            "reasoning_content": None,
            "tokens": None,
            "cost": None,
            "cost_source": None,
            "error": None,
            "upstream_headers": None,
            "client_disconnected": False,
            "stream": self.stream,
        }

    def _answer(self, response: Record, wants_tools: bool, latency: float) -> None:
        rng = self.rng
        content = "" if wants_tools and rng.random() < 0.7 else answer(rng)
        calls = [self._tool_call() for _ in range(rng.choice((1, 1, 1, 2)))] if wants_tools else []
        reasoning = answer(rng)[:600] if self.thinking else ""
        cap = None if self.sim.full else SUMMARY_CAP
        response.update(
            ttft_ms=round(latency * rng.uniform(0.05, 0.4), 3) if self.stream else None,
            finish_reason="tool_calls" if calls else "stop",
            upstream_id=f"chatcmpl-{rng.getrandbits(48):012x}",
            has_content=bool(content),
            has_tool_calls=bool(calls),
            content_preview=content[:PREVIEW_CAP],
            content=content[:cap] if content else None,
            tool_calls=[{"name": n, "arguments": a} for n, a, _ in calls],
            has_reasoning_content=bool(reasoning),
            reasoning_content=reasoning[:cap] if reasoning else None,
        )
        self._usage(response, content, reasoning)
        assistant: Record = {"role": "assistant", "content": content or None}
        if calls:
            assistant["tool_calls"] = [
                {"id": cid, "type": "function", "function": {"name": n, "arguments": a}}
                for n, a, cid in calls
            ]
        self.turn.messages.append(assistant)
        self.turn.tool_results = [
            {"tool_call_id": cid, "name": n, "content": tool_result(rng, n)} for n, _, cid in calls
        ]
        self.turn.messages += [
            {"role": "tool", "tool_call_id": r["tool_call_id"], "content": r["content"]}
            for r in self.turn.tool_results
        ]

    def _tool_call(self) -> tuple[str, str, str]:
        name = self.rng.choice(self.app.tools)
        return name, tool_arguments(self.rng, name), f"call_{self.rng.getrandbits(40):010x}"

    def _usage(self, response: Record, content: str, reasoning: str) -> None:
        rng = self.rng
        prompt = 600 + sum(len(str(m.get("content") or "")) // 4 + 8 for m in self.turn.messages)
        reasoning_tokens = len(reasoning) // 4 + (rng.randrange(50, 900) if reasoning else 0)
        completion = len(content) // 4 + reasoning_tokens + sum(20 for _ in response["tool_calls"]) + 1
        cached = int(self.prev_prompt_tokens * 0.9) if self.prev_prompt_tokens and rng.random() < 0.6 else 0
        self.prev_prompt_tokens = prompt
        tokens: Record = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        if reasoning_tokens:
            tokens["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
        if cached:
            tokens["prompt_tokens_details"] = {"cached_tokens": cached}
        price = self.model.price
        if price is not None and (self.model.reports_cost or self.cost_logged):
            cost = round((prompt * price[0] + completion * price[1]) / 1e6, 8)
            if self.model.reports_cost:
                tokens["cost"] = cost
            response.update(cost=cost, cost_source="provider" if self.model.reports_cost else "price_table")
        response["tokens"] = tokens


def _iso(when: datetime) -> str:
    return when.isoformat(timespec="microseconds")
