"""A CAS in any S3-compatible object store (aiobotocore).

One object per blob under `prefix`. Existence checks are HEAD requests run
concurrently under a semaphore; reads are ranged GETs streamed in 1 MiB
chunks; large writes are multipart uploads of `part_size` parts, so nothing
is visible before CompleteMultipartUpload and a failed or aborted write
leaves nothing readable (the upload is aborted).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

from botocore.exceptions import ClientError

from granary.cas.blobstore import READ_CHUNK, BlobInfo, BlobStore, BlobWriter
from granary.cas.disk import digest_of_key
from granary.cas.verify import keep_verified, verified_read
from granary.digest import BlobDigest
from granary.errors import BlobNotFound, Unavailable
from granary.s3_client import S3Connection, is_not_found

T = TypeVar("T")
_MIN_PART = 5 << 20  # S3's smallest allowed part (but the last)


class S3BlobStore(BlobStore):
    name = "s3"

    def __init__(
        self,
        conn: S3Connection,
        *,
        prefix: str = "cas/",
        part_size: int = 8 << 20,
        concurrency: int = 32,
    ):
        self.conn = conn
        self.bucket = conn.bucket
        self.prefix = prefix
        self.part_size = max(part_size, _MIN_PART)
        self.concurrency = concurrency
        self._semaphore: asyncio.Semaphore | None = None

    def _key(self, d: BlobDigest) -> str:
        return self.prefix + d.key

    async def _bounded(self, fn: Callable[[], Awaitable[T]]) -> T:
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.concurrency)
        async with self._semaphore:
            return await fn()

    async def _size(self, d: BlobDigest) -> int | None:
        s3 = await self.conn.client()
        try:
            head = await s3.head_object(Bucket=self.bucket, Key=self._key(d))
        except ClientError as e:
            if is_not_found(e):
                return None
            raise _unavailable(e, d) from None
        return int(head["ContentLength"])

    async def find_missing(self, digests: Sequence[BlobDigest]) -> list[BlobDigest]:
        sizes = await asyncio.gather(*(self._bounded(lambda d=d: self._size(d)) for d in digests))
        return [d for d, size in zip(digests, sizes) if not d.size or size != d.size]

    async def _get(self, d: BlobDigest) -> bytes | None:
        s3 = await self.conn.client()
        try:
            resp = await s3.get_object(Bucket=self.bucket, Key=self._key(d))
        except ClientError as e:
            if is_not_found(e):
                return None
            raise _unavailable(e, d) from None
        async with resp["Body"] as body:
            data = await body.read()
        return data if len(data) == d.size else None

    async def get_many(self, digests: Sequence[BlobDigest]) -> dict[BlobDigest, bytes]:
        values = await asyncio.gather(*(self._bounded(lambda d=d: self._get(d)) for d in digests))
        return keep_verified(self.name, {d: v for d, v in zip(digests, values) if v is not None})

    async def _put(self, d: BlobDigest, data: bytes) -> None:
        s3 = await self.conn.client()
        try:
            await s3.put_object(Bucket=self.bucket, Key=self._key(d), Body=data)
        except ClientError as e:
            raise _unavailable(e, d) from None

    async def put_many(self, blobs: Sequence[tuple[BlobDigest, bytes]]) -> None:
        await asyncio.gather(*(self._bounded(lambda d=d, b=b: self._put(d, b)) for d, b in blobs))

    async def delete(self, digests: Sequence[BlobDigest]) -> None:
        s3 = await self.conn.client()
        for start in range(0, len(digests), 1000):
            objects = [{"Key": self._key(d)} for d in digests[start : start + 1000]]
            if objects:
                await s3.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})

    async def read(self, digest: BlobDigest, offset: int = 0, limit: int = 0) -> AsyncIterator[bytes]:
        """Verified before the first byte (granary.cas.verify): a ranged read fetches the whole object."""
        return await verified_read(self.name, self.read_unverified, digest, offset, limit)

    async def read_unverified(self, digest: BlobDigest, offset: int = 0, limit: int = 0) -> AsyncIterator[bytes]:
        """The stored bytes as they are (for a caller that verifies them itself)."""
        end = digest.size if limit <= 0 else min(digest.size, offset + limit)
        if not digest.size:
            raise BlobNotFound(digest)
        if offset >= end:
            if await self._size(digest) != digest.size:
                raise BlobNotFound(digest)
            return _nothing()
        s3 = await self.conn.client()
        try:
            resp = await s3.get_object(Bucket=self.bucket, Key=self._key(digest), Range=f"bytes={offset}-{end - 1}")
        except ClientError as e:
            if is_not_found(e) or e.response.get("Error", {}).get("Code") == "InvalidRange":
                raise BlobNotFound(digest) from None
            raise _unavailable(e, digest) from None
        total = str(resp.get("ContentRange", "")).rpartition("/")[2]
        if total.isdigit() and int(total) != digest.size:
            resp["Body"].close()
            raise BlobNotFound(digest)
        return _stream(resp["Body"])

    async def open_writer(self, digest: BlobDigest) -> BlobWriter:
        return _MultipartWriter(self, digest)

    async def iterate(self) -> AsyncIterator[BlobInfo]:
        s3 = await self.conn.client()
        paginator = s3.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for obj in page.get("Contents", ()):
                key = obj["Key"][len(self.prefix):]
                if "/" in key or not obj["Size"]:
                    continue
                yield BlobInfo(digest_of_key(key, int(obj["Size"])), obj["LastModified"].timestamp())

    async def close(self) -> None:
        await self.conn.close()


class _MultipartWriter(BlobWriter):
    """Holds at most one part in memory; one PUT if the blob fits in a part."""

    def __init__(self, store: S3BlobStore, digest: BlobDigest):
        self._store = store
        self._digest = digest
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []

    async def write(self, chunk: bytes) -> None:
        self._buffer += chunk
        size = self._store.part_size
        while len(self._buffer) >= size:
            part = bytes(self._buffer[:size])
            del self._buffer[:size]
            await self._upload_part(part)

    async def _upload_part(self, data: bytes) -> None:
        store = self._store
        s3 = await store.conn.client()
        key = store._key(self._digest)
        try:
            if self._upload_id is None:
                created = await s3.create_multipart_upload(Bucket=store.bucket, Key=key)
                self._upload_id = created["UploadId"]
            number = len(self._parts) + 1
            resp = await s3.upload_part(
                Bucket=store.bucket, Key=key, UploadId=self._upload_id, PartNumber=number, Body=data
            )
        except ClientError as e:
            await self.abort()
            raise _unavailable(e, self._digest) from None
        self._parts.append({"ETag": resp["ETag"], "PartNumber": number})

    async def commit(self) -> None:
        store = self._store
        if self._upload_id is None:
            data, self._buffer = bytes(self._buffer), bytearray()
            await store._put(self._digest, data)
            return
        if self._buffer:
            data, self._buffer = bytes(self._buffer), bytearray()
            await self._upload_part(data)
        s3 = await store.conn.client()
        try:
            await s3.complete_multipart_upload(
                Bucket=store.bucket,
                Key=store._key(self._digest),
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
            )
        except ClientError as e:
            await self.abort()
            raise _unavailable(e, self._digest) from None
        self._upload_id = None

    async def abort(self) -> None:
        self._buffer = bytearray()
        if self._upload_id is not None:
            upload_id, self._upload_id = self._upload_id, None
            s3 = await self._store.conn.client()
            try:
                await s3.abort_multipart_upload(
                    Bucket=self._store.bucket, Key=self._store._key(self._digest), UploadId=upload_id
                )
            except ClientError:
                pass  # the bucket's lifecycle rule for stale uploads cleans up after us


def _unavailable(e: ClientError, d: BlobDigest) -> Unavailable:
    return Unavailable(f"S3 request for blob {d} failed: {e}")


async def _stream(body: Any) -> AsyncIterator[bytes]:
    try:
        while True:
            chunk = await body.read(READ_CHUNK)
            if not chunk:
                return
            yield chunk
    finally:
        body.close()


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover
