"""A CAS in Redis: one string per blob, streamed in with APPEND, out with GETRANGE.

A streamed write goes to a temporary key that expires on its own if the
writer dies, and is renamed to the blob's key only on commit, so no partial
blob is ever readable. Should the temporary key expire (or be evicted) while
the write goes on, an APPEND would start a new, shorter value: every APPEND's
returned length is checked against what was sent, and the commit is a script
that renames only a value of exactly the blob's size, so such a write fails
(UNAVAILABLE; the client retries) instead of committing a truncated blob. Batches use pipelines (STRLEN/MGET/SET in bulk).
Redis strings are capped at 512 MiB; `max_blob_size` (default 64 MiB) makes
larger blobs fail fast with RESOURCE_EXHAUSTED, so put a `sizesplit` or
`tiered` store in front to route them elsewhere.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Sequence

import redis.asyncio as aioredis

from granary.cas.blobstore import READ_CHUNK, BlobInfo, BlobStore, BlobWriter
from granary.cas.disk import digest_of_key
from granary.cas.verify import keep_verified, verified_read
from granary.digest import BlobDigest
from granary.errors import BlobNotFound, ResourceExhausted, Unavailable
from granary.redis_client import LazyRedis

_PIPELINE_CHUNK = 5000
_TMP = "~tmp:"
_TMP_TTL = 3600  # seconds an abandoned streamed write survives
# rename the temporary key into place only if it holds exactly the blob (KEYS: tmp, final;
# ARGV: size, ttl or 0); a shorter value (the key expired and APPEND began anew) is deleted
_COMMIT = """
if redis.call('STRLEN', KEYS[1]) ~= tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1])
  return 0
