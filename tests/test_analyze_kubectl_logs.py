"""The analyzer over `kubectl logs` snapshots of real gateways: records among log lines, behind prefixes.

Two real gateways (two pods) serve a known mix of calls; their stdout (the records) and stderr (their own log
lines) are joined as `kubectl logs` would join them, with and without `--prefix` and `--timestamps`, plus a
traceback, a sidecar's JSON line and a record cut short. Every section of the report is then checked against
the records themselves, the skipped lines are counted exactly, and the same records read from the gateways'
spool folder (where DuckDB alone sorts the lines) give the same report.
"""

from __future__ import annotations

import io
import json
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import zip_longest
from pathlib import Path
from typing import Any

import pytest
from gateway_process import GatewayProcess, UpstreamThread, fake_config
from test_analyze_checks import check_report
from test_analyze_expected import Raw
from test_analyze_gateway import QUESTION, SYSTEM, call, traffic

from gateway.analyze.batches import count_lines
from gateway.analyze.cli import main
from gateway.analyze.loglines import is_plain_jsonl, payload, records_only

CALLS_MADE = 8 + 2  # `traffic` on the first pod, two calls on the second
SIDECAR_LINE = b'{"level": "info", "msg": "config reloaded"}'  # JSON, but no record
KUBECTL_SPELLINGS = {
    "plain": (False, False),
    "timestamps": (False, True),
    "prefix": (True, False),
    "prefix+timestamps": (True, True),
}


@dataclass
class Pod:
    """What one gateway process wrote: records on stdout, its own lines on stderr."""

    name: str
    records: list[bytes]
    log_lines: list[bytes]


@dataclass
class Pods:
    """The two pods' output and the spool folder both wrote the same records to."""

    pods: list[Pod]
    spool: Path
    tmp: Path

    def records(self) -> list[dict[str, Any]]:
        """Every record, parsed."""
        return [json.loads(line) for pod in self.pods for line in pod.records]


@pytest.fixture(scope="module")
def pods(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pods]:
    """Two gateways, each run until a clean stop: one serves `traffic`, the other a session and a stream."""
    tmp = tmp_path_factory.mktemp("pods")
    spool = tmp / "spool"
    upstream = UpstreamThread()
    config = fake_config(upstream.url, logging={"capture": "full", "flush_interval_s": 0.5})
    found = []
    for name, serve in (("open-llm-proxy-7d9f-abcde", traffic), ("open-llm-proxy-7d9f-fghij", _second_pod)):
        gateway = GatewayProcess(tmp, config, {"LOG_SPOOL_DIR": str(spool)}).start()
        serve(gateway.url)
        assert gateway.stop() == 0
        log_lines = gateway.stderr.encode().splitlines()
        found.append(Pod(name, gateway.stdout_lines, log_lines))
    upstream.close()
    yield Pods(found, spool, tmp)


def _second_pod(url: str) -> None:
    assert call(url, session="kube-1", messages=[SYSTEM, QUESTION]) == 200
    assert call(url, stream=True, content="Streamed.") == 200


def a_traceback() -> list[bytes]:
    """A real traceback's lines, as a crash would print them to stderr."""
    try:
        json.loads('{"cut": ')
    except ValueError:
        return traceback.format_exc().encode().splitlines()
    raise AssertionError("unreachable")


def pod_output(pod: Pod) -> list[tuple[str, bytes]]:
    """(container, line) in the order the pod wrote them: start-up lines, records, a crash, stop lines."""
    start = [line for line in pod.log_lines if b"draining" not in line and b"stopped" not in line]
    stop = pod.log_lines[len(start) :]
    # Cut where a value must follow, the hardest place: a reader that ran on would take the next line as it.
    cut = pod.records[1][: pod.records[1].index(b'"model":') + len(b'"model":')]
    lines = [*start, *pod.records[:1], cut, *pod.records[1:], *a_traceback(), *stop]
    return [("gateway", line) for line in lines] + [("reloader", SIDECAR_LINE)]


