"""A real S3 API on loopback: moto's server mode, one fresh bucket per instance."""

from __future__ import annotations

import uuid
from typing import Any

import boto3
import orjson
from gateway_process import free_port
from moto.server import ThreadedMotoServer


class S3:
    """A moto S3 server on loopback; `start()` again after `stop()` brings it back on the same port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server: ThreadedMotoServer | None = None
        # moto keeps one in-memory backend per process: a bucket per test keeps each test's records apart
        self.bucket = f"namespace-logs-{uuid.uuid4().hex[:12]}"

    def start(self) -> S3:
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        self.client().create_bucket(Bucket=self.bucket)
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def env(self) -> dict[str, str]:
        return {
            "LOG_BUCKET": self.bucket,
            "AWS_S3_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
        }

    def objects(self) -> dict[str, bytes]:
        client = self.client()
        keys = [
            o["Key"]
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
            for o in page.get("Contents", [])
        ]
        return {k: client.get_object(Bucket=self.bucket, Key=k)["Body"].read() for k in keys}

    def records(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for body in self.objects().values() for line in body.splitlines()]
