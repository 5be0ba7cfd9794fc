"""The report over synthetic records in the spool layout: every section, filters, bad lines, empty sources."""

from __future__ import annotations

import io
import json
from datetime import date
from pathlib import Path
from typing import Any

import duckdb
import pytest
from moto_s3 import S3
from synthetic import SynthConfig, SynthStats, generate
from test_analyze_checks import check_report
from test_analyze_expected import calls_of, quantile, read_folder

from gateway.analyze.cli import main


def run(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main([*args, "--no-progress"], stdout=out)
    return code, out.getvalue()


def report(*args: str) -> dict[str, Any]:
    code, text = run(*args, "--json", "--limit", "0")
    assert code == 0
    return json.loads(text)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SynthStats]:
    """About 6,000 records over six days, with some malformed lines and cut-off chunks."""
    root = tmp_path_factory.mktemp("synthetic") / "logs"
    config = SynthConfig(
        records=6000, start=date(2026, 10, 1), days=6, seed=3, malformed_every=9, truncated_every=13
    )
    return root, generate(root, config)


def test_every_section_matches_an_independent_computation(dataset: tuple[Path, SynthStats]) -> None:
    root, stats = dataset
    data = report(str(root))
    raw = read_folder(root)
    assert data["read"]["objects"] == raw.files == stats.files
    assert raw.bad == stats.malformed_lines > 0
    check_report(data, raw)


def test_bad_lines_are_counted_and_skipped_with_a_warning(dataset: tuple[Path, SynthStats]) -> None:
    root, stats = dataset
    cut = [p for p in root.rglob("*.jsonl") if not p.read_bytes().endswith(b"\n")]
    data = report(str(root))
    assert data["read"]["skipped_lines"] == stats.malformed_lines
    assert sorted(data["read"]["partial_chunks"]) == sorted(str(p) for p in cut) and cut
    assert any("skipped" in w for w in data["warnings"]) and any(
        "partially written" in w for w in data["warnings"]
    )


def test_numbers_match_a_direct_duckdb_query(dataset: tuple[Path, SynthStats]) -> None:
    """The same questions asked of DuckDB directly, the way a researcher would."""
    root, _ = dataset
    data = report(str(root))
    con = duckdb.connect()
    con.execute(
        f"CREATE VIEW r AS SELECT * FROM read_json_auto('{root}/*/*.jsonl', format='newline_delimited', "
        "union_by_name=true, ignore_errors=true) WHERE type IS NOT NULL"
    )
    per_model = dict(
        con.execute("SELECT model, count(*) FROM r WHERE type='request' GROUP BY model").fetchall()
    )
    [(p50, p99)] = con.execute(
        "SELECT quantile_cont(latency_ms, 0.5), quantile_cont(latency_ms, 0.99) FROM r "
        "WHERE type='response' AND status < 400"
    ).fetchall()
    [(limited,)] = con.execute("SELECT count(*) FROM r WHERE type='response' AND status = 429").fetchall()
    models = data["sections"]["models"]["tables"]["models"]
    reported: dict[Any, int] = {}
    for row in models:
        reported[row["model"]] = reported.get(row["model"], 0) + row["calls"]
    unanswered_or_orphan = data["sections"]["errors"]["facts"]["orphan_responses"]
    assert sum(per_model.values()) + unanswered_or_orphan == data["calls"]
    assert data["sections"]["latency"]["facts"]["latency_p50"] == pytest.approx(p50)
    assert data["sections"]["latency"]["facts"]["latency_p99"] == pytest.approx(p99)
    assert data["sections"]["errors"]["facts"]["rate_limited"] == limited


def test_date_window_reads_only_the_folders_it_needs(dataset: tuple[Path, SynthStats]) -> None:
    root, _ = dataset
    data = report(str(root), "--since", "2026-10-02", "--until", "2026-10-03")
    wanted = [p for day in ("2026-10-02", "2026-10-03") for p in (root / day).glob("*.jsonl")]
    assert data["read"]["objects"] == len(wanted)
    calls = calls_of(read_folder(root).records)
    inside = [c for c in calls if date(2026, 10, 2) <= c["ts"].date() <= date(2026, 10, 3)]
    assert data["calls"] == len(inside)
    assert {r["day"] for r in data["sections"]["time"]["tables"]["per_day"]} == {"2026-10-02", "2026-10-03"}