def snapshot(pods: Pods, prefix: bool, timestamps: bool) -> bytes:
    """One file of every pod's `kubectl logs`, with these flags."""
    clock = datetime(2026, 11, 27, 14, 3, 12, tzinfo=UTC)
    per_pod = []
    for pod in pods.pods:
        lines = []
        for container, line in pod_output(pod):
            clock += timedelta(microseconds=1234)
            stamp = clock.strftime("%Y-%m-%dT%H:%M:%S.%f").encode() + b"123Z " if timestamps else b""
            head = f"[pod/{pod.name}/{container}] ".encode() if prefix else b""
            lines.append(head + stamp + line)
        per_pod.append(lines)
    if prefix:  # `kubectl logs -l ... --prefix` follows the pods at once, so their lines interleave
        merged = [line for group in zip_longest(*per_pod) for line in group if line is not None]
    else:  # one `kubectl logs POD >> file` after another
        merged = [line for lines in per_pod for line in lines]
    return b"\n".join(merged) + b"\n"


def plain(data: bytes) -> bool:
    """Whether the batcher hands `data` to DuckDB unsifted."""
    return is_plain_jsonl(data, count_lines(data))


def expected(pods: Pods, data: bytes) -> Raw:
    """What the file holds, counted independently of the analyzer."""
    lines = sum(1 for line in data.split(b"\n") if line.strip())
    records = pods.records()
    return Raw(records=records, lines=lines, bad=lines - len(records), files=1)


def analyze(*args: str) -> str:
    out = io.StringIO()
    assert main([*args, "--no-progress"], stdout=out) == 0
    return out.getvalue()


def json_report(source: Path | str, *args: str) -> dict[str, Any]:
    return json.loads(analyze(str(source), "--json", "--limit", "0", *args))


