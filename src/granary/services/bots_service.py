"""Remote Workers API Bots service: bot sessions and their leases."""

from __future__ import annotations

from granary._proto.google.devtools.remoteworkers.v1test2 import bots_pb2_grpc
from granary.execution.botsessions import BotSessions
from granary.services.status import rpc


class BotsService(bots_pb2_grpc.BotsServicer):
    def __init__(self, bots: BotSessions):
        self.bots = bots

    @rpc
    async def CreateBotSession(self, request, context):
        return await self.bots.create(request.parent, request.bot_session, context.time_remaining())

    @rpc
    async def UpdateBotSession(self, request, context):
        return await self.bots.update(request.name, request.bot_session, context.time_remaining())
