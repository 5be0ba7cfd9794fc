"""A third-party provider plugin, pip-installed into this venv: discovered by entry point, then routed to.

The distribution lives in tests/plugin_example/. It is installed offline (`--no-index`, no build isolation:
the venv's own setuptools builds it) for this module's tests only, and uninstalled afterwards.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import CHAT, FAST_UPSTREAM, ROOT, StartCli, run_cli, write_config
from fake_upstream import FakeUpstream

DISTRIBUTION = "olp-example-plugin"
PLUGIN_HEADER = "X-Example-Plugin"


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", *args, "--disable-pip-version-check", "-q"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module", autouse=True)
def example_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # pip builds in the source folder (build/, *.egg-info): build a copy, so the tree stays clean.
    source = tmp_path_factory.mktemp("plugin") / "plugin_example"
    shutil.copytree(ROOT / "tests" / "plugin_example", source)
    installed = _pip("install", "--no-deps", "--no-build-isolation", "--no-index", str(source))
    assert installed.returncode == 0, installed.stderr
    try:
        yield
    finally:
        removed = _pip("uninstall", "-y", DISTRIBUTION)
        assert removed.returncode == 0, removed.stderr
        assert "example" not in run_cli("providers").stdout.split()


def test_the_installed_plugin_is_listed_with_its_distribution() -> None:
    done = run_cli("providers")
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line.split() for line in done.stdout.splitlines() if line.strip()}
    assert rows["example"] == ["example", DISTRIBUTION, "0.1.0", "olp_example_plugin:ExampleProvider"]
    assert {"nrp", "openrouter", "nimbus", "openai"} <= set(rows)


def test_check_config_accepts_a_section_naming_the_plugin(tmp_path: Path) -> None:
    path = write_config(
        tmp_path, {"providers": {"partner": {"plugin": "example", "endpoint": "https://p.example/v1"}}}
    )
    done = run_cli("check-config", str(path))
    assert done.returncode == 0, done.stderr
    assert "partner [example] https://p.example/v1  key: EXAMPLE_API_KEY NOT set" in done.stdout
    assert "models: example-model; prefixes: example/" in done.stdout


def _config(fake_url: str, section_name: str, **section: Any) -> dict[str, Any]:
    return {
        "default_provider": None,
        "providers": {section_name: {"endpoint": f"{fake_url}/v1/chat/completions", **section}},
        "upstream": FAST_UPSTREAM,
    }


@pytest.mark.parametrize(
    ("section_name", "section"),
    [("partner", {"plugin": "example"}), ("example", {})],
    ids=["plugin-named-explicitly", "section-named-after-the-plugin"],
)
async def test_a_gateway_routes_to_the_plugin_which_shapes_the_upstream_request(
    section_name: str,
    section: dict[str, Any],
    start_cli: StartCli,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
) -> None:
    gateway = await start_cli(
        _config(fake_upstream.url, section_name, **section),
        env={"PROXY_KEY": "k", "EXAMPLE_API_KEY": "example-secret"},
    )
    headers = {"Authorization": "Bearer k"}
    for model in ("example-model", "example/large"):
        body = {**CHAT, "model": model, "enable_thinking": True}
        async with http.post(gateway.url + "/v1/chat/completions", json=body, headers=headers) as response:
            assert response.status == 200, await response.text()
    for seen in fake_upstream.requests:
        assert seen["headers"][PLUGIN_HEADER] == "olp-example-plugin/0.1.0"
        assert seen["headers"]["Authorization"] == "Bearer example-secret"
        assert seen["body"]["thinking"] == {"type": "enabled"}
        assert "enable_thinking" not in seen["body"]
    async with http.get(gateway.url + "/health", headers=headers) as response:
        assert (await response.json())["providers"][section_name]["plugin"] == "example"
