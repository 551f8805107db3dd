"""Entries keyed by arbitrary strings, kept on the instance's own CAS and Action Cache.

An opaque entry (a ccache result, a Gradle artifact) is stored as an ordinary CAS blob, and the
key maps to it through an index record in the instance's Action Cache:

    action cache key  = SHA-256 of b"granary-httpcache\\0" + namespace + b"\\0" + key
    action cache value = ActionResult{output_files: [{path: "entry", digest: <the CAS blob>}]}

So the CAS's size bound and LRU eviction apply to the entries' bytes, and the Action Cache's
completeness check makes a record whose blob was evicted read as a miss (it is never returned
half-there). The records are ordinary Action Cache entries (cleanup and fsck treat them as such);
their keys are digests of strings no REAPI client hashes, so they never collide with REAPI data.

The same mechanism gives the bazel-remote protocol the size of a blob it names by hash alone
(namespace "cas-size"): stores key blobs by (hash, size), and a GET /cas/HASH has no size.
"""

from __future__ import annotations

from collections import OrderedDict

from granary import digest as dg
from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from granary.digest import BlobDigest
from granary.errors import InvalidArgument, NotFound
from granary.instance import Instance

PREFIX = b"granary-httpcache\x00"
ENTRY = "entry"
SIZES_NAMESPACE = "cas-size"
SIZE_MEMO = 100_000  # hash -> size pairs remembered per process (about 10 MB at most)


def record_digest(namespace: str, key: str) -> BlobDigest:
    """The Action Cache key of the index record of `key` in `namespace`."""
    return dg.compute(dg.SHA256, PREFIX + namespace.encode() + b"\x00" + key.encode())


class OpaqueIndex:
    """key -> CAS blob, for one namespace of one instance."""

    def __init__(self, instance: Instance, namespace: str):
        self.instance = instance
        self.namespace = namespace

    def _ac(self):
        ac = self.instance.action_cache
        if ac is None:
            raise NotFound(f"instance {self.instance.name!r} has no action cache to index HTTP cache entries in")
        return ac

    async def lookup(self, key: str) -> BlobDigest | None:
        """The blob of `key`, or None (never stored, or its blob is gone)."""
        ac = self._ac()
        try:
            result = await ac.get(record_digest(self.namespace, key))
        except NotFound:
            return None
        if len(result.output_files) != 1:
            return None
        d = result.output_files[0].digest
        try:
            return dg.make_digest(dg.UNKNOWN, d.hash, d.size_bytes)
        except InvalidArgument:
            return None

    async def record(self, key: str, blob: BlobDigest) -> None:
        """Point `key` at `blob` (which must be in the CAS already)."""
        result = re_pb2.ActionResult()
        out = result.output_files.add()
        out.path = ENTRY
        out.digest.hash = blob.hash
        out.digest.size_bytes = blob.size
        await self._ac().put_unchecked(record_digest(self.namespace, key), result)

    async def delete(self, key: str) -> None:
        ac = self._ac()
        await ac.store.delete(ac._key(record_digest(self.namespace, key)))  # the cache's own key format


class SizeIndex:
    """hash -> size of the blobs of one instance's CAS, for a protocol that names blobs by hash only.

    Known from: this process's memory (blobs it stored or saw in action results), the index record
    written when a blob is uploaded over HTTP, and the CAS store's in-memory presence knowledge
    (blobs that came over gRPC). A stale answer is harmless: the CAS read that follows says
    NOT_FOUND for a (hash, size) it does not hold.
    """

    def __init__(self, instance: Instance):
        self.instance = instance
        self.records = OpaqueIndex(instance, SIZES_NAMESPACE)
        self._memo: OrderedDict[str, int] = OrderedDict()

    def remember(self, d: BlobDigest) -> None:
        memo = self._memo
        memo[d.key] = d.size
        memo.move_to_end(d.key)
        while len(memo) > SIZE_MEMO:
            memo.popitem(last=False)

    async def record(self, d: BlobDigest) -> None:
        """Remember `d` here and in the index (for every server process)."""
        self.remember(d)
        if self.instance.action_cache is not None:
            await self.records.record(d.key, d)

    async def size(self, function: int, hash_: str) -> int | None:
        key = dg.blob_key(function, hash_)
        known = self._memo.get(key)
        if known is not None:
            return known
        if not hash_ or (function == dg.SHA256 and hash_ == dg.empty(dg.SHA256).hash):
            return 0
        presence = self.instance.cas.store.presence()
        if presence is not None:
            loc = presence.present.get(key)
            if loc is not None:
                return int(loc[0])
        if self.instance.action_cache is not None:
            d = await self.records.lookup(key)
            if d is not None and d.hash == hash_:
                self.remember(d)
                return d.size
        return None
