"""ContentAddressableStorage gRPC service: parse, check, call the instance's CAS."""

from __future__ import annotations

from granary import digest as dg
from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from granary.errors import GranaryError, InvalidArgument, Unimplemented
from granary.instance import Instances
from granary.services.status import rpc, status_of


class CasService(re_grpc.ContentAddressableStorageServicer):
    def __init__(self, instances: Instances):
        self.instances = instances

    @rpc
    async def FindMissingBlobs(self, request, context):
        cas = self.instances.get(request.instance_name).cas
        cas.check_digest_count(len(request.blob_digests), "FindMissingBlobs")
        if request.digest_function:
            dg.resolve_function(request.digest_function, "")
        missing = await cas.find_missing_protos(request.digest_function, request.blob_digests)
        response = re_pb2.FindMissingBlobsResponse()
        response.missing_blob_digests.extend(missing)
        return response

    @rpc
    async def BatchUpdateBlobs(self, request, context):
        cas = self.instances.get(request.instance_name).cas
        cas.check_batch_claims([r.digest.size_bytes for r in request.requests], "BatchUpdateBlobs")
        cas.check_batch_size(sum(len(r.data) for r in request.requests), "BatchUpdateBlobs")
        fn = request.digest_function
        response = re_pb2.BatchUpdateBlobsResponse()
        items = []
        slots = []
        for r in request.requests:
            entry = response.responses.add()
            entry.digest.CopyFrom(r.digest)
            try:
                d = dg.make_digest(fn, r.digest.hash, r.digest.size_bytes)
            except GranaryError as e:
                entry.status.CopyFrom(status_of(e))
                continue
            items.append((d, r.data, r.compressor))
            slots.append(entry)
        for entry, result in zip(slots, await cas.batch_update(items)):
            if result.error is not None:
                entry.status.CopyFrom(status_of(result.error))
        return response

    @rpc
    async def BatchReadBlobs(self, request, context):
        cas = self.instances.get(request.instance_name).cas
        cas.check_batch_claims([d.size_bytes for d in request.digests], "BatchReadBlobs")
        fn = request.digest_function
        response = re_pb2.BatchReadBlobsResponse()
        digests = []
        slots = []
        for pd in request.digests:
            entry = response.responses.add()
            entry.digest.CopyFrom(pd)
            try:
                digests.append(dg.make_digest(fn, pd.hash, pd.size_bytes))
                slots.append(entry)
            except GranaryError as e:
                entry.status.CopyFrom(status_of(e))
        results = await cas.batch_read(digests, list(request.acceptable_compressors))
        for entry, result in zip(slots, results):
            if result.error is not None:
                entry.status.CopyFrom(status_of(result.error))
            else:
                entry.data = result.data
                entry.compressor = result.compressor
        return response

    @rpc
    async def GetTree(self, request, context):
        cas = self.instances.get(request.instance_name).cas
        if not request.HasField("root_digest"):
            raise InvalidArgument("GetTree needs a root_digest")
        root = dg.from_proto(request.digest_function, request.root_digest)
        pages = await cas.get_tree(root, request.page_size, request.page_token)
        async for directories, token in pages:
            yield re_pb2.GetTreeResponse(directories=directories, next_page_token=token)

    @rpc
    async def SplitBlob(self, request, context):
        raise Unimplemented("SplitBlob is not offered by this server")

    @rpc
    async def SpliceBlob(self, request, context):
        raise Unimplemented("SpliceBlob is not offered by this server")

