"""The front door: the lower bounds in setup.cfg are real, and README's "Using it" runs as written.

Floors: a fresh virtualenv gets the package with a constraints file that pins every `install_requires`
entry to its lower bound, so pip must resolve everything else around those versions (no `--no-deps`).
Then the installed `open-llm-proxy serve` relays a streamed call from the fake upstream and, on SIGTERM,
drains and uploads: both records reach stdout and a real S3 API (moto's server). That exercises aiohttp,
orjson, PyYAML, prometheus-client and uvloop on the request path and aiobotocore on the upload. The
install is the slow part (pip resolves and fetches; its cache is kept): one virtualenv per session.

README: its two "Using it" blocks run one after the other in one shell, the server started by the first
answering the openai SDK in the second, with the README's virtualenv (the one these tests run in: the
set-up commands made it). Only the port is changed, to a free one, and the config (through `PROXY_CONFIG`,
which `serve` reads) sends `kimi` to the fake upstream instead of NRP.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import httpx
import orjson
import pytest
import yaml
from gateway_process import PROVIDER_KEY, PROXY_KEY, UpstreamThread, fake_config, free_port
from moto_s3 import S3
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
# What `pip install` needs to build the package: the packages and their metadata, nothing else.
SOURCES = ("gateway", "providers", "setup.cfg", "pyproject.toml", "README.md", "LICENSE")


def install_requires() -> list[Requirement]:
    """setup.cfg's `install_requires`, parsed."""
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    lines = parser["options"]["install_requires"].strip().splitlines()
    return [Requirement(line) for line in lines if line.strip()]


def floor(requirement: Requirement) -> Version:
    """The one `>=` bound of a requirement."""
    bounds = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
    assert len(bounds) == 1, f"{requirement}: one `>=` bound expected"
    return bounds[0]


def constraints() -> str:
    """A constraints file pinning every dependency to its floor (markers kept)."""
    lines = []
    for requirement in install_requires():
        marker = f"; {requirement.marker}" if requirement.marker else ""
        lines.append(f"{requirement.name}=={floor(requirement)}{marker}\n")
    return "".join(lines)


def test_every_dependency_has_a_floor_and_a_ceiling() -> None:
    for requirement in install_requires():
        operators = sorted(s.operator for s in requirement.specifier)
        assert operators == ["<", ">="], f"{requirement}: a `>=` floor and a `<` ceiling expected"
        assert requirement.specifier.contains(floor(requirement)), requirement


@pytest.fixture(scope="session")
def floor_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv holding the package installed on the floors; its folder."""
    workdir = tmp_path_factory.mktemp("floors")
    source = workdir / "src"
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    (workdir / "constraints.txt").write_text(constraints())
    venv = workdir / "venv"
    base_python = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    run([base_python, "-m", "venv", "--without-pip", str(venv)])
    # pip from this environment installs into the new one (--python): no pip bootstrapped into it, and no
    # byte-compiling of what the test never imports. pip's download cache is kept between runs.
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "--quiet"]
    run([*pip, "install", "--no-compile", "-c", str(workdir / "constraints.txt"), str(source)])
    return venv


def run(command: list[str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=540, check=False)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_the_floors_are_what_got_installed(floor_venv: Path) -> None:
    script = (
        "import importlib.metadata as m, json, sys; "
        "print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))"
    )
    requirements = install_requires()
    names = [r.name for r in requirements]
    installed = orjson.loads(run([str(floor_venv / "bin" / "python"), "-c", script, *names]))
    assert {n: Version(v) for n, v in installed.items()} == {r.name: floor(r) for r in requirements}


def test_the_gateway_relays_and_records_on_the_floors(
    floor_venv: Path, upstream: UpstreamThread, s3: S3, tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(fake_config(upstream.url)))
    spool = tmp_path / "spool"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "PROXY_KEY": PROXY_KEY,
        "FAKE_KEY": PROVIDER_KEY,
        "LOG_SPOOL_DIR": str(spool),
        **s3.env(),
    }
    command = [str(floor_venv / "bin" / "open-llm-proxy"), "serve", "--config", str(config)]
    stdout, logs = tmp_path / "stdout.jsonl", tmp_path / "stderr.log"
    with stdout.open("wb") as out, logs.open("wb") as err:
        proc = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=out, stderr=err
        )
    try:
        wait_until_ready(proc, url, logs)
        body = {"model": "fake-model", "stream": True, "messages": [{"role": "user", "content": "hello"}]}
        headers = {"Authorization": f"Bearer {PROXY_KEY}"}
        with (
            httpx.Client(timeout=30) as client,
            client.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers) as response,
        ):
            text = "".join(response.iter_text())
        assert response.status_code == 200, text
        assert "Hello" in text and text.rstrip().endswith("data: [DONE]"), text
        request_id = response.headers["X-Request-Id"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, logs.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    # Every record goes to stdout at once, and to the bucket by the last upload on SIGTERM, which also
    # empties the spool folder (a chunk is deleted only once S3 has confirmed it).
    printed = [orjson.loads(line) for line in stdout.read_bytes().splitlines() if line.startswith(b"{")]
    for records in (printed, s3.records()):
        mine = [r for r in records if r.get("request_id") == request_id]
        assert sorted(r["type"] for r in mine) == ["request", "response"], logs.read_text()
        assert [r["status"] for r in mine if r["type"] == "response"] == [200]
    assert not list(spool.rglob("*.jsonl")), logs.read_text()


def wait_until_ready(proc: subprocess.Popen[bytes], url: str, logs: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the gateway exited with {proc.returncode}:\n{logs.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"the gateway did not get ready within 30 s:\n{logs.read_text()}")


def readme_blocks(section: str) -> dict[str, str]:
    """The first code block of each language in one README section."""
    text = (ROOT / "README.md").read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    blocks: dict[str, str] = {}
    for language, code in re.findall(r"```(\w+)\n(.*?)```", body, flags=re.DOTALL):
        blocks.setdefault(language, code)
    return blocks


def test_readme_using_it_runs_as_written(upstream: UpstreamThread, tmp_path: Path) -> None:
    blocks = readme_blocks("Using it")
    port = str(free_port())
    venv_bin = Path(sys.executable).parent
    shell, python = (
        blocks[lang].replace("8080", port).replace(".venv/bin/", f"{venv_bin}/")
        for lang in ("bash", "python")
    )
    config = fake_config(upstream.url)
    config["providers"]["fake"]["models"] = ["kimi"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    # Between the two blocks a person waits for the server to listen; so does the script (bash's /dev/tcp).
    wait = f"for _ in $(seq 300); do (: <>/dev/tcp/127.0.0.1/{port}) 2>/dev/null && break; sleep 0.1; done"
    script = "\n".join(
        [
            "set -euo pipefail",
            shell,
            "trap 'kill %1; wait' EXIT",
            wait,
            # Its output alone (the server prints its records to the same terminal).
            f"{venv_bin}/python - > {tmp_path / 'answer.txt'} <<'EOF'\n{python}EOF",
        ]
    )
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "PROXY_CONFIG": str(tmp_path / "config.yaml"),
        "FAKE_KEY": PROVIDER_KEY,
        "LOG_SPOOL_DIR": str(tmp_path / "spool"),
    }
    done = subprocess.run(
        ["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    # The call got through, so the key the shell made is the one the Python block sent.
    assert (tmp_path / "answer.txt").read_text() == "Hello from the fake upstream.", done.stderr
