"""Shared plumbing for stores that route each digest to one of several stores."""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator, Sequence

from granary.cas.blobstore import BlobInfo, BlobStore, BlobWriter
from granary.digest import BlobDigest


class RoutingBlobStore(BlobStore):
    """Every digest belongs to exactly one of `self.stores`, chosen by `route`."""

    stores: list[BlobStore]

    @abc.abstractmethod
    def route(self, d: BlobDigest) -> BlobStore:
        """The one store that holds `d`."""

    def _capabilities(self) -> None:
        self.supports_delete = all(s.supports_delete for s in self.stores)
        self.supports_listing = all(s.supports_listing for s in self.stores)

    def _group(self, digests: Sequence[BlobDigest]) -> dict[int, list[BlobDigest]]:
        groups: dict[int, list[BlobDigest]] = {}
        index = {id(s): i for i, s in enumerate(self.stores)}
        for d in digests:
            groups.setdefault(index[id(self.route(d))], []).append(d)
        return groups

    async def find_missing(self, digests: Sequence[BlobDigest]) -> list[BlobDigest]:
        groups = self._group(digests)
        answers = await asyncio.gather(*(self.stores[i].find_missing(g) for i, g in groups.items()))
        missing = {d for a in answers for d in a}
        return [d for d in digests if d in missing]

    async def get_many(self, digests: Sequence[BlobDigest]) -> dict[BlobDigest, bytes]:
        groups = self._group(digests)
        out: dict[BlobDigest, bytes] = {}
        for found in await asyncio.gather(*(self.stores[i].get_many(g) for i, g in groups.items())):
            out.update(found)
        return out

    async def put_many(self, blobs: Sequence[tuple[BlobDigest, bytes]]) -> None:
        data = dict(blobs)
        groups = self._group(list(data))
        await asyncio.gather(*(self.stores[i].put_many([(d, data[d]) for d in g]) for i, g in groups.items()))

    async def delete(self, digests: Sequence[BlobDigest]) -> None:
        groups = self._group(digests)
        await asyncio.gather(*(self.stores[i].delete(g) for i, g in groups.items()))

    async def read(self, digest: BlobDigest, offset: int = 0, limit: int = 0) -> AsyncIterator[bytes]:
        return await self.route(digest).read(digest, offset, limit)

    async def open_writer(self, digest: BlobDigest) -> BlobWriter:
        return await self.route(digest).open_writer(digest)

    async def iterate(self) -> AsyncIterator[BlobInfo]:
        seen: set[int] = set()
        for store in self.stores:
            if id(store) in seen:
                continue
            seen.add(id(store))
            async for info in store.iterate():
                if self.route(info.digest) is store:
                    yield info
