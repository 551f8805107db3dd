"""google.longrunning Operations service over execution operations.

`callers()` names the caller of the current call (execution/owners.py): it sees and changes
only its own operations unless it is admin on their instance."""

from __future__ import annotations

from google.longrunning import operations_pb2_grpc
from google.protobuf import empty_pb2

from granary.execution.owners import CallerOf, everyone
from granary.execution.scheduler import Scheduler
from granary.services.status import rpc


class OperationsService(operations_pb2_grpc.OperationsServicer):
    def __init__(self, scheduler: Scheduler, callers: CallerOf = everyone):
        self.scheduler = scheduler
        self.callers = callers

    @rpc
    async def GetOperation(self, request, context):
        return await self.scheduler.get_operation(request.name, self.callers())

    @rpc
    async def ListOperations(self, request, context):
        return await self.scheduler.list_operations(
            request.name, request.filter, request.page_size, request.page_token, self.callers()
        )

    @rpc
    async def CancelOperation(self, request, context):
        await self.scheduler.cancel_operation(request.name, self.callers())
        return empty_pb2.Empty()

    @rpc
    async def DeleteOperation(self, request, context):
        await self.scheduler.delete_operation(request.name, self.callers())
        return empty_pb2.Empty()
