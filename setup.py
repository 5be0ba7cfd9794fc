"""Builds open-llm-proxy; its metadata is in setup.cfg.

The modules in `gateway.native.MODULES` are compiled with mypyc when it and a C compiler are at hand (mypy is
one of the build requirements in pyproject.toml). Where either is missing, or with `OPEN_LLM_PROXY_PURE=1`,
the package is built as plain Python, which behaves the same and costs more CPU per call; the build says so.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
native = runpy.run_path(str(HERE / "gateway" / "native.py"))  # imports nothing of the package


def warn(message: str) -> None:
    print(f"open-llm-proxy: {message}; the package is built as plain Python", file=sys.stderr)


def extensions() -> list[Any]:
    """The compiled modules' extensions, or none."""
    if native["pure_requested"]():
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        warn("mypyc (part of mypy) is not installed")
        return []
    paths = [str(native["source"](module).relative_to(HERE)) for module in native["MODULES"]]
    try:
        return list(mypycify(paths, opt_level="3", group_name="open_llm_proxy"))
    except (Exception, SystemExit) as exc:  # mypy refused them: it has printed why
        warn(f"mypyc could not compile the modules ({type(exc).__name__})")
        return []


class OptionalBuildExt(build_ext):
    """Compiles the extensions; without a working C compiler, leaves them all out instead of failing."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            for path in self.get_outputs():  # all or none: a module compiled alone cannot load its group
                Path(path).unlink(missing_ok=True)
            warn(f"compiling failed ({type(exc).__name__}: {exc})")
            self.extensions = []


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
