"""Cleanup of an indexed CAS: least-recently-used blobs go until a byte budget is met.

Blobs that an Action Cache entry updated within `protect_recent` seconds
still references (output files, files inside output directory trees, the
trees themselves, stdout, stderr) are never deleted, and Action Cache
entries that referred to a deleted blob are removed, so the Action Cache
never hands out a result with missing blobs (ActionCache also checks that
on every read). The janitor runs the same cleanup in the background; a
lease in the index's database makes one process at a time do it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from granary import digest as dg
from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from granary.actioncache.keys import split_key
from granary.actioncache.store import ActionCacheStore
from granary.cas.disk import digest_of_key
from granary.cas.indexed import PROGRESS_EVERY, IndexedBlobStore
from granary.digest import BlobDigest
from granary.errors import GranaryError, InvalidArgument, Unimplemented

log = logging.getLogger("granary.cleanup")

_DELETE_BATCH = 1000

Progress = Callable[[str, int, int | None], None]
"""progress(stage, done, total) for `granary cleanup`'s display: stage "scan" counts Action Cache
entries read (total unknown: None), "delete" the bytes deleted of the `total` that must go. Called every
PROGRESS_EVERY entries or _DELETE_BATCH blobs and at the end of each stage, so it costs nothing measurable."""


@dataclass
class CleanupReport:
    store: str
    before_bytes: int = 0
    after_bytes: int = 0
    target_bytes: int = 0
    deleted_blobs: int = 0
    deleted_bytes: int = 0
    protected_blobs: int = 0
    action_results_seen: int = 0
    action_results_removed: int = 0

    def __str__(self) -> str:
        return (
            f"{self.store}: {self.before_bytes} -> {self.after_bytes} bytes (target {self.target_bytes});"
            f" deleted {self.deleted_blobs} blobs ({self.deleted_bytes} bytes), kept {self.protected_blobs}"
            f" referenced by recent action results; removed {self.action_results_removed} of"
            f" {self.action_results_seen} action results"
        )


class Janitor:
    def __init__(
        self,
        index: IndexedBlobStore,
        where: str,
        action_caches: Sequence[tuple[ActionCacheStore, Callable[[str], bool]]],
        *,
        max_size: int,
        cleanup_to: float = 0.9,
        interval: float = 0.0,
        protect_recent: float = 86400.0,
    ):
        self.index = index
        self.where = where
        self.action_caches = list(action_caches)
        self.max_size = max_size
        self.cleanup_to = cleanup_to
        self.interval = interval
        self.protect_recent = protect_recent
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{id(self)}"

    async def clean(self, target: int | None = None, progress: Progress | None = None) -> CleanupReport:
        """Delete LRU blobs until at most `target` bytes (default: max_size) remain."""
        target = self.max_size if target is None else target
        report = CleanupReport(self.where, target_bytes=target)
        await self.index.flush()
        report.before_bytes = report.after_bytes = await self.index.stored_bytes()
        if report.before_bytes <= target:
            return report
        entries, protected = await self._scan_action_results(report, progress)
        need = report.before_bytes - target
        if progress is not None:
            progress("delete", 0, need)
        freed = 0
        deleted: set[str] = set()
        batch: list[BlobDigest] = []
        async for key, size, _atime in self.index.by_age():
            if freed >= need:
                break
            if key in protected:
                report.protected_blobs += 1
                continue
            batch.append(digest_of_key(key, size))
            freed += size
            if len(batch) >= _DELETE_BATCH:
                await self._delete(batch, deleted, report)
                batch = []
                if progress is not None:
                    progress("delete", min(report.deleted_bytes, need), need)
        await self._delete(batch, deleted, report)
        if progress is not None:
            progress("delete", min(report.deleted_bytes, need), need)
        for store, key, refs in entries:
            if refs & deleted:
                await store.delete(key)
                report.action_results_removed += 1
        report.after_bytes = await self.index.stored_bytes()
        log.info("cleanup %s", report)
        return report

    async def _delete(self, batch: list[BlobDigest], deleted: set[str], report: CleanupReport) -> None:
        if not batch:
            return
        await self.index.delete(batch)
        deleted.update(d.key for d in batch)
        report.deleted_blobs += len(batch)
        report.deleted_bytes += sum(d.size for d in batch)

    async def _scan_action_results(
        self, report: CleanupReport, progress: Progress | None = None
    ) -> tuple[list[tuple[ActionCacheStore, str, set[str]]], set[str]]:
        now = time.time()
        entries: list[tuple[ActionCacheStore, str, set[str]]] = []
        protected: set[str] = set()
        for store, wanted in self.action_caches:
            try:
                async for key, value, updated in store.iterate():
                    parts = split_key(key)
                    if parts is None or not wanted(parts[0]):
                        continue
                    report.action_results_seen += 1
                    if progress is not None and report.action_results_seen % PROGRESS_EVERY == 0:
                        progress("scan", report.action_results_seen, None)
                    refs = await self._references(value, parts[1].function)
                    if refs is None:
                        await store.delete(key)  # unreadable: it can never be served anyway
                        report.action_results_removed += 1
                        continue
                    entries.append((store, key, refs))
                    if now - updated <= self.protect_recent:
                        protected |= refs
            except Unimplemented:
                log.warning("%s: action cache %s cannot list its entries; none of its results are protected",
                            self.where, store.name)
        if progress is not None:
            progress("scan", report.action_results_seen, None)
        return entries, protected

    async def _references(self, raw: bytes, function: int) -> set[str] | None:
        """Keys of every blob an ActionResult needs; None if it does not parse."""
        result = re_pb2.ActionResult()
        try:
            result.ParseFromString(raw)
        except DecodeError:
            return None
        refs: set[str] = set()
        digests = [f.digest for f in result.output_files]
        if result.HasField("stdout_digest"):
            digests.append(result.stdout_digest)
        if result.HasField("stderr_digest"):
            digests.append(result.stderr_digest)
        for d in digests:
            refs.add(dg.blob_key(function, d.hash))
        for out_dir in result.output_directories:
            tree_key = dg.blob_key(function, out_dir.tree_digest.hash)
            refs.add(tree_key)
            try:
                tree_digest = dg.from_proto(function, out_dir.tree_digest)
                found = await self.index.store.get_many([tree_digest]) if tree_digest.size else {}
            except (InvalidArgument, GranaryError):
                continue
            data = found.get(tree_digest)
            if data is None:
                continue
            tree = re_pb2.Tree()
            try:
                tree.ParseFromString(data)
            except DecodeError:
                continue
            for directory in [tree.root, *tree.children]:
                refs.update(dg.blob_key(function, f.digest.hash) for f in directory.files)
        return refs

    async def run(self) -> None:
        """Background loop: clean down to cleanup_to * max_size whenever max_size is exceeded."""
        if not self.interval or not self.max_size:
            return
        while True:
            await asyncio.sleep(self.interval)
            try:
                if not await self.index.try_lease(self._owner, self.interval * 3 + 60):
                    continue
                if await self.index.stored_bytes() > self.max_size:
                    await self.clean(int(self.max_size * self.cleanup_to))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: cleanup failed", self.where)
