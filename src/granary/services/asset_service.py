"""build.bazel.remote.asset.v1 Fetch and Push: thin servicers over granary.asset.assets."""

from __future__ import annotations

from granary._proto.build.bazel.remote.asset.v1 import remote_asset_pb2_grpc as ra_grpc
from granary.asset.assets import RemoteAssets
from granary.services.client_key import ClientKey, peer_host
from granary.services.status import rpc


class FetchService(ra_grpc.FetchServicer):
    """`client_key` names the client the CAS upload of a download counts against (as for ByteStream)."""

    def __init__(self, assets: RemoteAssets, client_key: ClientKey = peer_host):
        self.assets = assets
        self.client_key = client_key

    @rpc
    async def FetchBlob(self, request, context):
        return await self.assets.fetch_blob(request, self.client_key(context))

    @rpc
    async def FetchDirectory(self, request, context):
        return await self.assets.fetch_directory(request, self.client_key(context))


class PushService(ra_grpc.PushServicer):
    def __init__(self, assets: RemoteAssets):
        self.assets = assets

    @rpc
    async def PushBlob(self, request, context):
        return await self.assets.push_blob(request)

    @rpc
    async def PushDirectory(self, request, context):
        return await self.assets.push_directory(request)
