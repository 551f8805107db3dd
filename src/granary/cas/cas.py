"""The CAS of one instance: verifies every write, batches, trees, uploads.

Everything a client sends is checked here before it reaches a BlobStore:
the store sees only blobs whose bytes match their digest.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from granary import compression
from granary import digest as dg
from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from granary.cas.blobstore import BlobStore, BlobWriter
from granary.digest import BlobDigest
from granary.errors import (
    BlobNotFound,
    GranaryError,
    InvalidArgument,
    NotFound,
    OutOfRange,
    ResourceExhausted,
)


@dataclass
class BlobResult:
    """Outcome of one blob in a batch: `error` None means OK."""

    digest: BlobDigest
    data: bytes = b""
    error: GranaryError | None = None
    compressor: int = compression.IDENTITY


#: GetTree: bytes of directories in one page, and directories fetched from the store at once
TREE_PAGE_BYTES = 2 << 20
TREE_FETCH = 1000
#: digests one FindMissingBlobs / BatchReadBlobs / BatchUpdateBlobs request may name
MAX_DIGESTS_PER_REQUEST = 100_000


class ContentAddressableStorage:
    """`max_blob_bytes`: largest blob a client may announce (0: the store's own
    `max_bytes` if it has one, else unbounded). Upload limits are passed on to
    the UploadRegistry; `max_upload_bytes` 0 means the store's `max_bytes`.
    """

    def __init__(
        self,
        store: BlobStore,
        *,
        max_batch_bytes: int = 4_000_000,
        max_digests_per_request: int = MAX_DIGESTS_PER_REQUEST,
        max_blob_bytes: int = 0,
        max_uploads: int = 10_000,
        max_uploads_per_client: int = 1_000,
        max_upload_bytes: int = 0,
        upload_ttl: float = 600.0,
    ):
        self.store = store
        self.max_batch_bytes = max_batch_bytes
        self.max_digests_per_request = max_digests_per_request
        store_max = int(getattr(store, "max_bytes", 0) or 0)
        self.max_blob_bytes = max_blob_bytes or store_max
        self.uploads = UploadRegistry(
            ttl=upload_ttl,
            max_uploads=max_uploads,
            max_uploads_per_client=max_uploads_per_client,
            max_bytes=max_upload_bytes or store_max,
            store=store,
        )

    def check_digest_count(self, count: int, what: str) -> None:
        if count > self.max_digests_per_request:
            raise InvalidArgument(
                f"{what} names {count} digests, more than the limit of {self.max_digests_per_request}"
                " per request; split it"
            )

    def check_blob_size(self, d: BlobDigest) -> None:
        """Refuse, before any byte is read, a blob the store could never hold."""
        if self.max_blob_bytes and d.size > self.max_blob_bytes:
            raise ResourceExhausted(
                f"blob {d} is {d.size} bytes, more than this CAS can hold ({self.max_blob_bytes} bytes)"
            )

    # ---- FindMissingBlobs ---------------------------------------------------

    async def find_missing(self, digests: Sequence[BlobDigest]) -> list[BlobDigest]:
        candidates = [d for d in digests if d.size or not dg.is_empty(d)]
        if not candidates:
            return []
        return await self.store.find_missing(candidates)

    async def find_missing_protos(self, function: int, protos: Sequence) -> list:
        """FindMissingBlobs on Digest messages, answered from memory where the store can.

        Every digest is validated first: a hash the store remembers (present
        or absent) says nothing about the size or function this request gives.
        """
        check = dg.check
        for p in protos:
            check(function, p.hash, p.size_bytes)
        presence = self.store.presence()
        if presence is None:
            digests = [dg.make_digest(function, d.hash, d.size_bytes) for d in protos]
            missing = set(await self.find_missing(digests))
            return [p for p, d in zip(protos, digests) if d in missing]
        present = presence.present
        absent = presence.absent
        prefix = "b3-" if function == dg.BLAKE3 else ""
        hits = []
        missing = []
        unknown = []
        for p in protos:
            key = prefix + p.hash if prefix else p.hash
            loc = present.get(key)
            if loc is not None and loc[0] == p.size_bytes:
                hits.append(key)
            elif key in absent:
                missing.append(p)
            else:
                unknown.append(p)
        presence.hits.update(hits)
        if unknown:
            digests = [dg.make_digest(function, p.hash, p.size_bytes) for p in unknown]
            still = set(await self.find_missing(digests))
            missing.extend(p for p, d in zip(unknown, digests) if d in still)
        return missing

    # ---- batches ------------------------------------------------------------

    async def batch_update(self, items: Sequence[tuple[BlobDigest, bytes, int]]) -> list[BlobResult]:
        """items: (digest, data as sent, compressor). Bad blobs fail alone.

        Callers check the claimed sizes first (check_batch_claims); each blob
        decompresses to at most its claimed size + 1 bytes.
        """
        results: list[BlobResult] = []
        good: list[tuple[BlobDigest, bytes]] = []
        sha256 = hashlib.sha256
        for d, data, compressor in items:
            result = BlobResult(d)
            results.append(result)
            if (
                compressor == compression.IDENTITY
                and d.function == dg.SHA256
                and len(data) == d.size
                and sha256(data).hexdigest() == d.hash
            ):  # the common case, without the general path's calls (~20% of the hashing cost)
                if d.size:
                    good.append((d, data))
                continue
            try:
                if compressor != compression.IDENTITY:
                    compression.check(compressor)
                    data = compression.decompress(compressor, data, d.size)
                if not dg.matches(d, data):
                    actual = dg.compute(d.function, data)
                    raise InvalidArgument(
                        f"blob data does not match digest {d}: it hashes to {actual}"
                    )
            except GranaryError as e:
                result.error = e
                continue
            if d.size:
                good.append((d, data))
        if good:
            try:
                await self.store.put_many(good)
            except GranaryError as e:
                failed = {d for d, _ in good}
                for r in results:
                    if r.error is None and r.digest in failed:
                        r.error = e
        return results

    async def batch_read(
        self, digests: Sequence[BlobDigest], acceptable: Sequence[int] = ()
    ) -> list[BlobResult]:
        total = sum(d.size for d in digests)
        if total > self.max_batch_bytes:
            raise InvalidArgument(
                f"BatchReadBlobs asks for {total} bytes, more than the limit of"
                f" {self.max_batch_bytes} (max_batch_total_size_bytes); use ByteStream Read"
            )
        wanted = [d for d in digests if d.size]
        found = await self.store.get_many(wanted) if wanted else {}
        compressor = next((c for c in acceptable if c in compression.SUPPORTED), compression.IDENTITY)
        results = []
        for d in digests:
            if not d.size and dg.is_empty(d):
                results.append(BlobResult(d, b""))
                continue
            data = found.get(d)
            if data is None:
                results.append(BlobResult(d, error=BlobNotFound(d)))
            elif compressor != compression.IDENTITY and len(data) > 256:
                results.append(BlobResult(d, compression.compress(compressor, data), compressor=compressor))
            else:
                results.append(BlobResult(d, data))
        return results

    def check_batch_size(self, total: int, what: str) -> None:
        if total > self.max_batch_bytes:
            raise InvalidArgument(
                f"{what} carries {total} bytes, more than the limit of {self.max_batch_bytes}"
                " (max_batch_total_size_bytes); use ByteStream Write"
            )

    def check_batch_claims(self, sizes: Sequence[int], what: str) -> None:
        """Refuse a batch by what its digests claim, before decompressing anything."""
        self.check_digest_count(len(sizes), what)
        claimed = sum(s for s in sizes if s > 0)
        if claimed > self.max_batch_bytes:
            raise InvalidArgument(
                f"{what} claims {claimed} bytes in its digests, more than the limit of"
                f" {self.max_batch_bytes} (max_batch_total_size_bytes); use ByteStream Write"
            )

    # ---- single blobs -------------------------------------------------------

    async def get(self, d: BlobDigest) -> bytes:
        if not d.size and dg.is_empty(d):
            return b""
        return await self.store.get(d)

    async def put(self, d: BlobDigest, data: bytes) -> None:
        if not dg.matches(d, data):
            raise InvalidArgument(f"blob data does not match digest {d}")
        if d.size:
            await self.store.put_many([(d, data)])

    async def get_message(self, d: BlobDigest, message_type):
        data = await self.get(d)
        msg = message_type()
        try:
            msg.ParseFromString(data)
        except DecodeError:
            raise InvalidArgument(
                f"blob {d} is not a valid {message_type.DESCRIPTOR.full_name}"
            ) from None
        return msg

    async def read(self, d: BlobDigest, offset: int, limit: int) -> AsyncIterator[bytes]:
        if offset < 0 or offset > d.size:
            raise OutOfRange(f"read_offset {offset} is outside blob {d} (size {d.size})")
        if limit < 0:
            raise OutOfRange(f"read_limit {limit} is negative")
        if not d.size and dg.is_empty(d):
            return _empty()
        if offset == d.size:
            # still must say NOT_FOUND for a blob we do not have
            if await self.store.find_missing([d]):
                raise BlobNotFound(d)
            return _empty()
        return await self.store.read(d, offset, limit)

    async def has(self, d: BlobDigest) -> bool:
        return not await self.find_missing([d])

    def removal_token(self) -> object | None:
        """See BlobStore.removal_token: unchanged since a check means no checked blob has gone."""
        return self.store.removal_token()

    def record_access(self, keys: tuple[str, ...]) -> None:
        self.store.record_access(keys)

    # ---- GetTree ------------------------------------------------------------

    async def get_tree(
        self, root: BlobDigest, page_size: int, page_token: str
    ) -> AsyncIterator[tuple[list[re_pb2.Directory], str]]:
        """Pages of the directories under `root`, breadth first, each listed once.

        The page token is the position in that order, so a retry resumes where
        the last page ended.
        """
        if page_size < 0:
            raise InvalidArgument(f"page_size {page_size} is negative")
        start = 0
        if page_token:
            try:
                start = int(base64.urlsafe_b64decode(page_token.encode()).decode())
                if start < 0:
                    raise ValueError
            except (ValueError, UnicodeDecodeError):
                raise InvalidArgument(f"invalid page_token {page_token!r}") from None
        if await self.store.find_missing([root]) and not dg.is_empty(root):
            raise NotFound(f"tree root directory {root} not found")
        page_size = page_size or 1000
        return self._tree_pages(root, start, page_size)

    async def _tree_pages(self, root: BlobDigest, start: int, page_size: int):
        """Stream pages while walking: only one page, the digests seen and one level are held.

        A page ends after `page_size` directories or TREE_PAGE_BYTES of them,
        whichever comes first (the spec lets the server send fewer).
        """
        page: list[re_pb2.Directory] = []
        page_bytes = 0
        position = 0
        async for directory in self._walk(root):
            if position >= start:
                size = directory.ByteSize()
                if page and (len(page) >= page_size or page_bytes + size > TREE_PAGE_BYTES):
                    yield page, base64.urlsafe_b64encode(str(position).encode()).decode()
                    page, page_bytes = [], 0
                page.append(directory)
                page_bytes += size
            position += 1
        if start > position:
            raise InvalidArgument(f"page_token points past the end of tree {root}")
        yield page, ""

    async def _walk(self, root: BlobDigest) -> AsyncIterator[re_pb2.Directory]:
        """The directories under `root`, breadth first, each once; levels are fetched in slices."""
        seen = {root}
        level = [root]
        while level:
            next_level: list[BlobDigest] = []
            for begin in range(0, len(level), TREE_FETCH):
                part = level[begin : begin + TREE_FETCH]
                found = await self.store.get_many([d for d in part if d.size])
                for d in part:
                    data = found.pop(d, b"" if not d.size else None)
                    if data is None:
                        continue  # missing parts are left out, as the spec allows
                    directory = re_pb2.Directory()
                    try:
                        directory.ParseFromString(data)
                    except DecodeError:
                        continue
                    for child in directory.directories:
                        try:
                            cd = dg.make_digest(d.function, child.digest.hash, child.digest.size_bytes)
                        except InvalidArgument:
                            continue
                        if cd not in seen:
                            seen.add(cd)
                            next_level.append(cd)
                    yield directory
            level = next_level


async def _empty() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover


@dataclass(eq=False)
class UploadSession:
    """A ByteStream Write in progress; kept between streams so it can resume."""

    key: str
    digest: BlobDigest
    compressor: int
    writer: BlobWriter
    hasher: dg.Hasher
    decompressor: compression.StreamDecompressor
    client: str = ""  # who opened it (peer host, or the identity once there is auth)
    committed: int = 0  # in the client's write_offset units
    received: int = 0  # uncompressed bytes
    last_used: float = field(default_factory=time.monotonic)
    busy: bool = False
    done: bool = False
    hashing: asyncio.Future | None = None  # a large chunk being hashed in a thread (bytestream._take_plain)


class UploadRegistry:
    """Every ByteStream upload of this process, bounded, and the resumable ones by key.

    Limits: `max_uploads` sessions in the process, `max_uploads_per_client`
    per client key, and `max_bytes` bytes received by unfinished uploads
    (they sit in memory or temp files until committed). A session counts from
    `open` until it is committed, aborted, discarded or expired (`ttl`
    seconds idle). The bytes in flight are also lent to the store as
    `inflight_bytes` where it has that attribute, so it evicts to leave room
    for them (disk and memory stores).
    """

    def __init__(
        self,
        ttl: float = 600.0,
        *,
        max_uploads: int = 10_000,
        max_uploads_per_client: int = 1_000,
        max_bytes: int = 0,
        store: BlobStore | None = None,
    ):
        self.ttl = ttl
        self.max_uploads = max_uploads
        self.max_uploads_per_client = max_uploads_per_client
        self.max_bytes = max_bytes  # 0: unbounded
        self._store = store
        self._sessions: dict[str, UploadSession] = {}
        self._live: set[UploadSession] = set()
        self._per_client: dict[str, int] = {}
        self.inflight_bytes = 0

    def __len__(self) -> int:
        return len(self._live)

    def get(self, key: str) -> UploadSession | None:
        return self._sessions.get(key)

    def open(self, session: UploadSession, resumable: bool) -> None:
        """Count a new session (raises ResourceExhausted past a limit); resumable ones get its key."""
        if len(self._live) >= self.max_uploads:
            raise ResourceExhausted(
                f"{len(self._live)} uploads are in progress, the limit of this server"
                f" (max_uploads {self.max_uploads}); retry later"
            )
        count = self._per_client.get(session.client, 0)
        if count >= self.max_uploads_per_client:
            raise ResourceExhausted(
                f"client {session.client!r} has {count} uploads in progress, the limit"
                f" (max_uploads_per_client {self.max_uploads_per_client}); finish or abandon some first"
            )
        self._live.add(session)
        self._per_client[session.client] = count + 1
        if resumable:
            self._sessions[session.key] = session

    def grow(self, session: UploadSession, n: int) -> None:
        """Account `n` more bytes received by `session`; refuse past `max_bytes`."""
        if self.max_bytes and self.inflight_bytes + n > self.max_bytes:
            raise ResourceExhausted(
                f"unfinished uploads hold {self.inflight_bytes} bytes; {n} more would pass the limit of"
                f" {self.max_bytes} bytes (max_upload_bytes); retry later"
            )
        session.received += n
        self._set_inflight(self.inflight_bytes + n)

    def close(self, session: UploadSession) -> None:
        """Stop counting a session (idempotent); its key goes too if it still points at it."""
        if self._sessions.get(session.key) is session:
            del self._sessions[session.key]
        if session not in self._live:
            return
        self._live.discard(session)
        left = self._per_client.get(session.client, 1) - 1
        if left:
            self._per_client[session.client] = left
        else:
            self._per_client.pop(session.client, None)
        self._set_inflight(self.inflight_bytes - session.received)

    def _set_inflight(self, value: int) -> None:
        self.inflight_bytes = value
        if self._store is not None and hasattr(self._store, "inflight_bytes"):
            self._store.inflight_bytes = value

    async def discard(self, key: str) -> None:
        s = self._sessions.get(key)
        if s is not None:
            self.close(s)
            await s.writer.abort()

    async def expire(self) -> None:
        now = time.monotonic()
        for key, s in list(self._sessions.items()):
            if not s.busy and now - s.last_used > self.ttl:
                await self.discard(key)

    async def run_expiry(self) -> None:
        while True:
            await asyncio.sleep(min(self.ttl, 60))
            await self.expire()
