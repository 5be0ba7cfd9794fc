"""Limits and budgets per proxy key, exact across every worker and replica.

config       the `limits:` section, parsed into frozen dataclasses
windows      window arithmetic as pure functions: sliding minutes, UTC days and months
plan         a key's meters, and the counters they charge this second
limiter      admission and settlement of one call
answers      what a refusal says: the 429 naming its limit, Retry-After, x-should-retry
usage        tokens and cost read from a call's usage object
store        the interface every store keeps
memory       the in-process store (exact for one worker)
redis_store  Redis or Valkey, shared by every worker and replica
scripts      the Lua scripts that store runs, each atomic
resp         the small pipelined client it talks through
web          the cleanup context, the headers on every answer, the /v1/usage routes
report       `open-llm-proxy usage`
"""
