"""An aiobotocore S3 client opened lazily on the running event loop.

Shared by the S3 CAS and the S3 Action Cache. Credentials come from the
config when given, otherwise from the usual AWS environment (variables,
~/.aws, instance metadata), as botocore finds them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import ClientError


@dataclass
class S3Connection:
    bucket: str
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    max_connections: int = 64
    create_bucket: bool = False
    addressing_style: str = "auto"  # auto, path or virtual
    _client: Any = field(default=None, init=False, repr=False)
    _context: Any = field(default=None, init=False, repr=False)
    _lock: asyncio.Lock | None = field(default=None, init=False, repr=False)

    async def client(self) -> Any:
        if self._client is not None:
            return self._client
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._client is None:
                context = get_session().create_client(
                    "s3",
                    region_name=self.region,
                    endpoint_url=self.endpoint_url,
                    aws_access_key_id=self.access_key_id,
                    aws_secret_access_key=self.secret_access_key,
                    aws_session_token=self.session_token,
                    config=AioConfig(
                        max_pool_connections=self.max_connections,
                        s3={"addressing_style": self.addressing_style},
                        retries={"max_attempts": 5, "mode": "standard"},
                    ),
                )
                client = await context.__aenter__()
                if self.create_bucket:
                    await _ensure_bucket(client, self.bucket, self.region)
                self._context, self._client = context, client
        return self._client

    async def close(self) -> None:
        if self._context is not None:
            context, self._context, self._client = self._context, None, None
            await context.__aexit__(None, None, None)


async def _ensure_bucket(client: Any, bucket: str, region: str | None) -> None:
    try:
        await client.head_bucket(Bucket=bucket)
        return
    except ClientError:
        pass
    kwargs: dict[str, Any] = {"Bucket": bucket}
    if region and region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        await client.create_bucket(**kwargs)
    except ClientError as e:
        if error_code(e) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise


def error_code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def is_not_found(e: ClientError) -> bool:
    return error_code(e) in ("404", "NoSuchKey", "NotFound", "NoSuchUpload")
