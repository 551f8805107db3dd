"""google.bytestream.ByteStream for the CAS: Read, Write, QueryWriteStatus."""

from __future__ import annotations

from granary._proto.google.bytestream import bytestream_pb2 as bs_pb2
from granary._proto.google.bytestream import bytestream_pb2_grpc as bs_grpc
from granary.cas import bytestream
from granary.errors import InvalidArgument
from granary.instance import Instances
from granary.resource_names import parse_read, parse_write
from granary.services.client_key import ClientKey, peer_host
from granary.services.registry import Malformed
from granary.services.status import rpc


def _checked(request):
    if type(request) is Malformed:
        raise InvalidArgument(request.describe())
    return request


class ByteStreamService(bs_grpc.ByteStreamServicer):
    """`client_key` names the client an upload counts against (max_uploads_per_client)."""

    def __init__(self, instances: Instances, client_key: ClientKey = peer_host):
        self.instances = instances
        self.client_key = client_key

    @rpc
    async def Read(self, request, context):
        res = parse_read(request.resource_name)
        cas = self.instances.get(res.instance).cas
        chunks = await bytestream.read(cas, res, request.read_offset, request.read_limit)
        async for chunk in chunks:
            yield bs_pb2.ReadResponse(data=chunk)

    @rpc
    async def Write(self, request_iterator, context):
        iterator = request_iterator.__aiter__()
        try:
            first = _checked(await iterator.__anext__())
        except StopAsyncIteration:
            raise InvalidArgument("Write stream ended before its first request") from None
        res = parse_write(first.resource_name)
        cas = self.instances.get(res.instance).cas

        async def next_chunk():
            try:
                return _checked(await iterator.__anext__())
            except StopAsyncIteration:
                return None

        committed = await bytestream.write(cas, res, first, next_chunk, self.client_key(context))
        return bs_pb2.WriteResponse(committed_size=committed)

    @rpc
    async def QueryWriteStatus(self, request, context):
        res = parse_write(request.resource_name)
        cas = self.instances.get(res.instance).cas
        committed, complete = await bytestream.query_write_status(cas, res)
        return bs_pb2.QueryWriteStatusResponse(committed_size=committed, complete=complete)
