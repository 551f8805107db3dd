"""On the gRPC port: the standard health service (grpc.health.v1) and server reflection (v1alpha, which
grpcurl falls back to), so that load balancers and grpcurl work.

Health answers SERVING for "" (the server) and every service it serves, and NOT_SERVING for all of
them once the server drains (a load balancer then sends new calls elsewhere; Watch streams hear it).
With auth configured, health is public and reflection needs credentials (auth/interceptor.py).
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection


class HealthAndReflection:
    def __init__(self, server: grpc.aio.Server, services: Iterable[str]):
        self.services = [*services, health.SERVICE_NAME, reflection.SERVICE_NAME]
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(self.services, server)

    async def serving(self) -> None:
        for name in (health.OVERALL_HEALTH, *self.services):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def draining(self) -> None:
        """Every service NOT_SERVING from now on (the server is shutting down)."""
        await self.health.enter_graceful_shutdown()
