"""A bounded in-memory store with least-recently-used eviction."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence

from granary.cas.blobstore import BlobInfo, BlobStore
from granary.digest import BlobDigest
from granary.errors import ResourceExhausted


class MemoryBlobStore(BlobStore):
    name = "memory"

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        #: bytes unfinished uploads hold in memory (set by the UploadRegistry): stored
        #: blobs are evicted so that they and these fit in max_bytes together, but
        #: never below half of max_bytes (uploads must not empty the cache)
        self.inflight_bytes = 0
        self._blobs: OrderedDict[str, tuple[BlobDigest, bytes, float]] = OrderedDict()
        self.bytes = 0

    def _lookup(self, digest: BlobDigest) -> bytes | None:
        entry = self._blobs.get(digest.key)
        if entry is None or entry[0].size != digest.size:
            return None
        self._blobs.move_to_end(digest.key)
        return entry[1]

    async def find_missing(self, digests: Sequence[BlobDigest]) -> list[BlobDigest]:
        return [d for d in digests if self._lookup(d) is None]

    async def get_many(self, digests: Sequence[BlobDigest]) -> dict[BlobDigest, bytes]:
        out = {}
        for d in digests:
            data = self._lookup(d)
            if data is not None:
                out[d] = data
        return out

    async def put_many(self, blobs: Sequence[tuple[BlobDigest, bytes]]) -> None:
        now = time.time()
        for digest, data in blobs:
            if len(data) > self.max_bytes:
                raise ResourceExhausted(
                    f"blob {digest} is larger than the memory store ({self.max_bytes} bytes)"
                )
            old = self._blobs.pop(digest.key, None)
            if old is not None:
                self.bytes -= len(old[1])
            self._blobs[digest.key] = (digest, bytes(data), now)
            self.bytes += len(data)
        floor = self.max_bytes // 2
        while self.bytes > self.max_bytes or (self.bytes > floor and self.bytes + self.inflight_bytes > self.max_bytes):
            _, (_, data, _) = self._blobs.popitem(last=False)
            self.bytes -= len(data)

    async def delete(self, digests: Sequence[BlobDigest]) -> None:
        for d in digests:
            old = self._blobs.pop(d.key, None)
            if old is not None:
                self.bytes -= len(old[1])

    async def iterate(self) -> AsyncIterator[BlobInfo]:
        for digest, _, atime in list(self._blobs.values()):
            yield BlobInfo(digest, atime)
