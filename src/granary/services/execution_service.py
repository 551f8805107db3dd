"""Execution gRPC service: Execute and WaitExecution stream Operations."""

from __future__ import annotations

from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from granary.execution.owners import CallerOf, everyone
from granary.execution.scheduler import Scheduler, request_metadata
from granary.instance import Instances
from granary.services.status import rpc

METADATA_HEADER = "build.bazel.remote.execution.v2.requestmetadata-bin"


def metadata_header(context) -> bytes | None:
    for key, value in context.invocation_metadata() or ():
        if key == METADATA_HEADER:
            return value if isinstance(value, bytes) else value.encode()
    return None


class ExecutionService(re_grpc.ExecutionServicer):
    def __init__(self, instances: Instances, scheduler: Scheduler, callers: CallerOf = everyone):
        self.instances = instances
        self.scheduler = scheduler
        self.callers = callers  # who owns the operations made and may wait on them

    @rpc
    async def Execute(self, request, context):
        inst = self.instances.get(request.instance_name)
        md = request_metadata(metadata_header(context))
        async for operation in await self.scheduler.execute(inst, request, md, self.callers()):
            yield operation

    @rpc
    async def WaitExecution(self, request, context):
        async for operation in self.scheduler.follow(request.name, caller=self.callers()):
            yield operation
