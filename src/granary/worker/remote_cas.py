"""The server's CAS as the worker uses it: batched reads and writes, ByteStream for large blobs."""

from __future__ import annotations

import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO

import grpc

from granary import digest as dg
from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from granary._proto.google.bytestream import bytestream_pb2 as bs_pb2
from granary._proto.google.bytestream import bytestream_pb2_grpc as bs_grpc
from granary.digest import BlobDigest

log = logging.getLogger("granary.worker.cas")

CHUNK = 1 << 20  # ByteStream write chunk
DEFAULT_BATCH = 4_000_000  # when the server advertises no limit
BATCH_OVERHEAD = 64 << 10  # room left in a batch for per-blob framing
FIND_MISSING_CHUNK = 10_000  # digests per FindMissingBlobs call
MEMO_BYTES = 16 << 20  # Command and Directory messages kept in memory (verified, so safe to reuse)
MEMO_BLOB = 1 << 20  # larger ones are not kept
SKIP_FIND_MISSING = 1 << 20  # outputs up to this many bytes in all are sent without FindMissingBlobs


class MissingBlobs(Exception):
    """Blobs the server does not have (or sent corrupted)."""

    def __init__(self, digests: list[BlobDigest], what: str = "blob"):
        self.digests = digests
        listed = ", ".join(str(d) for d in digests[:5]) + (" ..." if len(digests) > 5 else "")
        super().__init__(f"{len(digests)} {what}(s) missing from the CAS: {listed}")


def to_proto(d: BlobDigest) -> re_pb2.Digest:
    return re_pb2.Digest(hash=d.hash, size_bytes=d.size)


def from_proto(function: int, d: re_pb2.Digest) -> BlobDigest:
    """A digest from a message the client sent; InvalidArgument names it when malformed."""
    return dg.make_digest(function, d.hash, d.size_bytes)


class BlobMemo:
    """The last few MiB of small blobs read whole (Commands, Directories), by digest.

    A blob is only ever kept after its bytes were verified against its digest, and a digest
    names its bytes forever, so a hit is as good as a fresh read: actions of one build share
    most of their input directories, and each level of a tree cost a round trip to fetch.
    """

    def __init__(self, max_bytes: int = MEMO_BYTES):
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._blobs: OrderedDict[BlobDigest, bytes] = OrderedDict()
        self._total = 0

    def get(self, d: BlobDigest) -> bytes | None:
        with self._lock:
            data = self._blobs.get(d)
            if data is not None:
                self._blobs.move_to_end(d)
            return data

    def put(self, d: BlobDigest, data: bytes) -> None:
        if len(data) > MEMO_BLOB or len(data) > self.max_bytes:
            return
        with self._lock:
            if d in self._blobs:
                return
            self._blobs[d] = data
            self._total += len(data)
            while self._total > self.max_bytes:
                _, old = self._blobs.popitem(last=False)
                self._total -= len(old)


