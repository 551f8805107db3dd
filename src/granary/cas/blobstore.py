"""The one storage interface every CAS backend implements, and wraps.

Callers (the CAS domain object) verify every blob against its digest before
handing it to a store, so stores trust the digests they are given. A store
must never make a blob readable before it is complete: streaming writes go
through a `BlobWriter`, which becomes visible only on `commit()`.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import NamedTuple

from granary.digest import BlobDigest
from granary.errors import BlobNotFound, Unimplemented

READ_CHUNK = 1 << 20  # 1 MiB: the fastest ByteStream read chunk measured here


class Presence:
    """A store's in-memory knowledge, for answering FindMissingBlobs without I/O.

    `present` maps key -> a tuple whose first item is the size; `absent` holds
    keys known to be missing. Both are valid at the moment `presence()`
    returns them. Callers add the keys they found present to `hits`, so the
    store can record the access.
    """

    __slots__ = ("absent", "hits", "present")

    def __init__(self, present: dict, absent: set, hits: set):
        self.present = present
        self.absent = absent
        self.hits = hits


class BlobInfo(NamedTuple):
    digest: BlobDigest
    atime: float  # last access, seconds since the epoch


class BlobWriter(abc.ABC):
    """A write in progress: chunks in order, then commit (visible) or abort."""

    @abc.abstractmethod
    async def write(self, chunk: bytes) -> None: ...

    @abc.abstractmethod
    async def commit(self) -> None: ...

    @abc.abstractmethod
    async def abort(self) -> None: ...


class BufferedWriter(BlobWriter):
    """Collects chunks in memory and stores them with `put_many` on commit."""

    def __init__(self, store: BlobStore, digest: BlobDigest):
        self._store = store
        self._digest = digest
        self._chunks: list[bytes] = []

    async def write(self, chunk: bytes) -> None:
        self._chunks.append(chunk)

    async def commit(self) -> None:
        await self._store.put_many([(self._digest, b"".join(self._chunks))])
        self._chunks = []

    async def abort(self) -> None:
        self._chunks = []


class BlobStore(abc.ABC):
    """Async content-addressed blob storage. Small API, bulk operations first."""

    #: human-readable name for logs and errors
    name: str = "store"
    #: capability flags: can this store remove blobs / list them (for cleanup)?
    supports_delete: bool = True
    supports_listing: bool = True

    @abc.abstractmethod
    async def find_missing(self, digests: Sequence[BlobDigest]) -> list[BlobDigest]:
        """The digests that are not stored (order kept). Counts as an access."""

    @abc.abstractmethod
    async def get_many(self, digests: Sequence[BlobDigest]) -> dict[BlobDigest, bytes]:
        """Whole contents of small blobs; missing ones are left out of the result."""

    @abc.abstractmethod
    async def put_many(self, blobs: Sequence[tuple[BlobDigest, bytes]]) -> None:
        """Store verified blobs. Raises ResourceExhausted if there is no room."""

    @abc.abstractmethod
    async def delete(self, digests: Sequence[BlobDigest]) -> None:
        """Remove blobs (missing ones are ignored)."""

    def presence(self) -> Presence | None:
        """Fresh in-memory presence knowledge, if this store keeps any."""
        return None

    def removal_token(self) -> object | None:
        """A value that changes whenever a blob may have left this store, in any process.

        Read it before checking that blobs are present: while it still equals
        what was read, none of them has gone. None: the store cannot tell (every
        check must ask it again).
        """
        return None

    def record_access(self, keys: Iterable[str]) -> None:
        """Count blobs (by key) as used, as a lookup would, for stores that evict by last use."""

    async def has(self, digest: BlobDigest) -> bool:
        return not await self.find_missing([digest])

    async def get(self, digest: BlobDigest) -> bytes:
        found = await self.get_many([digest])
        if digest not in found:
            raise BlobNotFound(digest)
        return found[digest]

    async def read(self, digest: BlobDigest, offset: int = 0, limit: int = 0) -> AsyncIterator[bytes]:
        """Stream `limit` bytes (0: to the end) from `offset`; raises BlobNotFound first.

        Stores that hold large blobs override this to stream without loading
        the whole blob.
        """
        data = await self.get(digest)
        end = len(data) if limit <= 0 else min(len(data), offset + limit)
        return _chunks(memoryview(data)[offset:end])

    async def open_writer(self, digest: BlobDigest) -> BlobWriter:
        return BufferedWriter(self, digest)

    async def iterate(self) -> AsyncIterator[BlobInfo]:
        """Every stored blob with its last access time (for cleanup)."""
        raise Unimplemented(f"{self.name} cannot list its blobs")
        yield  # pragma: no cover  (makes this an async generator)

    async def close(self) -> None:
        return None


async def _chunks(view: memoryview) -> AsyncIterator[bytes]:
    for start in range(0, len(view), READ_CHUNK):
        yield bytes(view[start : start + READ_CHUNK])
