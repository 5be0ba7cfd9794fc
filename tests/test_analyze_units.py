"""The analyzer's pure parts on values: price table, date windows, source listing, line counting, formats."""

from __future__ import annotations

import io
from datetime import datetime
from pathlib import Path

import pytest

from gateway.analyze.batches import count_lines, ends_partially
from gateway.analyze.progress import Progress
from gateway.analyze.s3 import client_settings, split_url
from gateway.analyze.sources import Window, local_files, parse_since, parse_until
from gateway.analyze.text import fmt
from gateway.prices import Price, PriceTableError, load_prices

ROOT = Path(__file__).resolve().parents[1]


def test_project_price_table_loads_with_exact_ids_and_prefixes() -> None:
    table = load_prices(ROOT / "gateway" / "prices.yaml")
    assert table.lookup("kimi") == Price(0.60, 2.50, 0.15)
    assert table.lookup("anthropic/claude-sonnet-4.5") == Price(3.00, 15.00, 0.30)
    assert table.lookup("anthropic/claude-sonnet-5") == table.prefixes["anthropic/claude-sonnet-"]
    assert table.lookup("qwen/qwen3-coder") == table.prefixes["qwen/qwen3-"]
    assert table.lookup("gpt-oss-120b") is None and table.lookup(None) is None


def test_price_cost_bills_cached_prompt_tokens_at_their_price() -> None:
    price = Price(prompt=1.0, completion=4.0, cached_prompt=0.25)
    assert price.cost(prompt=1_000_000, completion=0, cached=400_000) == pytest.approx(0.6 + 0.1)
    assert price.cost(prompt=0, completion=500_000) == pytest.approx(2.0)
    assert Price(1.0, 1.0).cost(prompt=10, completion=0, cached=50) == pytest.approx(10 / 1e6)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("models: {kimi: {prompt: 1}}", "needs `prompt` and `completion`"),
        ("models: {kimi: {prompt: -1, completion: 1}}", "kimi.prompt: expected a number >= 0"),
        ("models: {kimi: {prompt: 1, completion: 1, cache: 1}}", "unknown keys: cache"),
        ("pricing: {}", "unknown top-level keys: pricing"),
        ("models: [", "cannot read the price table"),
    ],
)
def test_bad_price_tables_say_what_is_wrong(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text(text)
    with pytest.raises(PriceTableError, match=problem.replace("[", r"\[")):
        load_prices(path)


def test_until_a_date_includes_that_whole_day() -> None:
    assert parse_since("2026-11-02") == datetime(2026, 11, 2)
    assert parse_until("2026-11-02") == datetime(2026, 11, 3)
    assert parse_until("2026-11-02T12:00:00+02:00") == datetime(2026, 11, 2, 10)
    window = Window(parse_since("2026-11-02"), parse_until("2026-11-03"))
    assert [window.covers_day(d) for d in ("2026-11-01", "2026-11-02", "2026-11-03", "2026-11-04")] == [
        False,
        True,
        True,
        False,
    ]


def test_folders_outside_the_window_are_never_walked(tmp_path: Path) -> None:
    for day in ("2026-11-01", "2026-11-02", "2026-11-03"):
        (tmp_path / "ns" / day).mkdir(parents=True)
        (tmp_path / "ns" / day / "00-00-00-h-1-aa.jsonl").write_text("{}\n")
    (tmp_path / "ns" / "2026-11-02" / "00-05-00-h-1-bb.jsonl.open").write_text("{}\n")
    (tmp_path / "ns" / "2026-11-02" / "notes.txt").write_text("x")
    window = Window(parse_since("2026-11-02"), parse_until("2026-11-02"))
    found = sorted(f.path.name for f in local_files(str(tmp_path), window))
    assert found == ["00-00-00-h-1-aa.jsonl", "00-05-00-h-1-bb.jsonl.open"]
    assert len(local_files(str(tmp_path / "ns" / "*"), window)) == 2
    with pytest.raises(FileNotFoundError):
        local_files(str(tmp_path / "missing"), window)


def test_lines_are_counted_with_blank_lines_and_a_cut_off_end() -> None:
    assert count_lines(b'{"a":1}\n{"a":2}\n') == 2
    assert count_lines(b'{"a":1}\n\n{"a":2}') == 2
    assert count_lines(b"") == 0
    assert ends_partially(b'{"a":1}\n{"a": 2, "b"') and not ends_partially(b'{"a":1}\n{"a":2}')
    assert not ends_partially(b'{"a":1}\n')


def test_s3_urls_and_endpoint_precedence() -> None:
    assert split_url("s3://logs") == ("logs", "")
    assert split_url("s3://logs/ns-a") == ("logs", "ns-a/")
    assert split_url("s3://logs/ns-a/2026-11-02/x.jsonl") == ("logs", "ns-a/2026-11-02/x.jsonl")
    env = {
        "AWS_ENDPOINT_URL": "http://c",
        "AWS_ENDPOINT_URL_S3": "http://b",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }
    assert client_settings(env)["endpoint_url"] == "http://b"
    assert client_settings({**env, "AWS_S3_ENDPOINT_URL": "http://a"})["endpoint_url"] == "http://a"
    assert client_settings(env)["region_name"] == "eu-west-1"
    assert client_settings({})["endpoint_url"] is None


def test_formats() -> None:
    assert fmt(1234567, "int") == "1,234,567"
    assert fmt(0.1234, "pct") == "12.3%"
    assert fmt(0.01234, "usd") == "$0.0123" and fmt(12.5, "usd") == "$12.50"
    assert fmt(950.2, "ms") == "950 ms" and fmt(12_500, "ms") == "12.5 s"
    assert fmt(None, "int") == "-" and fmt(None, "text") == "(none)"
    assert fmt("2026-10-01T12:00:00.123", "time") == "2026-10-01 12:00:00"


def test_progress_bar_draws_on_one_line_and_ends_it() -> None:
    stream = io.StringIO()
    bar = Progress(3, 3_000_000, "reading", stream=stream, enabled=True)
    for _ in range(3):
        bar.advance(1_000_000)
    bar.close()
    text = stream.getvalue()
    assert text.startswith("\rreading [") and text.endswith("\n")
    assert "3/3 objects, 3.0/3.0 MB" in text and "#" * 30 in text
    quiet = io.StringIO()
    Progress(500, 1, "reading", stream=quiet).advance(1)  # not a terminal: no bar
    assert quiet.getvalue() == ""