def test_model_origin_and_key_filters(dataset: tuple[Path, SynthStats]) -> None:
    root, _ = dataset
    calls = calls_of(read_folder(root).records)
    kimi = report(str(root), "--model", "kimi", "--origin", "none")
    expected = [c for c in calls if c["model"] == "kimi" and c["origin"] is None]
    assert kimi["calls"] == len(expected) > 0
    latency = [c["rs"]["latency_ms"] for c in expected if c["ok"]]
    assert kimi["sections"]["latency"]["facts"]["latency_p90"] == pytest.approx(quantile(latency, 0.9))
    keyed = report(str(root), "--key-name", "lab-*")
    assert keyed["calls"] == sum(1 for c in calls if (c["key_name"] or "").startswith("lab-"))


def test_glob_and_single_file_sources(dataset: tuple[Path, SynthStats]) -> None:
    root, _ = dataset
    one = sorted((root / "2026-10-04").glob("*.jsonl"))[0]
    assert report(str(one))["read"]["objects"] == 1
    globbed = report(str(root / "2026-10-0[45]" / "*.jsonl"))
    assert globbed["read"]["objects"] == len(list(root.glob("2026-10-0[45]/*.jsonl")))


def test_text_report_has_every_section(dataset: tuple[Path, SynthStats]) -> None:
    root, _ = dataset
    code, text = run(str(root))
    assert code == 0
    for title in (
        "Calls over time",
        "Models and providers",
        "Latency",
        "Tokens and cost",
        "Tools",
        "Errors",
        "Sessions",
        "User questions",
    ):
        assert f"== {title}" in text
    assert "│█" in text  # the per-day chart


def test_empty_sources_say_so_plainly(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    code, text = run(str(tmp_path / "empty"))
    assert code == 0 and "No log files found" in text
    (tmp_path / "junk" / "2026-10-01").mkdir(parents=True)
    (tmp_path / "junk" / "2026-10-01" / "00-00-00-h-1-ab.jsonl").write_text('not json\n{"half": \n')
    code, text = run(str(tmp_path / "junk"))
    assert code == 0 and "No records" in text and "skipped 2 line(s)" in text
    assert report(str(tmp_path / "empty"))["empty"].startswith("No log files found")


def test_missing_source_and_bad_price_table_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(str(tmp_path / "nope"))[0] == 2
    assert "no such file or folder" in capsys.readouterr().err
    prices = tmp_path / "prices.yaml"
    prices.write_text("models:\n  kimi: {prompt: cheap, completion: 1}\n")
    (tmp_path / "logs").mkdir()
    assert run(str(tmp_path / "logs"), "--prices", str(prices))[0] == 2
    assert "kimi.prompt: expected a number" in capsys.readouterr().err


def test_bucket_prefix_reads_only_the_date_folders_asked_for(
    dataset: tuple[Path, SynthStats], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same chunks under `s3://bucket/ns-a/` in moto's S3, beside another namespace's prefix."""
    root, _ = dataset
    s3 = S3().start()
    try:
        client = s3.client()
        for path in root.rglob("*.jsonl"):
            relative = path.relative_to(root).as_posix()
            client.put_object(Bucket=s3.bucket, Key=f"ns-a/{relative}", Body=path.read_bytes())
        client.put_object(Bucket=s3.bucket, Key="ns-b/2026-10-02/00-00-00-h-1-aa.jsonl", Body=b"{}\n")
        for name, value in s3.env().items():
            monkeypatch.setenv(name, value)
        from_bucket = report(f"s3://{s3.bucket}/ns-a", "--since", "2026-10-02", "--until", "2026-10-03")
        from_folder = report(str(root), "--since", "2026-10-02", "--until", "2026-10-03")
    finally:
        s3.stop()
    assert from_bucket["read"]["objects"] == from_folder["read"]["objects"] > 0
    for key in ("calls", "sections"):
        assert from_bucket[key] == from_folder[key]
