"""Capabilities: what this server really implements, per instance."""

from __future__ import annotations

from granary import compression
from granary import digest as dg
from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from granary._proto.build.bazel.semver import semver_pb2
from granary.instance import Instance, Instances
from granary.services.status import rpc

LOW_API = semver_pb2.SemVer(major=2, minor=0)  # Bazel 4.2.3 refuses anything above 2.0
HIGH_API = semver_pb2.SemVer(major=2, minor=3)


def cache_capabilities(inst: Instance) -> re_pb2.CacheCapabilities:
    ac = inst.action_cache
    return re_pb2.CacheCapabilities(
        digest_functions=list(dg.SUPPORTED),
        action_cache_update_capabilities=re_pb2.ActionCacheUpdateCapabilities(
            update_enabled=bool(ac and ac.allow_updates)
        ),
        cache_priority_capabilities=re_pb2.PriorityCapabilities(
            priorities=[re_pb2.PriorityCapabilities.PriorityRange(min_priority=0, max_priority=0)]
        ),
        max_batch_total_size_bytes=inst.cas.max_batch_bytes,
        symlink_absolute_path_strategy=re_pb2.SymlinkAbsolutePathStrategy.ALLOWED,
        supported_compressors=list(compression.SUPPORTED),
        supported_batch_update_compressors=list(compression.SUPPORTED),
    )


class CapabilitiesService(re_grpc.CapabilitiesServicer):
    def __init__(self, instances: Instances):
        self.instances = instances

    @rpc
    async def GetCapabilities(self, request, context):
        inst = self.instances.get(request.instance_name)
        caps = re_pb2.ServerCapabilities(
            cache_capabilities=cache_capabilities(inst),
            low_api_version=LOW_API,
            high_api_version=HIGH_API,
        )
        execution = inst.extras.get("execution_capabilities")
        if execution is not None:
            caps.execution_capabilities.CopyFrom(execution)
        return caps