end
redis.call('RENAME', KEYS[1], KEYS[2])
if ARGV[2] ~= '0' then redis.call('EXPIRE', KEYS[2], ARGV[2]) else redis.call('PERSIST', KEYS[2]) end
return 1
"""


class RedisBlobStore(BlobStore):
    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "granary:cas:",
        max_blob_size: int = 64 << 20,
        ttl: int = 0,
        max_connections: int = 64,
    ):
        self._conn = LazyRedis(url, max_connections)
        self.prefix = prefix
        self.max_blob_size = max_blob_size
        self.ttl = ttl or None

    @property
    def redis(self) -> aioredis.Redis:
        return self._conn.client

    def _key(self, d: BlobDigest) -> str:
        return self.prefix + d.key

    def check_size(self, d: BlobDigest) -> None:
        if d.size > self.max_blob_size:
            raise ResourceExhausted(
                f"blob {d} ({d.size} bytes) is larger than the redis store's max_blob_size"
                f" ({self.max_blob_size} bytes)"
            )

    async def find_missing(self, digests: Sequence[BlobDigest]) -> list[BlobDigest]:
        missing: list[BlobDigest] = []
        for start in range(0, len(digests), _PIPELINE_CHUNK):
            part = digests[start : start + _PIPELINE_CHUNK]
            pipe = self.redis.pipeline(transaction=False)
            for d in part:
                pipe.strlen(self._key(d))
                if self.ttl:
                    pipe.expire(self._key(d), self.ttl)
            replies = await pipe.execute()
            lengths = replies[:: 2 if self.ttl else 1]
            missing.extend(d for d, n in zip(part, lengths) if not d.size or n != d.size)
        return missing

    async def get_many(self, digests: Sequence[BlobDigest]) -> dict[BlobDigest, bytes]:
        out: dict[BlobDigest, bytes] = {}
        for start in range(0, len(digests), _PIPELINE_CHUNK):
            part = digests[start : start + _PIPELINE_CHUNK]
            values = await self.redis.mget([self._key(d) for d in part])
            for d, v in zip(part, values):
                if v is not None and len(v) == d.size:
                    out[d] = v
        return keep_verified(self.name, out)

    async def put_many(self, blobs: Sequence[tuple[BlobDigest, bytes]]) -> None:
        for d, _ in blobs:
            self.check_size(d)
        pipe = self.redis.pipeline(transaction=False)
        queued = 0
        for d, data in blobs:
            pipe.set(self._key(d), data, ex=self.ttl)
            queued += len(data)
            if queued > 16 << 20:
                await pipe.execute()
                pipe = self.redis.pipeline(transaction=False)
                queued = 0
        await pipe.execute()

    async def delete(self, digests: Sequence[BlobDigest]) -> None:
        for start in range(0, len(digests), _PIPELINE_CHUNK):
            part = digests[start : start + _PIPELINE_CHUNK]
            if part:
                await self.redis.delete(*[self._key(d) for d in part])

    async def read(self, digest: BlobDigest, offset: int = 0, limit: int = 0) -> AsyncIterator[bytes]:
        """Verified before the first byte (granary.cas.verify)."""
        return await verified_read(self.name, self.read_unverified, digest, offset, limit)

    async def read_unverified(self, digest: BlobDigest, offset: int = 0, limit: int = 0) -> AsyncIterator[bytes]:
        """The stored bytes as they are (for a caller that verifies them itself)."""
        key = self._key(digest)
        if not digest.size or await self.redis.strlen(key) != digest.size:
            raise BlobNotFound(digest)
        end = digest.size if limit <= 0 else min(digest.size, offset + limit)
        return self._ranges(digest, key, offset, end)

    async def _ranges(self, digest: BlobDigest, key: str, offset: int, end: int) -> AsyncIterator[bytes]:
        for pos in range(offset, end, READ_CHUNK):
            stop = min(end, pos + READ_CHUNK)
            chunk = await self.redis.getrange(key, pos, stop - 1)
            if len(chunk) != stop - pos:
                raise BlobNotFound(digest)  # deleted or evicted while streaming
            yield chunk

    async def open_writer(self, digest: BlobDigest) -> BlobWriter:
        self.check_size(digest)
        return _RedisWriter(self, digest)

    async def iterate(self) -> AsyncIterator[BlobInfo]:
        now = time.time()
        batch: list[bytes] = []
        async for key in self.redis.scan_iter(match=self.prefix + "*", count=1000):
            if key[len(self.prefix):].startswith(_TMP.encode()):
                continue
            batch.append(key)
            if len(batch) >= 500:
                for info in await self._describe(batch, now):
                    yield info
                batch = []
        for info in await self._describe(batch, now):
            yield info

    async def _describe(self, keys: list[bytes], now: float) -> list[BlobInfo]:
        if not keys:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for k in keys:
            pipe.strlen(k)
            pipe.object("idletime", k)
        replies = await pipe.execute(raise_on_error=False)
        out = []
        for i, k in enumerate(keys):
            size, idle = replies[2 * i], replies[2 * i + 1]
            if isinstance(size, int) and size:
                idle = idle if isinstance(idle, int) else 0
                out.append(BlobInfo(digest_of_key(k[len(self.prefix):].decode(), size), now - idle))
        return out

    async def close(self) -> None:
        await self._conn.close()


class _RedisWriter(BlobWriter):
    """Appends to a temporary key in ~1 MiB steps; commit renames it into place."""

    def __init__(self, store: RedisBlobStore, digest: BlobDigest):
        self._store = store
        self._digest = digest
        self._tmp = f"{store.prefix}{_TMP}{uuid.uuid4().hex}"
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._started = False
        self._sent = 0  # bytes the temporary key must hold

    async def write(self, chunk: bytes) -> None:
        self._buffer.append(chunk)
        self._buffered += len(chunk)
        if self._buffered >= READ_CHUNK:
            await self._flush()

    async def _flush(self) -> None:
        if not self._buffer:
            return
        data = b"".join(self._buffer)
        self._buffer, self._buffered = [], 0
        r = self._store.redis
        self._sent += len(data)
        if self._started:
            length = await r.append(self._tmp, data)
            if length != self._sent:
                await r.delete(self._tmp)
                raise self._lost()
        else:
            await r.set(self._tmp, data, ex=_TMP_TTL)
            self._started = True

    def _lost(self) -> Unavailable:
        return Unavailable(
            f"redis lost the temporary key of the upload of {self._digest} (expired after {_TMP_TTL} s,"
            " or evicted); upload it again"
        )

    async def commit(self) -> None:
        store = self._store
        if not self._started:
            data = b"".join(self._buffer)
            self._buffer = []
            await store.put_many([(self._digest, data)])
            return
        await self._flush()
        done = await store.redis.eval(
            _COMMIT, 2, self._tmp, store._key(self._digest), self._digest.size, store.ttl or 0
        )
        self._started = False
        if not done:
            raise self._lost()

    async def abort(self) -> None:
        self._buffer = []
        if self._started:
            await self._store.redis.delete(self._tmp)
            self._started = False
