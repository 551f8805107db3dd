"""google.bytestream.ByteStream: Read, Write, QueryWriteStatus of CAS blobs and of log streams.

The resource name says which (resource_names.read_target / write_target): CAS blobs go to the
instance's CAS (cas/bytestream.py), `.../logstreams/...` names to the live output streams
(execution/logstreams.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from granary._proto.google.bytestream import bytestream_pb2 as bs_pb2
from granary._proto.google.bytestream import bytestream_pb2_grpc as bs_grpc
from granary.cas import bytestream
from granary.errors import InvalidArgument, Unimplemented
from granary.instance import Instances
from granary.resource_names import LogStreamResource, read_target, write_target
from granary.services.client_key import ClientKey, peer_host
from granary.services.registry import Malformed
from granary.services.status import rpc

if TYPE_CHECKING:
    from granary.execution.logstreams import LogStreams


def _checked(request):
    if type(request) is Malformed:
        raise InvalidArgument(request.describe())
    return request


class ByteStreamService(bs_grpc.ByteStreamServicer):
    """`client_key` names the client an upload counts against (max_uploads_per_client);
    `logstreams` serves log stream names (None: this server has none)."""

    def __init__(self, instances: Instances, client_key: ClientKey = peer_host, logstreams: LogStreams | None = None):
        self.instances = instances
        self.client_key = client_key
        self.logstreams = logstreams

    def _logs(self, res: LogStreamResource) -> LogStreams:
        self.instances.get(res.instance)  # an unknown instance is refused as for blobs
        if self.logstreams is None:
            raise Unimplemented(f"{res.read_name!r}: this server keeps no log streams"
                                " (execution is off, or execution.logstream.enabled is false)")
        return self.logstreams

    @rpc
    async def Read(self, request, context):
        res = read_target(request.resource_name)
        if isinstance(res, LogStreamResource):
            chunks = await self._logs(res).read(res, request.read_offset, request.read_limit)
        else:
            chunks = await bytestream.read(self.instances.get(res.instance).cas, res, request.read_offset,
                                           request.read_limit)
        async for chunk in chunks:
            yield bs_pb2.ReadResponse(data=chunk)

    @rpc
    async def Write(self, request_iterator, context):
        iterator = request_iterator.__aiter__()
        try:
            first = _checked(await iterator.__anext__())
        except StopAsyncIteration:
            raise InvalidArgument("Write stream ended before its first request") from None
        res = write_target(first.resource_name)

        async def next_chunk():
            try:
                return _checked(await iterator.__anext__())
            except StopAsyncIteration:
                return None

        if isinstance(res, LogStreamResource):
            committed = await self._logs(res).write(res, first, next_chunk)
        else:
            cas = self.instances.get(res.instance).cas
            committed = await bytestream.write(cas, res, first, next_chunk, self.client_key(context))
        return bs_pb2.WriteResponse(committed_size=committed)

    @rpc
    async def QueryWriteStatus(self, request, context):
        res = write_target(request.resource_name)
        if isinstance(res, LogStreamResource):
            committed, complete = await self._logs(res).query_write_status(res)
        else:
            committed, complete = await bytestream.query_write_status(self.instances.get(res.instance).cas, res)
        return bs_pb2.QueryWriteStatusResponse(committed_size=committed, complete=complete)
