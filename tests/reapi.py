"""A small REAPI client for tests and benchmarks (real gRPC stubs)."""

from __future__ import annotations

import hashlib
import uuid

import grpc

from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from granary._proto.google.bytestream import bytestream_pb2 as bs_pb2
from granary._proto.google.bytestream import bytestream_pb2_grpc as bs_grpc

MAX_MSG = 64 << 20


def digest(data: bytes, fn=hashlib.sha256) -> re_pb2.Digest:
    return re_pb2.Digest(hash=fn(data).hexdigest(), size_bytes=len(data))


class Client:
    def __init__(self, address: str, instance: str = ""):
        self.channel = grpc.insecure_channel(
            address,
            options=[("grpc.max_receive_message_length", MAX_MSG), ("grpc.max_send_message_length", MAX_MSG)],
        )
        self.instance = instance
        self.cas = re_grpc.ContentAddressableStorageStub(self.channel)
        self.ac = re_grpc.ActionCacheStub(self.channel)
        self.caps = re_grpc.CapabilitiesStub(self.channel)
        self.bs = bs_grpc.ByteStreamStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def upload(self, *blobs: bytes, instance: str | None = None) -> list[re_pb2.Digest]:
        inst = self.instance if instance is None else instance
        reqs = [re_pb2.BatchUpdateBlobsRequest.Request(digest=digest(b), data=b) for b in blobs]
        resp = self.cas.BatchUpdateBlobs(re_pb2.BatchUpdateBlobsRequest(instance_name=inst, requests=reqs))
        for r in resp.responses:
            assert r.status.code == 0, r.status
        return [r.digest for r in reqs]

    def missing(self, digests, instance: str | None = None) -> list[re_pb2.Digest]:
        inst = self.instance if instance is None else instance
        return list(
            self.cas.FindMissingBlobs(
                re_pb2.FindMissingBlobsRequest(instance_name=inst, blob_digests=digests)
            ).missing_blob_digests
        )

    def write_resource(self, d: re_pb2.Digest, instance: str | None = None, compressor: str = "") -> str:
        inst = self.instance if instance is None else instance
        prefix = f"{inst}/" if inst else ""
        kind = f"compressed-blobs/{compressor}" if compressor else "blobs"
        return f"{prefix}uploads/{uuid.uuid4()}/{kind}/{d.hash}/{d.size_bytes}"

    def read_resource(self, d: re_pb2.Digest, instance: str | None = None, compressor: str = "") -> str:
        inst = self.instance if instance is None else instance
        prefix = f"{inst}/" if inst else ""
        kind = f"compressed-blobs/{compressor}" if compressor else "blobs"
        return f"{prefix}{kind}/{d.hash}/{d.size_bytes}"

    def bs_write(self, data: bytes, chunk: int = 1 << 20, resource: str | None = None, d=None) -> int:
        d = d or digest(data)
        name = resource or self.write_resource(d)

        def gen():
            if not data:
                yield bs_pb2.WriteRequest(resource_name=name, write_offset=0, finish_write=True)
                return
            for off in range(0, len(data), chunk):
                part = data[off : off + chunk]
                yield bs_pb2.WriteRequest(
                    resource_name=name if off == 0 else "",
                    write_offset=off,
                    data=part,
                    finish_write=off + len(part) >= len(data),
                )

        return self.bs.Write(gen()).committed_size

    def bs_read(self, d: re_pb2.Digest, offset: int = 0, limit: int = 0, resource: str | None = None) -> bytes:
        name = resource or self.read_resource(d)
        return b"".join(
            r.data for r in self.bs.Read(bs_pb2.ReadRequest(resource_name=name, read_offset=offset, read_limit=limit))
        )
