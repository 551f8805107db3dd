"""google.longrunning Operations service over execution operations."""

from __future__ import annotations

from google.longrunning import operations_pb2_grpc
from google.protobuf import empty_pb2

from granary.execution.scheduler import Scheduler
from granary.services.status import rpc


class OperationsService(operations_pb2_grpc.OperationsServicer):
    def __init__(self, scheduler: Scheduler):
        self.scheduler = scheduler

    @rpc
    async def GetOperation(self, request, context):
        return await self.scheduler.get_operation(request.name)

    @rpc
    async def ListOperations(self, request, context):
        return await self.scheduler.list_operations(
            request.name, request.filter, request.page_size, request.page_token
        )

    @rpc
    async def CancelOperation(self, request, context):
        await self.scheduler.cancel_operation(request.name)
        return empty_pb2.Empty()

    @rpc
    async def DeleteOperation(self, request, context):
        await self.scheduler.delete_operation(request.name)
        return empty_pb2.Empty()
