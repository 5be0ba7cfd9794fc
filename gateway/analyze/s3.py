"""Reading chunks from `s3://bucket/prefix`, configured from the environment the way the gateway is.

Endpoint: AWS_S3_ENDPOINT_URL, else AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL (else AWS itself);
region: AWS_REGION, else AWS_DEFAULT_REGION; credentials: botocore's usual chain.
Listing walks the prefix one level at a time so that date folders outside the window are never listed.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from gateway.analyze.sources import DATE_FOLDER, Window

FETCH_THREADS = 16
MAX_DEPTH = 4  # non-date folders (like one prefix per namespace) are walked this deep


@dataclass(frozen=True)
class S3Object:
    """One chunk in a bucket."""

    bucket: str
    key: str
    size: int

    @property
    def url(self) -> str:
        """The object as an `s3://` URL."""
        return f"s3://{self.bucket}/{self.key}"


def split_url(url: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` as (bucket, "some/prefix/"); the prefix is "" for a whole bucket."""
    rest = url.removeprefix("s3://")
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {url!r}")
    if prefix and not prefix.endswith("/") and not prefix.endswith(".jsonl"):
        prefix += "/"
    return bucket, prefix


def client_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """Keyword arguments for botocore's `create_client("s3", ...)` from the environment."""
    from botocore.config import Config

    endpoint = env.get("AWS_S3_ENDPOINT_URL") or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
    # Path-style addressing is what S3-compatible stores (Ceph, MinIO) behind a custom endpoint expect.
    style = "path" if endpoint else "auto"
    config = Config(
        max_pool_connections=FETCH_THREADS,
        retries={"max_attempts": 5, "mode": "standard"},
        s3={"addressing_style": style},
    )
    return {"endpoint_url": endpoint or None, "region_name": region, "config": config}


def make_client(env: Mapping[str, str] | None = None) -> Any:
    """A botocore S3 client; it is thread-safe, so the fetch threads share it."""
    import botocore.session

    return botocore.session.get_session().create_client("s3", **client_settings(env or os.environ))


def list_objects(client: Any, url: str, window: Window) -> list[S3Object]:
    """The `.jsonl` objects under `url`, skipping date folders outside `window`."""
    bucket, prefix = split_url(url)
    if prefix.endswith(".jsonl"):
        head = client.head_object(Bucket=bucket, Key=prefix)
        return [S3Object(bucket, prefix, int(head["ContentLength"]))]
    found: list[S3Object] = []
    _list_level(client, bucket, prefix, window, found, 0)
    return found


def _list_level(
    client: Any, bucket: str, prefix: str, window: Window, found: list[S3Object], depth: int
) -> None:
    folders: list[str] = []
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
        folders += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
        found += [
            S3Object(bucket, o["Key"], int(o["Size"]))
            for o in page.get("Contents", [])
            if o["Key"].endswith(".jsonl")
        ]
    for folder in sorted(folders):
        name = folder[len(prefix) :].rstrip("/")
        if DATE_FOLDER.match(name):
            if _covers(window, name):
                _list_level(client, bucket, folder, window, found, depth + 1)
        elif depth < MAX_DEPTH:
            _list_level(client, bucket, folder, window, found, depth + 1)


def _covers(window: Window, name: str) -> bool:
    try:
        return window.covers_day(name)
    except ValueError:
        return True


def fetch_objects(client: Any, objects: list[S3Object]) -> Iterator[tuple[S3Object, bytes | OSError]]:
    """Each object's bytes (or why it could not be read), fetched by a pool of threads.

    At most a few dozen objects are held in memory at once, however many the listing found.
    """
    with ThreadPoolExecutor(FETCH_THREADS) as pool:
        pending: deque[tuple[S3Object, Future[bytes | OSError]]] = deque()
        for obj in objects:
            pending.append((obj, pool.submit(_get, client, obj)))
            if len(pending) >= FETCH_THREADS * 2:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()


def _get(client: Any, obj: S3Object) -> bytes | OSError:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        body = client.get_object(Bucket=obj.bucket, Key=obj.key)["Body"]
        try:
            return bytes(body.read())
        finally:
            body.close()
    except (BotoCoreError, ClientError) as exc:
        return OSError(str(exc))
