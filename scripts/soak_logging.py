"""Soak the log path with S3 down: memory must stay flat (records go to disk, not RAM) and none be lost.

Starts the fake upstream and the gateway (full capture, `LOG_BUCKET` set but its S3 endpoint refusing
connections), drives a steady request rate over loopback for a bounded time, samples the gateway's RSS,
then counts the records in the spool folder request by request.

    python scripts/soak_logging.py --minutes 10 --rate 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml
from bench.processes import free_port

ROOT = Path(__file__).resolve().parents[1]
PROXY_KEY = "soak-proxy-key"


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def wait_ready(url: str, deadline_s: float = 30.0) -> None:
    async with aiohttp.ClientSession() as session:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            try:
                async with session.get(url + "/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise TimeoutError(url)


async def drive(
    url: str, rate: float, seconds: float, pid: int, sample_s: float
) -> tuple[dict[str, int], list]:
    """Send `rate` calls a second (alternating stream and not) for `seconds`; sample RSS as it goes."""
    sent: dict[str, int] = {}
    samples: list[tuple[float, int]] = []
    headers = {"Authorization": f"Bearer {PROXY_KEY}"}
    content = "A steady answer of a few dozen words. " * 8
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as session:

        async def one(i: int) -> None:
            body = {
                "model": "fake-model",
                "stream": i % 2 == 0,
                "user": f"soak-{i % 50}",
                "fake": {"content": content},
                "messages": [{"role": "system", "content": "soak"}, {"role": "user", "content": f"q{i}"}],
            }
            async with session.post(url + "/v1/chat/completions", json=body, headers=headers) as response:
                await response.read()
                sent[response.headers["X-Request-Id"]] = response.status

        start = time.monotonic()
        tasks: set[asyncio.Task[None]] = set()
        next_sample = 0.0
        for i in range(int(rate * seconds)):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            if time.monotonic() - start >= next_sample:
                samples.append((round(time.monotonic() - start), rss_kb(pid)))
                next_sample += sample_s
        await asyncio.gather(*tasks, return_exceptions=True)
        samples.append((round(time.monotonic() - start), rss_kb(pid)))
    return sent, samples


def count_records(spool: Path, sent: dict[str, int]) -> dict[str, int]:
    kinds: dict[tuple[str, str], int] = {}
    for path in spool.glob("*/*.jsonl*"):
        for line in path.read_bytes().splitlines():
            record = json.loads(line)
            if record.get("request_id"):
                key = (record["request_id"], record["type"])
                kinds[key] = kinds.get(key, 0) + 1
    both = sum(1 for rid in sent if kinds.get((rid, "request")) == 1 and kinds.get((rid, "response")) == 1)
    return {"sent": len(sent), "with_both_records": both, "missing": len(sent) - both}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=100.0, help="calls per second")
    parser.add_argument("--sample-s", type=float, default=30.0, help="seconds between RSS samples")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="olp-soak-"))
    up_port, gw_port, s3_port = (
        free_port(),
        free_port(),
        free_port(),
    )  # nothing listens on s3_port: S3 is down
    config = {
        "default_provider": "fake",
        "providers": {
            "fake": {
                "endpoint": f"http://127.0.0.1:{up_port}/v1/chat/completions",
                "api_key_env": "FAKE_KEY",
                "models": ["fake-model"],
            }
        },
        "logging": {"capture": "full", "flush_interval_s": 30, "stdout": False},
    }
    (tmp / "config.yaml").write_text(yaml.safe_dump(config))
    env = {
        **os.environ,
        "PROXY_KEY": PROXY_KEY,
        "FAKE_KEY": "k",
        "LOG_SPOOL_DIR": str(tmp / "spool"),
        "LOG_BUCKET": "soak",
        "AWS_S3_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}",
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "x",
    }
    upstream = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "fake_upstream.py"), "--port", str(up_port)]
    )
    gateway = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--config",
            str(tmp / "config.yaml"),
            "--host",
            "127.0.0.1",
            "--port",
            str(gw_port),
        ],
        env=env,
        cwd=ROOT,
        stderr=(tmp / "gateway.log").open("wb"),
    )
    try:
        url = f"http://127.0.0.1:{gw_port}"
        asyncio.run(wait_ready(url))
        sent, samples = asyncio.run(drive(url, args.rate, args.minutes * 60, gateway.pid, args.sample_s))
        health = json.loads(subprocess.run(["curl", "-s", url + "/health"], capture_output=True).stdout)[
            "logging"
        ]
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(120)
        upstream.terminate()
    counts = count_records(tmp / "spool", sent)
    statuses = {s: list(sent.values()).count(s) for s in sorted(set(sent.values()))}
    rss = [kb for _, kb in samples]
    later = rss[len(rss) // 2 :]
    print(f"soak: {args.minutes:g} min at {args.rate:g} calls/s, S3 down; spool {tmp / 'spool'}")
    print("t(s)   RSS MB")
    for t, kb in samples:
        print(f"{t:5d}  {kb / 1024:7.1f}")
    print(
        f"RSS first {rss[0] / 1024:.1f} MB, median of second half {statistics.median(later) / 1024:.1f} MB, "
        f"max {max(rss) / 1024:.1f} MB; growth over the second half {(later[-1] - later[0]) / 1024:+.1f} MB"
    )
    print(f"records: {counts}; statuses: {statuses}")
    print(f"health while down: chunks_pending={health['chunks_pending']} last_error={health['last_error']!r}")
    return 0 if counts["missing"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
