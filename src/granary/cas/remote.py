"""A CAS that is another REAPI server, reached over gRPC.

FindMissingBlobs, BatchUpdateBlobs and BatchReadBlobs go to the remote in
batches sized by the remote's own max_batch_total_size_bytes (asked once
from its Capabilities); blobs too large for a batch travel over ByteStream.
The remote verifies every write, so a broken or aborted ByteStream write
leaves nothing readable there. Used alone it makes Granary a pass-through
proxy; under `tiered` it makes Granary a local cache in front of it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from itertools import groupby

import grpc

from granary import digest as dg
from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from granary._proto.google.bytestream import bytestream_pb2 as bs_pb2
from granary._proto.google.bytestream import bytestream_pb2_grpc as bs_grpc
from granary.cas.blobstore import READ_CHUNK, BlobStore, BlobWriter
from granary.cas.verify import keep_verified, verified_read
from granary.digest import BlobDigest
from granary.errors import BlobNotFound
from granary.remote_endpoint import RemoteEndpoint, error_for, rpc_error

_FMB_CHUNK = 10_000  # digests per FindMissingBlobs request
_PER_BLOB_OVERHEAD = 256  # bytes of framing counted against the batch budget
_DEFAULT_BATCH = 4_000_000
_NOT_FOUND = grpc.StatusCode.NOT_FOUND.value[0]


def to_proto(d: BlobDigest) -> re_pb2.Digest:
    return re_pb2.Digest(hash=d.hash, size_bytes=d.size)


def resource_tail(d: BlobDigest) -> str:
    fn = f"{dg.function_name(d.function)}/" if d.function in dg.NAMED_IN_RESOURCE else ""
    return f"blobs/{fn}{d.hash}/{d.size}"


class RemoteBlobStore(BlobStore):
    name = "remote"
    supports_delete = False
    supports_listing = False

    def __init__(self, endpoint: RemoteEndpoint, *, instance_name: str = "", max_batch_size: int = 0):
        self.endpoint = endpoint
        self.instance_name = instance_name
        self.max_batch_size = max_batch_size  # 0: what the remote advertises
        self._batch: int | None = None
        self._cas: re_grpc.ContentAddressableStorageStub | None = None
        self._bs: bs_grpc.ByteStreamStub | None = None

    def _stubs(self) -> tuple[re_grpc.ContentAddressableStorageStub, bs_grpc.ByteStreamStub]:
        if self._cas is None or self._bs is None:
            channel = self.endpoint.channel()
            self._cas = re_grpc.ContentAddressableStorageStub(channel)
            self._bs = bs_grpc.ByteStreamStub(channel)
        return self._cas, self._bs

    def _kw(self) -> dict:
        return {"metadata": self.endpoint.metadata, "timeout": self.endpoint.timeout}

    async def batch_budget(self) -> int:
        if self._batch is None:
            caps = re_grpc.CapabilitiesStub(self.endpoint.channel())
            try:
                reply = await caps.GetCapabilities(
                    re_pb2.GetCapabilitiesRequest(instance_name=self.instance_name), **self._kw()
                )
                advertised = reply.cache_capabilities.max_batch_total_size_bytes or _DEFAULT_BATCH
            except grpc.aio.AioRpcError as e:
                if e.code() != grpc.StatusCode.UNIMPLEMENTED:
                    raise rpc_error(e, "GetCapabilities") from None
                advertised = _DEFAULT_BATCH
            advertised = min(advertised, 60 << 20)  # stay under the channel's message limit
            self._batch = min(advertised, self.max_batch_size) if self.max_batch_size else advertised
        return self._batch

    def _resource(self, tail: str) -> str:
        return f"{self.instance_name}/{tail}" if self.instance_name else tail

    # ---- FindMissingBlobs ---------------------------------------------------

    async def find_missing(self, digests: Sequence[BlobDigest]) -> list[BlobDigest]:
        cas, _ = self._stubs()
        requests = []
        for function, group in _by_function(digests):
            for start in range(0, len(group), _FMB_CHUNK):
                requests.append(re_pb2.FindMissingBlobsRequest(
                    instance_name=self.instance_name,
                    blob_digests=[to_proto(d) for d in group[start : start + _FMB_CHUNK]],
                    digest_function=function,
                ))
        try:
            replies = await asyncio.gather(*(cas.FindMissingBlobs(r, **self._kw()) for r in requests))
        except grpc.aio.AioRpcError as e:
            raise rpc_error(e, "FindMissingBlobs") from None
        missing = {(m.hash, m.size_bytes) for reply in replies for m in reply.missing_blob_digests}
        return [d for d in digests if (d.hash, d.size) in missing]

    # ---- batches ------------------------------------------------------------

    async def _batches(self, digests: Sequence[BlobDigest]) -> tuple[list[list[BlobDigest]], list[BlobDigest]]:
        """Split into batches under the remote's budget, and blobs too big for any batch."""
        budget = await self.batch_budget()
        batches: list[list[BlobDigest]] = []
        large: list[BlobDigest] = []
        for _, group in _by_function(digests):
            current: list[BlobDigest] = []
            used = 0
            for d in group:
                cost = d.size + _PER_BLOB_OVERHEAD
                if cost > budget:
                    large.append(d)
                    continue
                if used + cost > budget:
                    batches.append(current)
                    current, used = [], 0
                current.append(d)
                used += cost
            if current:
                batches.append(current)
        return batches, large

    async def get_many(self, digests: Sequence[BlobDigest]) -> dict[BlobDigest, bytes]:
        batches, large = await self._batches(list(dict.fromkeys(digests)))
        out: dict[BlobDigest, bytes] = {}
        results = await asyncio.gather(
            *(self._batch_read(b) for b in batches), *(self._read_whole(d) for d in large)
        )
        for r in results:
            out.update(r)
        return keep_verified(self.name, out)

    async def _batch_read(self, batch: list[BlobDigest]) -> dict[BlobDigest, bytes]:
        cas, _ = self._stubs()
        wanted = {(d.hash, d.size): d for d in batch}
        try:
            reply = await cas.BatchReadBlobs(
                re_pb2.BatchReadBlobsRequest(
                    instance_name=self.instance_name,
                    digests=[to_proto(d) for d in batch],
                    digest_function=batch[0].function,
                ),
                **self._kw(),
            )
        except grpc.aio.AioRpcError as e:
            raise rpc_error(e, "BatchReadBlobs") from None
        out = {}
        for r in reply.responses:
            d = wanted.get((r.digest.hash, r.digest.size_bytes))
            if d is None or r.status.code == _NOT_FOUND:
                continue
            if r.status.code:
                raise error_for(r.status.code, r.status.message, f"BatchReadBlobs of {d}")
            if len(r.data) == d.size:
                out[d] = r.data
        return out

    async def _read_whole(self, d: BlobDigest) -> dict[BlobDigest, bytes]:
        try:
            chunks = [c async for c in await self.read_unverified(d)]
        except BlobNotFound:
            return {}
        return {d: b"".join(chunks)}

    async def put_many(self, blobs: Sequence[tuple[BlobDigest, bytes]]) -> None:
        data = {d: b for d, b in blobs}
        batches, large = await self._batches(list(data))
        await asyncio.gather(
            *(self._batch_update([(d, data[d]) for d in b]) for b in batches),
            *(self._write_whole(d, data[d]) for d in large),
        )

    async def _batch_update(self, batch: list[tuple[BlobDigest, bytes]]) -> None:
        cas, _ = self._stubs()
        try:
            reply = await cas.BatchUpdateBlobs(
                re_pb2.BatchUpdateBlobsRequest(
                    instance_name=self.instance_name,
                    requests=[re_pb2.BatchUpdateBlobsRequest.Request(digest=to_proto(d), data=b) for d, b in batch],
                    digest_function=batch[0][0].function,
                ),
                **self._kw(),
            )
        except grpc.aio.AioRpcError as e:
            raise rpc_error(e, "BatchUpdateBlobs") from None
        for r in reply.responses:
            if r.status.code:
                raise error_for(r.status.code, r.status.message,
                                f"BatchUpdateBlobs of {r.digest.hash}/{r.digest.size_bytes}")

    async def _write_whole(self, d: BlobDigest, data: bytes) -> None:
        writer = await self.open_writer(d)
        try:
            view = memoryview(data)
            for start in range(0, len(view), READ_CHUNK):
                await writer.write(bytes(view[start : start + READ_CHUNK]))
            await writer.commit()
        except BaseException:
            await writer.abort()
            raise

    async def delete(self, digests: Sequence[BlobDigest]) -> None:
        return None  # REAPI has no way to delete; the remote expires blobs itself

    # ---- ByteStream -----------------------------------------------------------

    async def read(self, digest: BlobDigest, offset: int = 0, limit: int = 0) -> AsyncIterator[bytes]:
        """Verified before the first byte (granary.cas.verify): a ranged read fetches the whole blob."""
        return await verified_read(self.name, self.read_unverified, digest, offset, limit)

    async def read_unverified(self, digest: BlobDigest, offset: int = 0, limit: int = 0) -> AsyncIterator[bytes]:
        """The remote's bytes as they come (for a caller that verifies them itself)."""
        _, bs = self._stubs()
        call = bs.Read(
            bs_pb2.ReadRequest(resource_name=self._resource(resource_tail(digest)), read_offset=offset,
                               read_limit=max(limit, 0)),
            **self._kw(),
        )
        try:
            first = await call.read()
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                raise BlobNotFound(digest) from None
            raise rpc_error(e, f"ByteStream.Read of {digest}") from None
        return _rest(call, first, digest)

    async def open_writer(self, digest: BlobDigest) -> BlobWriter:
        return _ByteStreamWriter(self, digest)

    async def close(self) -> None:
        await self.endpoint.close()


