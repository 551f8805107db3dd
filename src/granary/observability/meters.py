"""Counting wrappers put around what the server assembled, so that the stores, the Action Cache and the
job queue need no metrics code of their own.

- Each CAS's store (`ContentAddressableStorage.store`) is wrapped in a MeteredBlobStore that counts
  blobs and bytes read and written. The CAS's upload registry keeps the store itself (it lends it
  the bytes of unfinished uploads).
- Instances are served through MeteredInstances: their Action Caches count hits, misses and updates,
  for GetActionResult and for Execute's cache lookups alike.
- Disk and memory stores get their eviction counted, and the job queue its completed jobs (queue
  wait, execution time, outcome) and the worker sessions its reaper drops, by wrapping those
  methods on the objects (not their classes).
- `sample` (every few seconds, and before each scrape) sets this process's live gauges: uploads in
  progress, deferred fallback writes.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from granary.cas.blobstore import BlobStore, BlobWriter, Presence
from granary.digest import BlobDigest
from granary.errors import NotFound

if TYPE_CHECKING:
    from granary.bootstrap import App
    from granary.observability.interceptor import InstanceLabels

log = logging.getLogger("granary.observability")


# ---- CAS ----------------------------------------------------------------------------------------


class _CountingWriter(BlobWriter):
    def __init__(self, inner: BlobWriter, store: MeteredBlobStore):
        self._inner = inner
        self._store = store
        self._bytes = 0

    async def write(self, chunk: bytes) -> None:
        await self._inner.write(chunk)
        self._bytes += len(chunk)

    async def commit(self) -> None:
        await self._inner.commit()
        self._store._written(1, self._bytes)

    async def abort(self) -> None:
        await self._inner.abort()

    def __getattr__(self, name: str) -> Any:  # e.g. the disk writer's park()
        return getattr(self._inner, name)


class MeteredBlobStore(BlobStore):
    """`inner`, counting what is read from it and written to it under the label `store`."""

    def __init__(self, inner: BlobStore, store: str, metrics: Any):
        self.inner = inner
        self.name = inner.name
        self.supports_delete = inner.supports_delete
        self.supports_listing = inner.supports_listing
        pending = metrics.PENDING  # counted in the process, written out every second
        self._read_bytes = pending.counter(metrics.CAS_READ_BYTES.labels(store))
        self._read_blobs = pending.counter(metrics.CAS_READ_BLOBS.labels(store))
        self._written_bytes = pending.counter(metrics.CAS_WRITTEN_BYTES.labels(store))
        self._written_blobs = pending.counter(metrics.CAS_WRITTEN_BLOBS.labels(store))

    def __getattr__(self, name: str) -> Any:  # max_bytes, backlog, flush...
        return getattr(self.inner, name)

    def _read(self, blobs: int, size: int) -> None:
        self._read_blobs.inc(blobs)
        if size:
            self._read_bytes.inc(size)

    def _written(self, blobs: int, size: int) -> None:
        self._written_blobs.inc(blobs)
        if size:
            self._written_bytes.inc(size)

    def presence(self) -> Presence | None:
        return self.inner.presence()

    async def find_missing(self, digests: Sequence[BlobDigest]) -> list[BlobDigest]:
        return await self.inner.find_missing(digests)

    async def has(self, digest: BlobDigest) -> bool:
        return await self.inner.has(digest)

    async def get_many(self, digests: Sequence[BlobDigest]) -> dict[BlobDigest, bytes]:
        found = await self.inner.get_many(digests)
        if found:
            self._read(len(found), sum(len(v) for v in found.values()))
        return found

    async def get(self, digest: BlobDigest) -> bytes:
        data = await self.inner.get(digest)
        self._read(1, len(data))
        return data

    async def read(self, digest: BlobDigest, offset: int = 0, limit: int = 0) -> AsyncIterator[bytes]:
        stream = await self.inner.read(digest, offset, limit)
        self._read_blobs.inc()
        return self._counted(stream)

    async def _counted(self, stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        counter = self._read_bytes
        try:
            async for chunk in stream:
                counter.inc(len(chunk))
                yield chunk
        finally:
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()

    async def put_many(self, blobs: Sequence[tuple[BlobDigest, bytes]]) -> None:
        await self.inner.put_many(blobs)
        if blobs:
            self._written(len(blobs), sum(len(data) for _, data in blobs))

    async def open_writer(self, digest: BlobDigest) -> BlobWriter:
        return _CountingWriter(await self.inner.open_writer(digest), self)

    async def delete(self, digests: Sequence[BlobDigest]) -> None:
        await self.inner.delete(digests)

    async def iterate(self):  # type: ignore[override]
        async for info in self.inner.iterate():
            yield info

    async def close(self) -> None:
        await self.inner.close()


def store_labels(app: App) -> dict[int, str]:
    """id(store) -> label for every store the app built: its name under `storage:` when it has one,
    else its type and place (a disk store's path, relative to the data directory where it can be)."""
    labels: dict[int, str] = {}
    builder = app.builder
    if builder is None:
        return {id(s): s.name for s in app.blob_stores}
    for name, store in builder.named.items():
        labels[id(store)] = name
    data_dir = builder.cfg.data_dir
    for i, store in enumerate(builder.built):
        if id(store) in labels:
            continue
        root = getattr(store, "root", None)
        if isinstance(root, Path):
            try:
                where = str(root.relative_to(data_dir))
            except ValueError:
                where = str(root)
            labels[id(store)] = f"{store.name}:{where}"
        else:
            labels[id(store)] = f"{store.name}#{i}"
    return labels


def meter_cas(app: App, metrics: Any, labels: dict[int, str]) -> None:
    """Count the reads and writes of every CAS the instances use."""
    for key, cas in app.cas_by_store.items():
        if isinstance(cas.store, MeteredBlobStore):
            continue
        cas.store = MeteredBlobStore(cas.store, labels.get(id(cas.store), key), metrics)


def count_evictions(app: App, metrics: Any, labels: dict[int, str]) -> None:
    """Count what disk and memory stores evict (passes, blobs, bytes)."""
    from granary.cas.disk import DiskBlobStore
    from granary.cas.memory import MemoryBlobStore

    stores = app.builder.built if app.builder is not None else app.blob_stores
    for store in stores:
        label = labels.get(id(store), store.name)
        if isinstance(store, DiskBlobStore):
            _count_disk_evictions(store, label, metrics)
        elif isinstance(store, MemoryBlobStore):
            _count_memory_evictions(store, label, metrics)


def _count_disk_evictions(store: Any, label: str, metrics: Any) -> None:
    passes, freed, blobs = (m.labels(label) for m in (
        metrics.CAS_EVICTIONS, metrics.CAS_EVICTED_BYTES, metrics.CAS_EVICTED_BLOBS))
    evict, delete_row = store.evict, getattr(store, "_delete_row", None)
    evicting = threading.local()

    def counted_evict(target_bytes: int) -> int:
        evicting.on = True
        try:
            n = evict(target_bytes)
        finally:
            evicting.on = False
        passes.inc()
        if n:
            freed.inc(n)
        return n

    store.evict = counted_evict
    if delete_row is not None:
        def counted_delete_row(*args: Any, **kwargs: Any) -> Any:
            if getattr(evicting, "on", False):
                blobs.inc()
            return delete_row(*args, **kwargs)

        store._delete_row = counted_delete_row


def _count_memory_evictions(store: Any, label: str, metrics: Any) -> None:
    passes, freed, evicted = (m.labels(label) for m in (
        metrics.CAS_EVICTIONS, metrics.CAS_EVICTED_BYTES, metrics.CAS_EVICTED_BLOBS))
    put_many = store.put_many
    blobs = getattr(store, "_blobs", None)
    if blobs is None:
        return

    async def counted_put_many(items: Sequence[tuple[BlobDigest, bytes]]) -> None:
        count, size = len(blobs), store.bytes
        new = {d.key: len(data) for d, data in items if d.key not in blobs}
        await put_many(items)
        gone = count + len(new) - len(blobs)
        if gone > 0:
            passes.inc()
            evicted.inc(gone)
            freed.inc(max(0, size + sum(new.values()) - store.bytes))

    store.put_many = counted_put_many


# ---- Action Cache --------------------------------------------------------------------------------


class MeteredActionCache:
    """An instance's ActionCache counting hits, misses and client updates."""

    def __init__(self, inner: Any, instance: str, metrics: Any):
        self.inner = inner
        self._hits, self._misses, self._updates = metrics.ac_counters(instance)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def get(self, action: BlobDigest, **kwargs: Any) -> Any:
        try:
            result = await self.inner.get(action, **kwargs)
        except NotFound:
            self._misses.inc()
            raise
        self._hits.inc()
        return result

    async def update(self, action: BlobDigest, result: Any) -> Any:
        stored = await self.inner.update(action, result)
        self._updates.inc()
        return stored


class MeteredInstances:
    """The app's Instances, each handed out with a MeteredActionCache (made once per instance)."""

    def __init__(self, inner: Any, labels: InstanceLabels, metrics: Any):
        self.inner = inner
        self._labels = labels
        self._metrics = metrics
        self._made: dict[str, tuple[Any, Any]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def get(self, name: str) -> Any:
        inst = self.inner.get(name)
        made = self._made.get(name)
        if made is not None and made[0] is inst:
            return made[1]
        metered = inst
        if inst.action_cache is not None:
            ac = MeteredActionCache(inst.action_cache, self._labels.label(name), self._metrics)
            metered = dataclasses.replace(inst, action_cache=ac)
        if len(self._made) > 10_000:
            self._made.clear()
        self._made[name] = (inst, metered)
        return metered

    def all(self) -> list[Any]:
        return [self.get(i.name) for i in self.inner.all()]


# ---- the job queue --------------------------------------------------------------------------------


def observe_queue(farm: Any, metrics: Any) -> None:
    """Count jobs as workers complete them (queue wait, execution time, outcome) and the worker
    sessions the reaper drops for silence."""
    from sqlalchemy import event, select

    from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
    from granary.execution.schema import jobs

    queue = farm.queue
    complete, reap = queue.complete, queue.reap

    def completed(job_name: str, bot_name: str | None, response: bytes, now: float) -> bool:
        done = complete(job_name, bot_name, response, now)
        if done:
            try:
                with queue.read_engine.connect() as conn:
                    row = conn.execute(select(jobs.c.queue, jobs.c.queued_time, jobs.c.start_time)
                                       .where(jobs.c.name == job_name)).first()
                parsed = re_pb2.ExecuteResponse()
                parsed.ParseFromString(response)
                if parsed.status.code:
                    outcome = "error"
                elif parsed.result.exit_code:
                    outcome = "nonzero_exit"
                else:
                    outcome = "ok"
                if row is not None:
                    name, queued, started = row
                    metrics.JOBS_COMPLETED.labels(name, outcome).inc()
                    if started is not None:
                        metrics.QUEUE_WAIT.labels(name).observe(max(0.0, started - queued))
                        metrics.EXECUTION_TIME.labels(name).observe(max(0.0, now - started))
            except Exception:
                log.debug("cannot observe completed job %s", job_name, exc_info=True)
        return done

    reaping = threading.local()

    def reaped(*args: Any, **kwargs: Any) -> Any:
        reaping.on = True
        try:
            return reap(*args, **kwargs)
        finally:
            reaping.on = False

    lost = metrics.WORKERS_LOST

    def deleted(conn, cursor, statement, parameters, context, executemany) -> None:
        # the only bot sessions the reaper deletes are the silent ones; rowcount makes a session
        # deleted by two server processes at once count once
        if getattr(reaping, "on", False) and statement.startswith("DELETE FROM granary_bots") and (
            cursor.rowcount or 0
        ) > 0:
            lost.inc(cursor.rowcount)

    queue.complete = completed
    queue.reap = reaped
    event.listen(queue.engine, "after_cursor_execute", deleted)


# ---- live gauges of this process -------------------------------------------------------------------


class Sampler:
    """Sets this process's gauges of things only it knows (uploads, deferred writes)."""

    def __init__(self, app: App, metrics: Any, labels: dict[int, str]):
        from granary.cas.tiered import TieredBlobStore

        self._uploads = [(metrics.UPLOADS.labels(key), cas.uploads) for key, cas in app.cas_by_store.items()]
        stores = app.builder.built if app.builder is not None else app.blob_stores
        self._tiered = []
        for store in stores:
            if isinstance(store, TieredBlobStore) and store.queue is not None:
                label = labels.get(id(store), store.name)
                self._tiered.append((store.queue, metrics.FALLBACK_BACKLOG.labels(label),
                                     metrics.FALLBACK_BACKLOG_BYTES.labels(label),
                                     metrics.FALLBACK_COPIED.labels(label), metrics.FALLBACK_LOST.labels(label),
                                     [0, 0]))

    def sample(self) -> None:
        for gauge, uploads in self._uploads:
            gauge.set(len(uploads))
        for queue, blobs, size, copied, lost, seen in self._tiered:
            blobs.set(queue.backlog)
            size.set(queue.backlog_bytes)
            if queue.copied > seen[0]:
                copied.inc(queue.copied - seen[0])
                seen[0] = queue.copied
            if queue.lost > seen[1]:
                lost.inc(queue.lost - seen[1])
                seen[1] = queue.lost
