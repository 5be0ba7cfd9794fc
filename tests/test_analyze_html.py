"""The HTML report opened in headless Chromium: charts drawn, nothing fetched from the network."""

from __future__ import annotations

import io
from datetime import date
from pathlib import Path

import pytest
from browser import CHROMIUM, CHROMIUM_ARGS
from playwright.sync_api import sync_playwright
from synthetic import SynthConfig, generate

from gateway.analyze.cli import main

CHARTS = (
    "calls_per_day",
    "calls_by_model",
    "latency_histogram",
    "ttft_histogram",
    "cost_by_model",
    "tool_usage",
)


@pytest.fixture(scope="module")
def page_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("html")
    generate(tmp / "logs", SynthConfig(records=3000, start=date(2026, 10, 1), days=5, seed=11))
    out = tmp / "report.html"
    assert main([str(tmp / "logs"), "--html", str(out), "--no-progress"], stdout=io.StringIO()) == 0
    return out


def test_charts_render_offline_in_chromium(page_file: Path) -> None:
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_ARGS))
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("request", lambda r: requests.append(r.url))
        page.goto(page_file.as_uri())
        for key in CHARTS:
            chart = page.locator(f'svg[data-chart="{key}"]')
            assert chart.count() == 1, key
            box = chart.bounding_box()
            assert box is not None and box["width"] > 200 and box["height"] > 50, key
            drawn = chart.evaluate(
                "svg => [...svg.querySelectorAll('rect.bar')].filter("
                "r => r.getBBox().width > 0 && r.getBBox().height > 0).length"
            )
            assert drawn > 0, key
        headings = page.locator("h2").all_inner_texts()
        browser.close()
    assert headings == [
        "Calls over time",
        "Models and providers",
        "Latency of successful calls",
        "Tokens and cost",
        "Tools",
        "Errors",
        "Sessions",
        "User questions",
    ]
    assert requests == [page_file.as_uri()]  # self-contained: no script, style or font fetched


def test_page_holds_no_external_reference(page_file: Path) -> None:
    text = page_file.read_text()
    for needle in ("<script", "<link", " src=", 'href="http', "url(", "@import"):
        assert needle not in text, needle
    assert text.count("<svg") >= len(CHARTS)