class _ByteStreamWriter(BlobWriter):
    def __init__(self, store: RemoteBlobStore, digest: BlobDigest):
        self._store = store
        self._digest = digest
        self._name = store._resource(f"uploads/{uuid.uuid4()}/{resource_tail(digest)}")
        self._call: grpc.aio.StreamUnaryCall | None = None
        self._offset = 0
        self._finished_early = False

    async def write(self, chunk: bytes) -> None:
        if self._finished_early or not chunk:
            return
        await self._send(bs_pb2.WriteRequest(
            resource_name=self._name if self._call is None else "", write_offset=self._offset, data=chunk
        ))
        self._offset += len(chunk)

    async def _send(self, request: bs_pb2.WriteRequest) -> None:
        if self._call is None:
            _, bs = self._store._stubs()
            self._call = bs.Write(**self._store._kw())
        try:
            await self._call.write(request)
        except asyncio.InvalidStateError:
            self._finished_early = True  # the remote already has the blob and closed the stream
        except grpc.aio.AioRpcError as e:
            raise rpc_error(e, f"ByteStream.Write of {self._digest}") from None

    async def commit(self) -> None:
        if not self._finished_early:
            await self._send(bs_pb2.WriteRequest(
                resource_name=self._name if self._call is None else "", write_offset=self._offset,
                finish_write=True,
            ))
        assert self._call is not None
        try:
            if not self._finished_early:
                await self._call.done_writing()
            reply = await self._call
        except asyncio.InvalidStateError:
            reply = await self._call
        except grpc.aio.AioRpcError as e:
            raise rpc_error(e, f"ByteStream.Write of {self._digest}") from None
        if reply.committed_size not in (self._digest.size, -1):
            raise error_for(grpc.StatusCode.DATA_LOSS, f"committed {reply.committed_size} bytes",
                            f"ByteStream.Write of {self._digest}")

    async def abort(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None


async def _rest(call, first: bs_pb2.ReadResponse, digest: BlobDigest) -> AsyncIterator[bytes]:
    try:
        if first is not grpc.aio.EOF and first.data:
            yield first.data
        if first is grpc.aio.EOF:
            return
        while True:
            msg = await call.read()
            if msg is grpc.aio.EOF:
                return
            yield msg.data
    except grpc.aio.AioRpcError as e:
        if e.code() == grpc.StatusCode.NOT_FOUND:
            raise BlobNotFound(digest) from None
        raise rpc_error(e, f"ByteStream.Read of {digest}") from None
    finally:
        call.cancel()


def _by_function(digests: Sequence[BlobDigest]) -> list[tuple[int, list[BlobDigest]]]:
    ordered = sorted(digests, key=lambda d: d.function)
    return [(fn, list(group)) for fn, group in groupby(ordered, key=lambda d: d.function)]
