"""Action Cache entries as S3 objects (one per entry), with optional max_age expiry.

An entry older than max_age (by the object's LastModified) reads as absent
and is deleted; a bucket lifecycle rule can do the same server-side.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from botocore.exceptions import ClientError

from granary.actioncache.keys import decode_key, encode_key
from granary.actioncache.store import ActionCacheStore
from granary.errors import Unavailable
from granary.s3_client import S3Connection, is_not_found


class S3ActionCacheStore(ActionCacheStore):
    name = "s3"

    def __init__(self, conn: S3Connection, *, prefix: str = "ac/", max_age: int = 0):
        self.conn = conn
        self.bucket = conn.bucket
        self.prefix = prefix
        self.max_age = max_age

    def _key(self, key: str) -> str:
        return self.prefix + encode_key(key)

    async def get(self, key: str) -> bytes | None:
        s3 = await self.conn.client()
        try:
            resp = await s3.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as e:
            if is_not_found(e):
                return None
            raise Unavailable(f"S3 action cache read of {key!r} failed: {e}") from None
        async with resp["Body"] as body:
            data = await body.read()
        if self.max_age and time.time() - resp["LastModified"].timestamp() > self.max_age:
            await self.delete(key)
            return None
        return data

    async def put(self, key: str, value: bytes) -> None:
        s3 = await self.conn.client()
        try:
            await s3.put_object(Bucket=self.bucket, Key=self._key(key), Body=value)
        except ClientError as e:
            raise Unavailable(f"S3 action cache write of {key!r} failed: {e}") from None

    async def put_if_absent(self, key: str, value: bytes) -> bytes | None:
        """A conditional PUT (If-None-Match: *): of concurrent writers exactly one creates the entry."""
        s3 = await self.conn.client()
        for _ in range(3):
            try:
                await s3.put_object(Bucket=self.bucket, Key=self._key(key), Body=value, IfNoneMatch="*")
                return None
            except ClientError as e:
                err = e.response.get("Error", {}).get("Code", "")
                status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if err == "NotImplemented" or status == 501:  # a store without conditional writes
                    return await super().put_if_absent(key, value)
                if status not in (409, 412) and err not in ("PreconditionFailed", "ConditionalRequestConflict"):
                    raise Unavailable(f"S3 action cache write of {key!r} failed: {e}") from None
            existing = await self.get(key)  # an expired entry is deleted here and counts as absent
            if existing is not None:
                return existing
        raise Unavailable(f"S3 action cache entry {key!r} kept changing while it was written once")

    async def delete(self, key: str) -> None:
        s3 = await self.conn.client()
        await s3.delete_object(Bucket=self.bucket, Key=self._key(key))

    async def iterate(self) -> AsyncIterator[tuple[str, bytes, float]]:
        s3 = await self.conn.client()
        paginator = s3.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for obj in page.get("Contents", ()):
                key = decode_key(obj["Key"][len(self.prefix):])
                value = await self.get(key)
                if value is not None:
                    yield key, value, obj["LastModified"].timestamp()

    async def close(self) -> None:
        await self.conn.close()