@pytest.mark.parametrize("spelling", KUBECTL_SPELLINGS)
def test_a_kubectl_snapshot_counts_every_call_and_says_what_it_skipped(
    pods: Pods, spelling: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prefix, timestamps = KUBECTL_SPELLINGS[spelling]
    data = snapshot(pods, prefix, timestamps)
    path = tmp_path / "pods.log"
    path.write_bytes(data)
    raw = expected(pods, data)
    assert raw.bad > 20 and not plain(data)

    report = json_report(path)
    check_report(report, raw)
    assert report["calls"] == CALLS_MADE
    assert report["read"]["skipped_lines"] == raw.bad
    skipped = f"skipped {raw.bad} line(s) that are not records"
    assert capsys.readouterr().err.startswith(f"warning: {skipped}")

    header = analyze(str(path)).split("\n\n", 1)[0]
    assert f"{len(raw.records)} records" in header and f"{CALLS_MADE} calls" in header
    assert f"warning: {skipped}" in header
    assert f"warning: {skipped}" in capsys.readouterr().err


@pytest.mark.parametrize("with_cut_record", [False, True])
def test_stdout_alone_is_counted_the_same_way(
    pods: Pods, with_cut_record: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [line for pod in pods.pods for _, line in pod_output(pod) if line.startswith(b"{")]
    if not with_cut_record:
        lines = [line for line in lines if line.endswith(b"}")]
    data = b"\n".join(lines) + b"\n"
    path = tmp_path / "stdout.jsonl"
    path.write_bytes(data)
    raw = expected(pods, data)
    # Whole objects go to DuckDB as they are; a record cut short sends the file through the sifting, as
    # DuckDB would take the next line for the cut record's missing value and lose that record as well.
    assert plain(data) is not with_cut_record
    assert raw.bad == (2 if with_cut_record else 1) * len(pods.pods)  # per pod: a sidecar line, a cut record

    report = json_report(path)
    check_report(report, raw)
    assert report["calls"] == CALLS_MADE
    assert f"warning: skipped {raw.bad} line(s)" in capsys.readouterr().err


def test_a_snapshot_and_the_spool_give_the_same_report_and_transcript(pods: Pods, tmp_path: Path) -> None:
    path = tmp_path / "pods.log"
    path.write_bytes(snapshot(pods, prefix=True, timestamps=True))
    from_spool, from_pods = json_report(pods.spool), json_report(path)
    assert from_spool["read"]["records"] == from_pods["read"]["records"] == len(pods.records())
    assert from_spool["read"]["skipped_lines"] == 0
    assert from_pods["sections"] == from_spool["sections"]
    for session in ("agent-1", "kube-1"):
        transcript = analyze(str(path), "--session", session, "--json")
        assert transcript == analyze(str(pods.spool), "--session", session, "--json")
        assert json.loads(transcript)["entries"]


# --- the lines themselves, on values ---------------------------------------------------------------------

RECORD = b'{"type": "request", "request_id": "r1", "model": "m"}'


@pytest.mark.parametrize(
    "line",
    [
        RECORD,
        b"2026-11-27T14:03:12.123456789Z " + RECORD,
        b"2026-11-27T14:03:12Z " + RECORD,
        b"2026-11-27T14:03:12.5+01:00 " + RECORD,
        b"[pod/open-llm-proxy-7d9f-abcde/gateway] " + RECORD,
        b"[pod/open-llm-proxy-7d9f-abcde/gateway] 2026-11-27T14:03:12.123456789Z " + RECORD,
        b"2026-11-27T14:03:12.123456789Z [pod/p/c] " + RECORD + b"\r",
    ],
)
def test_kubectl_prefixes_and_timestamps_are_taken_off(line: bytes) -> None:
    assert payload(line) == RECORD
    assert records_only(line + b"\n") == RECORD + b"\n"


@pytest.mark.parametrize(
    "line",
    [
        b"2026-11-27 14:03:12,123 INFO serving on http://0.0.0.0:8080 (pid 1)",
        b"2026-11-27T14:03:12.123456789Z Traceback (most recent call last):",
        b'[pod/p/c]   File "/app/gateway/cli.py", line 3, in main',
        b"{'type': 'request', 'request_id': 'r1'}",  # a Python repr in a traceback
        RECORD[:30],  # cut short
        b'{"type": "request", "model": "m"}',  # names no call
        b'{"type": "heartbeat", "request_id": "r1"}',  # of no known type
        b'{"type": "response", "request_id": null}',
        b'["request", "r1"]',
        SIDECAR_LINE,
        b"",
    ],
)
def test_lines_that_are_not_records_are_dropped(line: bytes) -> None:
    assert records_only(b"[pod/p/c] " + line + b"\n") == b""
    assert records_only(line) == b""


def test_system_prompt_records_are_records_by_their_hash() -> None:
    prompt = b'{"type": "system_prompt", "sha256": "ab12", "content": "Be brief."}'
    assert (
        records_only(b"2026-11-27T14:03:12.1Z " + prompt + b"\nnoise\n" + RECORD)
        == prompt + b"\n" + RECORD + b"\n"
    )


def test_only_files_whose_every_line_is_an_object_skip_the_sifting() -> None:
    assert plain(RECORD + b"\n" + RECORD + b"\n")
    assert plain(RECORD + b"\n" + RECORD[:20])  # an unterminated last line is left to the batcher
    assert not plain(RECORD + b"\n" + RECORD[:20] + b"\n" + RECORD + b"\n")  # cut after a `:`
    assert not plain(RECORD[:20] + b"\n")
    assert not plain(RECORD + b"\n\n" + RECORD + b"\n")
    assert not plain(b"[pod/p/c] " + RECORD + b"\n")
    assert not plain(RECORD + b"\n2026-11-27 14:03:12,123 INFO stopped\n")
    assert not plain(b"")


def test_duckdb_and_the_sifting_agree_on_what_a_record_is(tmp_path: Path) -> None:
    lines = [
        RECORD,
        b'{"type": "response", "request_id": "r1", "status": 200}',
        b'{"type": "system_prompt", "sha256": "ab12", "content": "Be brief."}',
        b'{"type": "request", "model": "m"}',
        b'{"type": "heartbeat", "request_id": "r2"}',
        b'{"type": "response", "request_id": null}',
        SIDECAR_LINE,
    ]
    as_written = b"\n".join(lines) + b"\n"
    prefixed = b"".join(b"[pod/p/gateway] 2026-11-27T14:03:12.1Z " + line + b"\n" for line in lines)
    assert plain(as_written) and not plain(prefixed)
    for name, data in (("chunk.jsonl", as_written), ("pods.log", prefixed)):
        (tmp_path / name).write_bytes(data)
        read = json_report(tmp_path / name)["read"]
        assert (read["lines"], read["records"], read["skipped_lines"]) == (7, 3, 4), name
