"""The background queue of a tiered store's deferred fallback writes.

Blobs are already in the cache when they are queued, so the queue holds the
bytes only while they fit in `max_bytes` and otherwise just the digest (the
worker reads the blob back from the cache, streaming). When `max_blobs` are
waiting, writers wait for room (backpressure) instead of growing without
bound. Failed copies are retried with backoff. `backlog` says how far
behind the fallback is; it is logged while non-zero.

With a `journal` (a small SQLite file; the storage builder puts it under the
data directory, `fallback-queue/<store path>.sqlite`) the backlog survives a
crash: every queued digest is committed there before `put` returns, so before
the client hears its write succeeded, and deleted once its copy is done. A
process starting up takes over the rows of processes that are gone (its own
pid's included) and copies them, reading the bytes back from the cache. The
journal runs at synchronous=NORMAL (WAL): a killed process loses nothing; a
power cut may lose the last commits, as it may the cache's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections import deque
from pathlib import Path

from granary.cas.blobstore import BlobStore
from granary.digest import BlobDigest
from granary.errors import BlobNotFound, GranaryError
from granary.pids import pid_alive
from granary.sqlite_wal import enable_wal

log = logging.getLogger("granary.cas.tiered")

_BATCH_BYTES = 4 << 20
_BATCH_BLOBS = 500
_LOG_INTERVAL = 10.0
_OPEN_JOURNALS: set[Path] = set()  # journals a queue of this process has open


class FallbackQueue:
    def __init__(
        self,
        cache: BlobStore,
        fallback: BlobStore,
        *,
        max_blobs: int = 100_000,
        max_bytes: int = 256 << 20,
        workers: int = 4,
        journal: Path | None = None,
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
        self._journal: sqlite3.Connection | None = None
        self.resumed = 0  # blobs taken over from the journal at start-up
        if journal is not None:
            self._open_journal(Path(journal))

    # ---- the journal ----------------------------------------------------------

    def _open_journal(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, isolation_level=None, timeout=30)
        enable_wal(db)
        db.execute(
            "CREATE TABLE IF NOT EXISTS pending (key TEXT PRIMARY KEY, function INTEGER NOT NULL,"
            " hash TEXT NOT NULL, size INTEGER NOT NULL, owner INTEGER NOT NULL)"
        )
        self._journal = db
        self._journal_path = path.resolve()
        me = os.getpid()
        # rows of this pid are a dead predecessor's (the pid was reused) unless a queue of this
        # process already has the journal open
        mine_are_orphans = self._journal_path not in _OPEN_JOURNALS
        _OPEN_JOURNALS.add(self._journal_path)
        owners = [o for (o,) in db.execute("SELECT DISTINCT owner FROM pending").fetchall()]
        gone = [o for o in owners if o == me and mine_are_orphans or o != me and not pid_alive(o)]
        rows = []
        for owner in gone:
            with db:
                db.execute("BEGIN IMMEDIATE")  # one process takes a dead owner's rows, not two
                rows += db.execute(
                    "UPDATE pending SET owner = ? WHERE owner = ? RETURNING function, hash, size", (me, owner)
                ).fetchall()
        for function, hash_, size in rows:
            d = BlobDigest(function, hash_, size)
            if d not in self._queued:
                self._entries.append((d, None))
                self._queued.add(d)
        self.resumed = len(rows)
        if rows:
            log.info("resuming %d deferred copies to %s left by a previous process", len(rows), self.fallback.name)
            with contextlib.suppress(RuntimeError):  # no loop yet: the workers start at first use
                asyncio.get_running_loop()
                self._condition()

    def _journal_add(self, digests: list[BlobDigest]) -> None:
        if self._journal is not None and digests:
            me = os.getpid()
            with self._journal:
                self._journal.execute("BEGIN IMMEDIATE")
                self._journal.executemany(
                    "INSERT INTO pending VALUES (?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET owner = excluded.owner",
                    [(d.key, d.function, d.hash, d.size, me) for d in digests],
                )

    def _journal_remove(self, digests: list[BlobDigest]) -> None:
        if self._journal is not None and digests:
            with self._journal:
                self._journal.execute("BEGIN IMMEDIATE")
                self._journal.executemany("DELETE FROM pending WHERE key = ?", [(d.key,) for d in digests])

    # ---- the queue --------------------------------------------------------------

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
        # durable before the caller (and its client) hears the write is done
        self._journal_add([d for d, _ in blobs if d not in self._queued])
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
                self._journal_remove([d for d, _ in batch])
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
        if self._journal is not None:
            self._journal.close()  # what is still in it is copied by the next process
            self._journal = None
            _OPEN_JOURNALS.discard(self._journal_path)
