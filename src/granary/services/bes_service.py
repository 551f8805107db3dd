"""The Build Event Service (google.devtools.build.v1.PublishBuildEvent) and Granary's query
service over what it stored (granary.builds.v1.BuildEvents). The logic is in granary.bes."""

from __future__ import annotations

from google.protobuf import empty_pb2

from granary.bes.ingest import Ingest
from granary.bes.query import Queries
from granary.services.client_key import ClientKey, peer_host
from granary.services.status import rpc


class PublishBuildEventService:
    def __init__(self, ingest: Ingest, client_key: ClientKey = peer_host):
        self.ingest = ingest
        self.client_key = client_key

    @rpc
    async def PublishLifecycleEvent(self, request, context):
        await self.ingest.lifecycle(request)
        return empty_pb2.Empty()

    @rpc
    async def PublishBuildToolEventStream(self, request_iterator, context):
        async for acks in self.ingest.publish(request_iterator, self.client_key(context)):
            for ack in acks:
                yield ack


class BuildEventsService:
    def __init__(self, queries: Queries):
        self.queries = queries

    @rpc
    async def QueryEvents(self, request, context):
        return await self.queries.query_events(request)

    @rpc
    async def ListInvocations(self, request, context):
        return await self.queries.list_invocations(request)

    @rpc
    async def GetInvocation(self, request, context):
        return await self.queries.get_invocation(request)
