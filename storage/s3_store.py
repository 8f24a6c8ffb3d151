"""Recordings in any S3-compatible object store (AWS S3, MinIO, Cloudflare R2, …) via boto3.

boto3 is blocking: `Recordings` calls these methods from worker threads. Its errors become
`StoreError` here, the only place that sees them. The client is thread-safe once built.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from storage.recordings import StoreError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = ["S3Store"]

_CHUNK = 64 * 1024


class S3Store:
    name = "s3"

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        prefix: str = "",
        timeout_seconds: float = 30.0,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        config = Config(
            connect_timeout=timeout_seconds,
            read_timeout=timeout_seconds,
            retries={"max_attempts": 3, "mode": "standard"},
        )
        self.client: S3Client = boto3.client(
            "s3",
            endpoint_url=endpoint_url or None,
            region_name=region or None,
            aws_access_key_id=access_key_id or None,
            aws_secret_access_key=secret_access_key or None,
            config=config,
        )

    def _key(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def put(self, source: Path, key: str) -> None:
        try:
            self.client.upload_file(
                str(source), self.bucket, self._key(key), ExtraArgs={"ContentType": "audio/wav"}
            )
        except (BotoCoreError, ClientError, OSError) as exc:
            raise StoreError(f"uploading recording {key} failed: {exc}") from exc

    def size(self, key: str) -> int:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"]
        except (BotoCoreError, ClientError) as exc:
            raise StoreError(f"recording {key} not found: {exc}") from exc

    def read(self, key: str, start: int, end: int) -> Iterator[bytes]:
        if end <= start:
            return
        try:
            body = self.client.get_object(
                Bucket=self.bucket, Key=self._key(key), Range=f"bytes={start}-{end - 1}"
            )["Body"]
            try:
                yield from body.iter_chunks(_CHUNK)
            finally:
                body.close()
        except (BotoCoreError, ClientError) as exc:
            raise StoreError(f"reading recording {key} failed: {exc}") from exc

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (BotoCoreError, ClientError) as exc:
            raise StoreError(f"deleting recording {key} failed: {exc}") from exc
