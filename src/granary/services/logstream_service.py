"""build.bazel.remote.logstream.v1.LogStreamService: CreateLogStream for writers of their own
(the server makes the streams of running actions itself). Bytes go through ByteStream."""

from __future__ import annotations

from granary._proto.build.bazel.remote.logstream.v1 import remote_logstream_pb2 as ls_pb2
from granary._proto.build.bazel.remote.logstream.v1 import remote_logstream_pb2_grpc as ls_grpc
from granary.execution.logstreams import LogStreams
from granary.instance import Instances
from granary.services.status import rpc


class LogStreamService(ls_grpc.LogStreamServiceServicer):
    """`parent` is an instance name ("" for the default instance): the stream's names start with it."""

    def __init__(self, instances: Instances, logstreams: LogStreams):
        self.instances = instances
        self.logstreams = logstreams

    @rpc
    async def CreateLogStream(self, request, context):
        self.instances.get(request.parent)  # unknown instance: INVALID_ARGUMENT naming it
        name, write_name = await self.logstreams.create(request.parent)
        return ls_pb2.LogStream(name=name, write_resource_name=write_name)
