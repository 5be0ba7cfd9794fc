"""The modules that every call's limits and records run through, which the build compiles with mypyc.

They stay ordinary, type-checked Python: `setup.py` hands them to mypyc when it and a C compiler are at hand,
and each then imports as an extension module in place of its source. What the limits and the records cost a
call falls by about two fifths (instructions per call, docs/BENCHMARKS.md). Without a compiler, or with
`OPEN_LLM_PROXY_PURE=1` at install time, the package is plain Python and behaves the same; `/health` (with
a key) lists what runs compiled under `compiled`.

A compiled module is loaded in place of its source even after the source has changed. In a checkout
installed with `pip install -e .`, importing the package therefore refuses a compiled module older than its
source (`check_built`): reinstall to compile again. This module imports nothing of the gateway's, so that
`setup.py` can read `MODULES` before anything is installed.
"""

from __future__ import annotations

import os
from importlib.machinery import EXTENSION_SUFFIXES
from importlib.util import find_spec
from pathlib import Path

MODULES = (
    "gateway.limits.limiter",
    "gateway.limits.memory",
    "gateway.limits.plan",
    "gateway.limits.store",
    "gateway.limits.usage",
    "gateway.limits.windows",
    "gateway.logs.conversation",
    "gateway.logs.fields",
    "gateway.logs.lines",
    "gateway.logs.recorder",
    "gateway.logs.records",
)
ROOT = Path(__file__).resolve().parent.parent  # the folder holding the `gateway` package
# Files written by one install lie within a few seconds of each other; a source edited after its module was
# compiled is newer than that.
STALE_AFTER_S = 2.0


def source(module: str) -> Path:
    """The source file of one of MODULES."""
    return ROOT.joinpath(*module.split(".")).with_suffix(".py")


def built(module: str) -> Path | None:
    """The extension module compiled from `module`'s source, if there is one beside it."""
    base = source(module).with_suffix("")
    for suffix in EXTENSION_SUFFIXES:
        path = base.with_name(base.name + suffix)
        if path.exists():
            return path
    return None


def check_built() -> None:
    """Refuse to run compiled modules older than their source (an edited checkout not compiled again)."""
    stale = []
    for module in MODULES:
        path, src = built(module), source(module)
        if path is not None and src.stat().st_mtime > path.stat().st_mtime + STALE_AFTER_S:
            stale.append(src.relative_to(ROOT).as_posix())
    if stale:
        raise ImportError(
            f"{', '.join(stale)} changed after being compiled: the compiled module would run instead of "
            "the source. Compile again with `pip install -e .` (or `OPEN_LLM_PROXY_PURE=1 pip install -e .` "
            "for a plain-Python install, which needs no compiling after an edit)."
        )


def compiled() -> list[str]:
    """Which of MODULES this process imports compiled."""
    found = []
    for module in MODULES:
        spec = find_spec(module)
        if spec is not None and spec.origin and spec.origin.endswith(tuple(EXTENSION_SUFFIXES)):
            found.append(module)
    return found


def pure_requested() -> bool:
    """Whether the install is asked to leave every module as plain Python (`OPEN_LLM_PROXY_PURE=1`)."""
    return os.environ.get("OPEN_LLM_PROXY_PURE", "").strip().lower() in {"1", "true", "yes", "on"}
