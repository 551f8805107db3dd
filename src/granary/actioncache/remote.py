"""An Action Cache that is another REAPI server's, reached over gRPC.

Entries are sent as UpdateActionResult and fetched with GetActionResult;
the local ActionCache still checks every result's blobs against its own CAS
before handing it out. The remote instance name is `instance_name` when set,
otherwise the local instance name, so a proxy passes names through.
"""

from __future__ import annotations

import grpc

from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from granary.actioncache.keys import split_key
from granary.actioncache.store import ActionCacheStore
from granary.cas.remote import to_proto
from granary.errors import InvalidArgument
from granary.remote_endpoint import RemoteEndpoint, rpc_error


class RemoteActionCacheStore(ActionCacheStore):
    name = "remote"

    def __init__(self, endpoint: RemoteEndpoint, *, instance_name: str | None = None):
        self.endpoint = endpoint
        self.instance_name = instance_name
        self._stub: re_grpc.ActionCacheStub | None = None

    def _ac(self) -> re_grpc.ActionCacheStub:
        if self._stub is None:
            self._stub = re_grpc.ActionCacheStub(self.endpoint.channel())
        return self._stub

    def _split(self, key: str):
        parts = split_key(key)
        if parts is None:
            raise InvalidArgument(f"action cache key {key!r} does not name an action digest")
        namespace, action = parts
        return (namespace if self.instance_name is None else self.instance_name), action

    async def get(self, key: str) -> bytes | None:
        instance, action = self._split(key)
        try:
            result = await self._ac().GetActionResult(
                re_pb2.GetActionResultRequest(
                    instance_name=instance, action_digest=to_proto(action), digest_function=action.function
                ),
                metadata=self.endpoint.metadata, timeout=self.endpoint.timeout,
            )
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise rpc_error(e, "GetActionResult") from None
        return result.SerializeToString(deterministic=True)

    async def put(self, key: str, value: bytes) -> None:
        await self._update(key, value)

    async def put_if_absent(self, key: str, value: bytes) -> bytes | None:
        """A stored result if there is one, else one UpdateActionResult, whose reply is what the
        remote stored.

        REAPI has no conditional write, so this is atomic exactly when the remote keeps the
        first result itself (a Granary with `write_once: true` on that instance replies with
        the result it kept): then of concurrent writers one wins and the others are told its
        result. A remote that overwrites makes the last writer win, as `put` would.
        """
        existing = await self.get(key)  # the common case, answered without writing
        if existing is not None:
            return existing
        stored = await self._update(key, value)
        return None if stored == value else stored

    async def _update(self, key: str, value: bytes) -> bytes:
        instance, action = self._split(key)
        result = re_pb2.ActionResult()
        result.ParseFromString(value)
        try:
            reply = await self._ac().UpdateActionResult(
                re_pb2.UpdateActionResultRequest(
                    instance_name=instance, action_digest=to_proto(action), action_result=result,
                    digest_function=action.function,
                ),
                metadata=self.endpoint.metadata, timeout=self.endpoint.timeout,
            )
        except grpc.aio.AioRpcError as e:
            raise rpc_error(e, "UpdateActionResult") from None
        return reply.SerializeToString(deterministic=True)

    async def delete(self, key: str) -> None:
        return None  # REAPI cannot delete; the remote checks its own entries' completeness

    async def close(self) -> None:
        await self.endpoint.close()
