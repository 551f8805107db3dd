"""ActionCache gRPC service."""

from __future__ import annotations

from granary import digest as dg
from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from granary.errors import InvalidArgument, Unimplemented
from granary.instance import Instances
from granary.services.status import rpc


class ActionCacheService(re_grpc.ActionCacheServicer):
    def __init__(self, instances: Instances):
        self.instances = instances

    def _cache(self, name: str):
        ac = self.instances.get(name).action_cache
        if ac is None:
            raise Unimplemented(f"instance {name!r} has no action cache")
        return ac

    @rpc
    async def GetActionResult(self, request, context):
        ac = self._cache(request.instance_name)
        if not request.HasField("action_digest"):
            raise InvalidArgument("GetActionResult needs an action_digest")
        action = dg.from_proto(request.digest_function, request.action_digest)
        return await ac.get(
            action,
            inline_stdout=request.inline_stdout,
            inline_stderr=request.inline_stderr,
            inline_output_files=request.inline_output_files,
        )

    @rpc
    async def UpdateActionResult(self, request, context):
        ac = self._cache(request.instance_name)
        if not request.HasField("action_digest"):
            raise InvalidArgument("UpdateActionResult needs an action_digest")
        action = dg.from_proto(request.digest_function, request.action_digest)
        return await ac.update(action, request.action_result)