class RemoteCas:
    """Sync client of one instance's CAS and ByteStream on a shared channel."""

    def __init__(self, channel: grpc.Channel, instance: str, max_batch: int | None = None,
                 memo: BlobMemo | None = None):
        self.instance = instance
        self._cas = re_grpc.ContentAddressableStorageStub(channel)
        self._bs = bs_grpc.ByteStreamStub(channel)
        self._caps = re_grpc.CapabilitiesStub(channel)
        self._max_batch = max_batch
        self.memo = memo if memo is not None else BlobMemo()
        self._tree_ok = True  # False once the server said GetTree is UNIMPLEMENTED

    @property
    def max_batch(self) -> int:
        """Bytes of blob data per batch call, from the server's Capabilities (asked once)."""
        if self._max_batch is None:
            limit = DEFAULT_BATCH
            try:
                caps = self._caps.GetCapabilities(
                    re_pb2.GetCapabilitiesRequest(instance_name=self.instance), timeout=30
                )
                limit = caps.cache_capabilities.max_batch_total_size_bytes or DEFAULT_BATCH
            except grpc.RpcError as e:
                log.warning("GetCapabilities failed (%s); assuming batches of %d bytes", e.code(), limit)
            self._max_batch = max(limit - BATCH_OVERHEAD, 1)
        return self._max_batch

    # ---- naming -------------------------------------------------------------

    def _prefix(self) -> str:
        return f"{self.instance}/" if self.instance else ""

    @staticmethod
    def _tail(d: BlobDigest) -> str:
        fn = f"{dg.function_name(d.function)}/" if d.function in dg.NAMED_IN_RESOURCE else ""
        return f"blobs/{fn}{d.hash}/{d.size}"

    def read_resource(self, d: BlobDigest) -> str:
        return self._prefix() + self._tail(d)

    def write_resource(self, d: BlobDigest) -> str:
        return f"{self._prefix()}uploads/{uuid.uuid4()}/{self._tail(d)}"

    # ---- reads --------------------------------------------------------------

    def batches(self, digests: Iterable[BlobDigest]) -> tuple[list[list[BlobDigest]], list[BlobDigest]]:
        """Split distinct non-empty digests into batch groups and a list of large ones."""
        groups: list[list[BlobDigest]] = []
        large: list[BlobDigest] = []
        current: list[BlobDigest] = []
        total = 0
        for d in dict.fromkeys(digests):
            if d.size > self.max_batch:
                large.append(d)
                continue
            if current and total + d.size > self.max_batch:
                groups.append(current)
                current, total = [], 0
            current.append(d)
            total += d.size
        if current:
            groups.append(current)
        return groups, large

    def batch_read(self, digests: list[BlobDigest]) -> Iterator[tuple[BlobDigest, bytes]]:
        """Read one batch group; yields verified blobs, raises MissingBlobs for the rest."""
        if not digests:
            return
        function = digests[0].function
        resp = self._cas.BatchReadBlobs(
            re_pb2.BatchReadBlobsRequest(
                instance_name=self.instance,
                digests=[to_proto(d) for d in digests],
                digest_function=function,
            ),
            timeout=300,
        )
        wanted = {(d.hash, d.size): d for d in digests}
        missing: list[BlobDigest] = []
        for r in resp.responses:
            d = wanted.pop((r.digest.hash, r.digest.size_bytes), None)
            if d is None:
                continue
            if r.status.code != 0 or r.compressor != 0 or not dg.matches(d, r.data):
                missing.append(d)
                continue
            yield d, r.data
        missing.extend(wanted.values())
        if missing:
            raise MissingBlobs(missing)

    def stream_read(self, d: BlobDigest, out: BinaryIO) -> None:
        """Stream one blob into `out`, verifying it; MissingBlobs when absent or corrupted."""
        h = dg.new_hasher(d.function)
        size = 0
        try:
            for r in self._bs.Read(bs_pb2.ReadRequest(resource_name=self.read_resource(d)), timeout=3600):
                h.update(r.data)
                out.write(r.data)
                size += len(r.data)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                raise MissingBlobs([d]) from None
            raise
        if size != d.size or h.hexdigest() != d.hash:
            raise MissingBlobs([d], "corrupted blob")

    def read_small(self, digests: Iterable[BlobDigest]) -> dict[BlobDigest, bytes]:
        """Whole blobs in memory (Directory and Command messages): the memo, then batches,
        ByteStream when large."""
        import io

        digests = list(digests)
        out: dict[BlobDigest, bytes] = {}
        missing: list[BlobDigest] = []
        todo = []
        for d in digests:
            if d.size == 0 and dg.is_empty(d):
                out[d] = b""
                continue
            kept = self.memo.get(d)
            if kept is not None:
                out[d] = kept
            else:
                todo.append(d)
        groups, large = self.batches(todo)
        for group in groups:
            try:
                for d, data in self.batch_read(group):
                    out[d] = data
            except MissingBlobs as e:
                missing.extend(e.digests)
        for d in large:
            buf = io.BytesIO()
            try:
                self.stream_read(d, buf)
            except MissingBlobs as e:
                missing.extend(e.digests)
                continue
            out[d] = buf.getvalue()
        if missing:
            raise MissingBlobs(missing)
        for d in todo:
            self.memo.put(d, out[d])  # verified by batch_read / stream_read
        return out

    def get_tree(self, root: BlobDigest, max_directories: int) -> tuple[dict[BlobDigest, bytes], bool]:
        """The directories under `root` in one GetTree call: {digest: bytes}, and whether there were more
        than `max_directories` (the rest unread).

        GetTree sends messages, not digests: each is serialized again and hashed, and it is known by the
        digest of those bytes, so what it yields is verified by construction. A tree uploaded in
        another (non-canonical) encoding gives other digests; the caller fetches what it does not find
        here by digest. Best effort: an error (or a server without GetTree, asked only once) gives {}.
        """
        if not self._tree_ok:
            return {}, False
        out: dict[BlobDigest, bytes] = {}
        try:
            pages = self._cas.GetTree(
                re_pb2.GetTreeRequest(instance_name=self.instance, root_digest=to_proto(root),
                                      digest_function=root.function),
                timeout=300,
            )
            for page in pages:
                for directory in page.directories:
                    data = directory.SerializeToString(deterministic=True)
                    out[dg.compute(root.function, data)] = data
                if len(out) > max_directories:
                    pages.cancel()
                    return out, True
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                log.info("the server has no GetTree: input trees are read level by level")
                self._tree_ok = False
            elif e.code() != grpc.StatusCode.NOT_FOUND:
                log.debug("GetTree %s failed (%s): reading the tree level by level", root, e.code())
            return {}, False
        return out, False

    # ---- writes -------------------------------------------------------------

    def find_missing(self, digests: Iterable[BlobDigest]) -> list[BlobDigest]:
        todo = [d for d in dict.fromkeys(digests) if not (d.size == 0 and dg.is_empty(d))]
        missing: list[BlobDigest] = []
        for i in range(0, len(todo), FIND_MISSING_CHUNK):
            part = todo[i : i + FIND_MISSING_CHUNK]
            by_key = {(d.hash, d.size): d for d in part}
            resp = self._cas.FindMissingBlobs(
                re_pb2.FindMissingBlobsRequest(
                    instance_name=self.instance,
                    blob_digests=[to_proto(d) for d in part],
                    digest_function=part[0].function,
                ),
                timeout=120,
            )
            missing.extend(by_key[(m.hash, m.size_bytes)] for m in resp.missing_blob_digests
                           if (m.hash, m.size_bytes) in by_key)
        return missing

    def upload(self, blobs: dict[BlobDigest, Callable[[], BinaryIO]]) -> None:
        """Upload what the server lacks. Each value opens the blob's bytes for reading.

        Outputs that fit in SKIP_FIND_MISSING bytes go in one BatchUpdateBlobs without asking
        FindMissingBlobs first: an action's outputs are new more often than not, and resending a
        few hundred KiB costs less than the round trip (and the server's per-call work) of asking.
        """
        present = [d for d in blobs if not (d.size == 0 and dg.is_empty(d))]
        if sum(d.size for d in present) <= min(SKIP_FIND_MISSING, self.max_batch):
            missing = present
        else:
            missing = self.find_missing(blobs)
        groups, large = self.batches(missing)
        for group in groups:
            reqs = []
            for d in group:
                with blobs[d]() as f:
                    reqs.append(re_pb2.BatchUpdateBlobsRequest.Request(digest=to_proto(d), data=f.read()))
            resp = self._cas.BatchUpdateBlobs(
                re_pb2.BatchUpdateBlobsRequest(
                    instance_name=self.instance, requests=reqs, digest_function=group[0].function
                ),
                timeout=300,
            )
            failed = [r for r in resp.responses if r.status.code != 0]
            if failed:
                r = failed[0]
                raise UploadError(
                    f"BatchUpdateBlobs refused {len(failed)} blob(s), first {r.digest.hash}/"
                    f"{r.digest.size_bytes}: {r.status.message}"
                )
        for d in large:
            with blobs[d]() as f:
                self.stream_write(d, f)

    def stream_write(self, d: BlobDigest, f: BinaryIO) -> None:
        name = self.write_resource(d)

        def requests() -> Iterator[bs_pb2.WriteRequest]:
            offset = 0
            while True:
                data = f.read(CHUNK)
                last = offset + len(data) >= d.size or not data
                yield bs_pb2.WriteRequest(
                    resource_name=name if offset == 0 else "", write_offset=offset, data=data, finish_write=last
                )
                offset += len(data)
                if last:
                    return

        try:
            resp = self._bs.Write(requests(), timeout=3600)
        except grpc.RpcError as e:
            # ALREADY_EXISTS: someone else finished this blob first (the spec's early return).
            if e.code() == grpc.StatusCode.ALREADY_EXISTS:
                return
            raise
        if resp.committed_size not in (d.size, -1):
            raise UploadError(f"ByteStream Write of {d} committed {resp.committed_size} bytes")


class UploadError(Exception):
    pass
