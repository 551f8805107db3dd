"""The background queue of a tiered store's deferred fallback writes.

Blobs are already in the cache when they are queued, so the queue holds the
bytes only while they fit in `max_bytes` and otherwise just the digest (the
worker reads the blob back from the cache, streaming). When `max_blobs` are
waiting, writers wait for room (backpressure) instead of growing without
bound. Failed copies are retried with backoff. `backlog` says how far
behind the fallback is; it is logged while non-zero.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

from granary.cas.blobstore import BlobStore
from granary.digest import BlobDigest
from granary.errors import BlobNotFound, GranaryError

log = logging.getLogger("granary.cas.tiered")

_BATCH_BYTES = 4 << 20
_BATCH_BLOBS = 500
_LOG_INTERVAL = 10.0


class FallbackQueue:
    def __init__(
        self,
        cache: BlobStore,
        fallback: BlobStore,
        *,
        max_blobs: int = 100_000,
        max_bytes: int = 256 << 20,
        workers: int = 4,
    ):
        self.cache = cache
        self.fallback = fallback
        self.max_blobs = max(1, max_blobs)
        self.max_bytes = max_bytes
        self.workers = max(1, workers)
        self._entries: deque[tuple[BlobDigest, bytes | None]] = deque()
        self._queued: set[BlobDigest] = set()
        self._held_bytes = 0
        self._in_flight = 0
        self._changed: asyncio.Condition | None = None
        self._tasks: list[asyncio.Task] = []
        self._last_log = 0.0
        self.copied = 0
        self.lost = 0  # evicted from the cache before they could be copied

    @property
    def backlog(self) -> int:
        return len(self._entries) + self._in_flight

    @property
    def backlog_bytes(self) -> int:
        return sum(d.size for d, _ in self._entries)

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        if not self._tasks:
            self._tasks = [asyncio.ensure_future(self._work()) for _ in range(self.workers)]
        return self._changed

    async def put(self, blobs: list[tuple[BlobDigest, bytes | None]]) -> None:
        changed = self._condition()
        async with changed:
            for d, data in blobs:
                if d in self._queued:
                    continue
                if len(self._entries) >= self.max_blobs:
                    log.warning("fallback queue full (%d blobs): writers wait for %s", self.backlog,
                                self.fallback.name)
                    changed.notify_all()  # wake the workers before waiting for them
                    await changed.wait_for(lambda: len(self._entries) < self.max_blobs)
                if data is not None and self._held_bytes + len(data) <= self.max_bytes:
                    self._held_bytes += len(data)
                else:
                    data = None
                self._entries.append((d, data))
                self._queued.add(d)
            changed.notify_all()

    async def join(self) -> None:
        changed = self._condition()
        async with changed:
            await changed.wait_for(lambda: self.backlog == 0)

    async def _take(self) -> list[tuple[BlobDigest, bytes | None]]:
        changed = self._condition()
        async with changed:
            await changed.wait_for(lambda: bool(self._entries))
            batch = [self._entries.popleft()]
            if batch[0][1] is not None:
                size = len(batch[0][1] or b"")
                while (self._entries and self._entries[0][1] is not None and len(batch) < _BATCH_BLOBS
                       and size + len(self._entries[0][1] or b"") <= _BATCH_BYTES):
                    entry = self._entries.popleft()
                    size += len(entry[1] or b"")
                    batch.append(entry)
            self._in_flight += len(batch)
            changed.notify_all()
            return batch

    async def _done(self, batch: list[tuple[BlobDigest, bytes | None]], ok: bool) -> None:
        changed = self._condition()
        async with changed:
            self._in_flight -= len(batch)
            if ok:
                for d, data in batch:
                    self._queued.discard(d)
                    if data is not None:
                        self._held_bytes -= len(data)
            else:
                self._entries.extendleft(reversed(batch))
            changed.notify_all()

    async def _work(self) -> None:
        delay = 0.5
        while True:
            batch = await self._take()
            try:
                await self._copy(batch)
            except asyncio.CancelledError:
                await self._done(batch, False)
                raise
            except Exception as e:  # noqa: BLE001 - keep draining; retry later
                log.warning("copying %d blob(s) to %s failed, retrying in %.1fs: %s", len(batch),
                            self.fallback.name, delay, e)
                await self._done(batch, False)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            delay = 0.5
            self.copied += len(batch)
            await self._done(batch, True)
            now = time.monotonic()
            if self.backlog and now - self._last_log > _LOG_INTERVAL:
                self._last_log = now
                log.info("fallback %s backlog: %d blobs", self.fallback.name, self.backlog)

    async def _copy(self, batch: list[tuple[BlobDigest, bytes | None]]) -> None:
        held = [(d, data) for d, data in batch if data is not None]
        if held:
            await self.fallback.put_many(held)
        for d, data in batch:
            if data is not None:
                continue
            try:
                source = await self.cache.read(d)
            except BlobNotFound:
                if await self.fallback.has(d):
                    continue
                self.lost += 1
                log.error("blob %s left the cache before it reached %s", d, self.fallback.name)
                continue
            writer = await self.fallback.open_writer(d)
            try:
                async for chunk in source:
                    await writer.write(chunk)
                await writer.commit()
            except BaseException:
                await writer.abort()
                raise

    async def close(self, timeout: float = 30.0) -> None:
        if self._tasks:
            if self.backlog:
                try:
                    await asyncio.wait_for(self.join(), timeout)
                except (TimeoutError, GranaryError):
                    log.error("closing with %d blobs not yet copied to %s", self.backlog, self.fallback.name)
            for t in self._tasks:
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks = []
