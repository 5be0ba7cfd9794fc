"""Shipping closed spool chunks to the namespace's bucket with aiobotocore.

A chunk is deleted locally only after S3 confirmed its upload. Workers sharing one spool folder never
upload the same chunk twice at once: each takes the chunk's `flock` first and skips it when it is taken.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.logs.spool import Spool, try_lock

ENDPOINT_VARS = ("AWS_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


@dataclass(frozen=True)
class S3Target:
    bucket: str
    prefix: str
    endpoint_url: str | None
    region: str

    @classmethod
    def from_env(cls, env: Mapping[str, str], prefix: str = "") -> S3Target | None:
        """The bucket from LOG_BUCKET (None when unset); endpoint and region the standard AWS way."""
        bucket = env.get("LOG_BUCKET", "").strip()
        if not bucket:
            return None
        if bucket.startswith("s3://"):  # accept s3://bucket/prefix as well
            bucket, _, path = bucket[5:].partition("/")
            prefix = prefix or path
        endpoint = next((env[v] for v in ENDPOINT_VARS if env.get(v)), None)
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
        return cls(bucket, (env.get("LOG_PREFIX") or prefix).strip("/"), endpoint, region)

    def key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def describe(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"s3://{self.bucket}/{self.prefix}{where}"


class Uploader:
    """One aiobotocore S3 client, opened with `start()` and closed with `close()`."""

    def __init__(self, target: S3Target, spool: Spool) -> None:
        self.target = target
        self.spool = spool
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None
        self.uploaded_chunks = 0
        self.uploaded_bytes = 0

    async def start(self) -> bool:
        """Open the client; False when no AWS credentials can be found."""
        from aiobotocore.config import AioConfig
        from aiobotocore.session import AioSession

        session = AioSession()
        if await session.get_credentials() is None:
            return False
        config = AioConfig(
            retries={"max_attempts": 2, "mode": "standard"},
            connect_timeout=10,
            read_timeout=60,
            # Ceph, MinIO and moto serve buckets by path, not by virtual host.
            s3={"addressing_style": "path"} if self.target.endpoint_url else None,
        )
        self._client = await self._stack.enter_async_context(
            session.create_client(
                "s3", region_name=self.target.region, endpoint_url=self.target.endpoint_url, config=config
            )
        )
        return True

    async def close(self) -> None:
        await self._stack.aclose()

    async def upload_pending(self) -> int:
        """Upload every closed chunk not taken by another worker; return the records' line count shipped."""
        lines = 0
        for path in self.spool.closed_chunks():
            lines += await self._upload(path)
        return lines

    async def _upload(self, path: Path) -> int:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return 0  # a sibling worker shipped it meanwhile
        try:
            if not try_lock(fd) or not os.path.exists(path):  # noqa: ASYNC240 (a stat, never slow)
                return 0
            data = _read_all(fd)
            relative = path.relative_to(self.spool.root).as_posix()
            await self._client.put_object(
                Bucket=self.target.bucket,
                Key=self.target.key(relative),
                Body=data,
                ContentType="application/x-ndjson",
            )
            with contextlib.suppress(FileNotFoundError):  # removed by hand meanwhile: shipped all the same
                os.unlink(path)  # only now: S3 has confirmed the object
            self.spool.forget(len(data))
            self.uploaded_chunks += 1
            self.uploaded_bytes += len(data)
            return data.count(b"\n")
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _read_all(fd: int) -> bytes:
    parts = []
    while chunk := os.read(fd, 1 << 20):
        parts.append(chunk)
    return b"".join(parts)
