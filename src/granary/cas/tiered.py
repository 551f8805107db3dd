"""Cache + fallback: a fast store in front of a larger or shared one.

Writes go to both (the fallback must succeed; a cache that refuses a blob,
e.g. one past Redis's max_blob_size, is skipped). Reads try the cache and
fill it from the fallback. FindMissingBlobs asks the cache, then asks the
fallback only about what the cache lacks.

With `defer_fallback_writes` a write returns once the cache has the blob and
a bounded background queue (`FallbackQueue`) copies it to the fallback.

Bytes from a fallback Granary does not own (Redis, S3, a remote) are verified
before they are served or cached (granary.cas.verify). A streamed read-through
from such a fallback goes into the cache's writer while it is hashed, is
committed only if it matched, and is then served from the cache: the cache is
the spool, so no byte of a mismatching blob reaches a client or the cache.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from granary import digest as dg
from granary.cas.blobstore import BlobInfo, BlobStore, BlobWriter
from granary.cas.fallback_queue import FallbackQueue
from granary.cas.verify import mismatch
from granary.digest import BlobDigest
from granary.errors import BlobNotFound, GranaryError, ResourceExhausted

log = logging.getLogger("granary.cas.tiered")


class TieredBlobStore(BlobStore):
    name = "tiered"

    def __init__(
        self,
        cache: BlobStore,
        fallback: BlobStore,
        *,
        defer_fallback_writes: bool = False,
        queue_max_blobs: int = 100_000,
        queue_max_bytes: int = 256 << 20,
        queue_workers: int = 4,
        queue_journal: Path | None = None,
    ):
        self.cache = cache
        self.fallback = fallback
        self.supports_delete = fallback.supports_delete
        self.supports_listing = fallback.supports_listing
        self.queue: FallbackQueue | None = None
        if defer_fallback_writes:
            self.queue = FallbackQueue(
                cache, fallback, max_blobs=queue_max_blobs, max_bytes=queue_max_bytes, workers=queue_workers,
                journal=queue_journal,
            )

    @property
    def backlog(self) -> int:
        """Blobs written to the cache but not yet to the fallback."""
        return self.queue.backlog if self.queue else 0

    async def flush(self) -> None:
        """Wait until every deferred write has reached the fallback."""
        if self.queue:
            await self.queue.join()

    async def find_missing(self, digests: Sequence[BlobDigest]) -> list[BlobDigest]:
        missing = await self.cache.find_missing(digests)
        if not missing:
            return []
        return await self.fallback.find_missing(missing)

    async def get_many(self, digests: Sequence[BlobDigest]) -> dict[BlobDigest, bytes]:
        found = await self.cache.get_many(digests)
        rest = [d for d in digests if d not in found]
        if rest:
            filled = await self.fallback.get_many(rest)
            if filled:
                await self._fill(list(filled.items()))
                found.update(filled)
        return found

    async def _fill(self, blobs: list[tuple[BlobDigest, bytes]]) -> None:
        """Best effort: a cache that cannot take a blob just does not cache it."""
        try:
            await self.cache.put_many(blobs)
        except ResourceExhausted:
            for blob in blobs:
                try:
                    await self.cache.put_many([blob])
                except ResourceExhausted:
                    pass
        except GranaryError as e:
            log.warning("could not fill the cache (%s): %s", self.cache.name, e.message)

    async def put_many(self, blobs: Sequence[tuple[BlobDigest, bytes]]) -> None:
        if self.queue is None:
            await self.fallback.put_many(blobs)
            await self._fill(list(blobs))
            return
        cached, direct = await self._cache_batch(list(blobs))
        if direct:
            await self.fallback.put_many(direct)
        if cached:
            await self.queue.put(cached)

    async def _cache_batch(
        self, blobs: list[tuple[BlobDigest, bytes]]
    ) -> tuple[list[tuple[BlobDigest, bytes]], list[tuple[BlobDigest, bytes]]]:
        """(blobs the cache took, blobs it refused as too large)."""
        try:
            await self.cache.put_many(blobs)
            return blobs, []
        except ResourceExhausted:
            cached: list[tuple[BlobDigest, bytes]] = []
            direct: list[tuple[BlobDigest, bytes]] = []
            for blob in blobs:
                try:
                    await self.cache.put_many([blob])
                    cached.append(blob)
                except ResourceExhausted:
                    direct.append(blob)
            return cached, direct

    async def delete(self, digests: Sequence[BlobDigest]) -> None:
        await self.cache.delete(digests)
        await self.fallback.delete(digests)

    async def read(self, digest: BlobDigest, offset: int = 0, limit: int = 0) -> AsyncIterator[bytes]:
        try:
            return await self.cache.read(digest, offset, limit)
        except BlobNotFound:
            pass
        raw = getattr(self.fallback, "read_unverified", None)
        if raw is not None and digest.size:
            try:
                writer = await self.cache.open_writer(digest)
            except ResourceExhausted:
                writer = None
            if writer is not None and await self._fill_verified(digest, raw, writer):
                try:
                    return await self.cache.read(digest, offset, limit)
                except BlobNotFound:
                    pass  # gone again at once (a tiny cache): the fallback verifies on its own
            return await self.fallback.read(digest, offset, limit)
        source = await self.fallback.read(digest, offset, limit)
        if offset or (limit and limit < digest.size):
            return source
        try:
            writer = await self.cache.open_writer(digest)
        except ResourceExhausted:
            return source
        return _tee(source, writer)

    async def _fill_verified(self, digest: BlobDigest, raw, writer: BlobWriter) -> bool:
        """Copy the fallback's bytes into the cache, hashing; commit only if they match.

        False: the cache could not take it (read from the fallback instead). A mismatch raises
        BlobNotFound (logged once)."""
        h = dg.new_hasher(digest.function)
        n = 0
        try:
            async for chunk in await raw(digest):
                h.update(chunk)
                n += len(chunk)
                await writer.write(chunk)
        except ResourceExhausted:
            await writer.abort()
            return False
        except BaseException:
            await writer.abort()
            raise
        if n != digest.size or h.hexdigest() != digest.hash:
            await writer.abort()
            mismatch(self.fallback.name, digest)
            raise BlobNotFound(digest)
        try:
            await writer.commit()
        except ResourceExhausted:
            return False
        return True

    async def open_writer(self, digest: BlobDigest) -> BlobWriter:
        writers: list[BlobWriter] = []
        try:
            writers.append(await self.cache.open_writer(digest))
            cached = True
        except ResourceExhausted:
            cached = False
        if not cached or self.queue is None:
            writers.append(await self.fallback.open_writer(digest))
        return _TieredWriter(self, digest, writers, queued=cached and self.queue is not None)

    async def iterate(self) -> AsyncIterator[BlobInfo]:
        async for info in self.fallback.iterate():
            yield info

    async def close(self) -> None:
        if self.queue:
            await self.queue.close()


class _TieredWriter(BlobWriter):
    def __init__(self, store: TieredBlobStore, digest: BlobDigest, writers: list[BlobWriter], queued: bool):
        self._store = store
        self._digest = digest
        self._writers = writers
        self._queued = queued

    async def write(self, chunk: bytes) -> None:
        for w in self._writers:
            await w.write(chunk)

    async def commit(self) -> None:
        # the fallback first: once the cache has it, readers may rely on it
        for w in reversed(self._writers):
            await w.commit()
        if self._queued and self._store.queue is not None:
            await self._store.queue.put([(self._digest, None)])

    async def abort(self) -> None:
        for w in self._writers:
            await w.abort()


async def _tee(source: AsyncIterator[bytes], writer: BlobWriter) -> AsyncIterator[bytes]:
    """Stream from the fallback while filling the cache; commit only if read to the end."""
    complete = False
    try:
        async for chunk in source:
            await writer.write(chunk)
            yield chunk
        complete = True
    finally:
        if complete:
            try:
                await writer.commit()
            except GranaryError as e:
                log.warning("could not fill the cache: %s", e.message)
        else:
            await writer.abort()
