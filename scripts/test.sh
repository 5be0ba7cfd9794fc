#!/usr/bin/env bash
# Installs everything the tests need (Debian's Chromium, redis-server, gcc and Python's headers, whichever is
# missing; a virtualenv holding the project, compiled, with its test extras) and runs the linter, the
# formatter check, the type checker and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)  # the limits tests' shared store
command -v gcc >/dev/null 2>&1 || missing+=(gcc)  # mypyc's C, compiled by the install (setup.py)
python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"))' \
  || missing+=(python3-dev)
if [ "${#missing[@]}" -gt 0 ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
# The install compiles the modules gateway/native.py names (unless OPEN_LLM_PROXY_PURE=1 asks it not to): the
# tests run them as the image does, compiled, and fail here if they were not.
.venv/bin/python -c 'import gateway.native as n, sys
sys.exit(0 if n.pure_requested() or n.compiled() == list(n.MODULES) else f"not compiled: {set(n.MODULES) - set(n.compiled())}")'
# The agent CLIs the dialect tests drive (Claude Code, Codex), at the versions tests/clients pins.
(cd tests/clients && npm ci --no-audit --no-fund --loglevel=error)

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest -q "$@"
