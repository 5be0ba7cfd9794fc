"""`open-llm-proxy usage`: every key's usage and what its limits leave, as a running gateway counts them."""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

from gateway.limits.windows import reset_text


def show_usage(url: str, key_env: str) -> int:
    """Print the table from `url`'s `/v1/usage/keys`, with the key in `key_env`; exit status 0, 1 or 2."""
    key = os.environ.get(key_env)
    if not key:
        print(f"usage: set {key_env} to a proxy key named in limits.operator_keys", file=sys.stderr)
        return 2
    request = urllib.request.Request(
        url.rstrip("/") + "/v1/usage/keys", headers={"Authorization": f"Bearer {key}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            data = json.load(response)
    except urllib.error.HTTPError as exc:
        print(f"usage: {url} answered {exc.code}: {_message(exc)}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"usage: cannot reach {url}: {getattr(exc, 'reason', exc)}", file=sys.stderr)
        return 1
    print(render(data["data"]))
    return 0


def render(entries: list[dict[str, Any]]) -> str:
    """One line per key and limit: what was used, what is left, and when the window resets."""
    rows = [["key", "limit", "used", "of", "left", "resets in"]]
    for entry in entries:
        for limit in entry["limits"] or [{"name": "(no limits)"}]:
            rows.append([entry["key_name"], limit["name"], *_numbers(limit)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def _numbers(limit: dict[str, Any]) -> list[str]:
    if "used" not in limit:
        return ["", "", "", ""]
    resets = limit.get("resets_in_s")
    return [
        *(
            f"{limit[k]:g}" if isinstance(limit[k], float) else str(limit[k])
            for k in ("used", "limit", "remaining")
        ),
        "" if resets is None else reset_text(resets),
    ]


def _message(error: urllib.error.HTTPError) -> str:
    try:
        return str(json.load(error)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return error.reason
