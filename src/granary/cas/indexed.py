"""An SQL index (SQLite or PostgreSQL) in front of any store.

FindMissingBlobs is answered from the index alone, so a slow or remote
store (S3, Redis with its own eviction off) is asked only for bytes. Every
blob's size and last access time are in the index, which is what cleanup
(`granary cleanup`, the janitor) orders by. Accesses are remembered in
memory and written in one batched UPDATE every `flush_interval` seconds,
and a blob touched in the last `touch_interval` seconds is not touched again.

Writes reach the store before the index, so the index never names a blob
the store lacks; a blob found missing from the store on read is dropped
from the index.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence

from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
    Float,
    MetaData,
    String,
    Table,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from granary.cas.blobstore import BlobInfo, BlobStore, BlobWriter
from granary.cas.disk import digest_of_key
from granary.digest import BlobDigest
from granary.errors import BlobNotFound
from granary.sql import run, upsert

_CHUNK = 900  # keys per statement
PROGRESS_EVERY = 1000  # blobs between two calls of a long walk's progress callback


class IndexedBlobStore(BlobStore):
    name = "indexed"

    def __init__(
        self,
        store: BlobStore,
        engine: Engine,
        *,
        table: str = "cas_index",
        touch_interval: float = 60.0,
        flush_interval: float = 2.0,
    ):
        self.store = store
        self.engine = engine
        self.touch_interval = touch_interval
        self.flush_interval = flush_interval
        self.supports_delete = store.supports_delete
        meta = MetaData()
        self.table = Table(
            table, meta,
            Column("key", String(160), primary_key=True),
            Column("size", BigInteger, nullable=False),
            Column("atime", BigInteger, nullable=False, index=True),
        )
        self.lease_table = Table(
            f"{table}_lease", meta,
            Column("name", String(64), primary_key=True),
            Column("owner", String(128), nullable=False),
            Column("expires", Float, nullable=False),
        )
        try:
            meta.create_all(engine)
        except (IntegrityError, ProgrammingError, OperationalError):
            meta.create_all(engine)  # another process created it at the same moment
        self._touched: dict[str, float] = {}
        self._pending: dict[str, int] = {}
        self._last_flush = time.monotonic()

    # ---- access times -------------------------------------------------------

    def _touch(self, keys: Sequence[str]) -> None:
        now = time.time()
        for key in keys:
            last = self._touched.get(key)
            if last is None or now - last > self.touch_interval:
                self._touched[key] = now
                self._pending[key] = int(now)
        if len(self._touched) > 1_000_000:
            self._touched.clear()

    def _take_pending(self, force: bool = False) -> dict[str, int]:
        if not self._pending:
            return {}
        if not force and time.monotonic() - self._last_flush < self.flush_interval and len(self._pending) < 50_000:
            return {}
        pending, self._pending = self._pending, {}
        self._last_flush = time.monotonic()
        return pending

    def _write_atimes(self, conn, pending: dict[str, int]) -> None:
        if not pending:
            return
        by_time: dict[int, list[str]] = {}
        for key, when in pending.items():
            by_time.setdefault(when, []).append(key)
        t = self.table
        for when, keys in by_time.items():  # one statement per second (per 900 keys), not per blob
            for start in range(0, len(keys), _CHUNK):
                conn.execute(
                    update(t).where(t.c.key.in_(keys[start : start + _CHUNK]), t.c.atime < when).values(atime=when)
                )

    async def flush(self) -> None:
        """Write remembered access times now."""
        pending = self._take_pending(force=True)
        if pending:
            await run(lambda: self._in_tx(lambda c: self._write_atimes(c, pending)))

    def _in_tx(self, fn):
        with self.engine.begin() as conn:
            return fn(conn)

    # ---- BlobStore ----------------------------------------------------------

    def _lookup(self, keys: list[str], pending: dict[str, int]) -> dict[str, int]:
        t = self.table
        found: dict[str, int] = {}
        with self.engine.begin() as conn:
            for start in range(0, len(keys), _CHUNK):
                rows = conn.execute(select(t.c.key, t.c.size).where(t.c.key.in_(keys[start : start + _CHUNK])))
                found.update((key, size) for key, size in rows)
            self._write_atimes(conn, pending)
        return found

    async def find_missing(self, digests: Sequence[BlobDigest]) -> list[BlobDigest]:
        keys = list({d.key for d in digests})
        pending = self._take_pending()
        found = await run(lambda: self._lookup(keys, pending))
        missing = [d for d in digests if found.get(d.key) != d.size]
        self._touch([d.key for d in digests if found.get(d.key) == d.size])
        return missing

    async def get_many(self, digests: Sequence[BlobDigest]) -> dict[BlobDigest, bytes]:
        found = await self.store.get_many(digests)
        self._touch([d.key for d in found])
        return found

    def _add_rows(self, digests: Sequence[BlobDigest]) -> None:
        now = int(time.time())
        rows = list({d.key: {"key": d.key, "size": d.size, "atime": now} for d in digests}.values())
        with self.engine.begin() as conn:
            for start in range(0, len(rows), _CHUNK):
                conn.execute(upsert(self.engine, self.table, ["key"], ["size", "atime"]), rows[start : start + _CHUNK])

    async def put_many(self, blobs: Sequence[tuple[BlobDigest, bytes]]) -> None:
        if not blobs:
            return
        await self.store.put_many(blobs)
        await run(lambda: self._add_rows([d for d, _ in blobs]))

    def _remove_rows(self, keys: list[str]) -> None:
        t = self.table
        with self.engine.begin() as conn:
            for start in range(0, len(keys), _CHUNK):
                conn.execute(delete(t).where(t.c.key.in_(keys[start : start + _CHUNK])))

    async def delete(self, digests: Sequence[BlobDigest]) -> None:
        keys = [d.key for d in digests]
        for k in keys:
            self._pending.pop(k, None)
            self._touched.pop(k, None)
        await run(lambda: self._remove_rows(keys))
        await self.store.delete(digests)

    async def read(self, digest: BlobDigest, offset: int = 0, limit: int = 0) -> AsyncIterator[bytes]:
        try:
            stream = await self.store.read(digest, offset, limit)
        except BlobNotFound:
            await run(lambda: self._remove_rows([digest.key]))
            raise
        self._touch([digest.key])
        return stream

    async def open_writer(self, digest: BlobDigest) -> BlobWriter:
        return _IndexedWriter(self, digest, await self.store.open_writer(digest))

    async def iterate(self) -> AsyncIterator[BlobInfo]:
        await self.flush()
        async for key, size, atime in self.by_age():
            yield BlobInfo(digest_of_key(key, size), float(atime))

    async def close(self) -> None:
        await self.flush()

    # ---- cleanup support ----------------------------------------------------

    async def stored_bytes(self) -> int:
        t = self.table

        def q() -> int:
            with self.engine.connect() as conn:
                return int(conn.execute(select(func.coalesce(func.sum(t.c.size), 0))).scalar_one())

        return await run(q)

    async def count(self) -> int:
        t = self.table

        def q() -> int:
            with self.engine.connect() as conn:
                return int(conn.execute(select(func.count()).select_from(t)).scalar_one())

        return await run(q)

    async def by_age(self, page: int = 5000) -> AsyncIterator[tuple[str, int, int]]:
        """(key, size, atime), least recently used first, read in pages."""
        t = self.table
        after: tuple[int, str] | None = None
        while True:
            def q(after=after) -> list[tuple[str, int, int]]:
                stmt = select(t.c.key, t.c.size, t.c.atime).order_by(t.c.atime, t.c.key).limit(page)
                if after is not None:
                    stmt = stmt.where((t.c.atime > after[0]) | ((t.c.atime == after[0]) & (t.c.key > after[1])))
                with self.engine.connect() as conn:
                    return [tuple(r) for r in conn.execute(stmt)]

            rows = await run(q)
            for row in rows:
                yield row
            if len(rows) < page:
                return
            after = (rows[-1][2], rows[-1][0])

    async def reindex(self, progress: Callable[[int], None] | None = None) -> int:
        """Add every blob the store holds but the index lacks; returns how many were seen.

        `progress(seen)` (for `granary cleanup --reindex`'s display) is called every PROGRESS_EVERY
        blobs and once at the end: a walk of millions of blobs takes minutes and should show it moves."""
        seen = 0
        batch: list[BlobDigest] = []
        async for info in self.store.iterate():
            batch.append(info.digest)
            seen += 1
            if len(batch) >= 5000:
                await run(lambda b=batch: self._add_missing_rows(b))
                batch = []
            if progress is not None and seen % PROGRESS_EVERY == 0:
                progress(seen)
        if batch:
            await run(lambda: self._add_missing_rows(batch))
        if progress is not None:
            progress(seen)
        return seen

    def _add_missing_rows(self, digests: list[BlobDigest]) -> None:
        now = int(time.time())
        rows = [{"key": d.key, "size": d.size, "atime": now} for d in digests]
        with self.engine.begin() as conn:
            conn.execute(upsert(self.engine, self.table, ["key"], None), rows)

    async def try_lease(self, owner: str, seconds: float, name: str = "janitor") -> bool:
        """Take (or renew) a named lease shared by every process using this index."""
        t = self.lease_table

        def q() -> bool:
            now = time.time()
            with self.engine.begin() as conn:
                conn.execute(upsert(self.engine, t, ["name"], None), {"name": name, "owner": "", "expires": 0.0})
                taken = conn.execute(
                    update(t)
                    .where(t.c.name == name, (t.c.owner == owner) | (t.c.expires < now))
                    .values(owner=owner, expires=now + seconds)
                    .returning(t.c.name)
                ).first()
                return taken is not None

        return await run(q)


class _IndexedWriter(BlobWriter):
    def __init__(self, store: IndexedBlobStore, digest: BlobDigest, inner: BlobWriter):
        self._store = store
        self._digest = digest
        self._inner = inner

    async def write(self, chunk: bytes) -> None:
        await self._inner.write(chunk)

    async def commit(self) -> None:
        await self._inner.commit()
        await run(lambda: self._store._add_rows([self._digest]))

    async def abort(self) -> None:
        await self._inner.abort()
