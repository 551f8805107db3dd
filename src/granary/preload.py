"""What a server process runs on, imported once by the supervisor before it forks them.

Every server process forked afterwards shares these modules' pages copy-on-write
(gc.freeze in supervisor.fork_server keeps its garbage collector off them) instead of
importing its own copy: about 45 MiB of a server's memory here (gRPC, protobuf and the
generated REAPI modules, pydantic and the configuration models, SQLAlchemy, the stores
and services).

Imports only: nothing here may start a thread, an event loop, gRPC's core or a
connection, which a fork would copy half-made. What server.py imports at its top comes
with it; what it imports later (in functions) for this configuration is named below. A
module missed here still works: the server process imports its own copy.
"""

from __future__ import annotations

from granary.config import Config


def preload_server(cfg: Config) -> None:
    import uvloop  # noqa: F401

    from granary import server  # noqa: F401 - gRPC, protobuf, auth, stores, services

    if cfg.execution is not None:  # server.add_execution_services
        from google.longrunning import operations_pb2  # noqa: F401

        from granary._proto.build.bazel.remote.logstream.v1 import remote_logstream_pb2  # noqa: F401
        from granary._proto.google.devtools.remoteworkers.v1test2 import bots_pb2  # noqa: F401
        from granary.services import (  # noqa: F401
            bots_service,
            execution_service,
            logstream_service,
            operations_service,
        )

    if cfg.http.enabled:  # observability.serving: the HTTP port, metrics, health and reflection
        import stringprep  # noqa: F401 - the idna codec's, which aiohttp loads on its first request

        import aiohttp.web  # noqa: F401
        import prometheus_client  # noqa: F401 - PROMETHEUS_MULTIPROC_DIR is set before this (runarea.prepare)
        from prometheus_client import multiprocess  # noqa: F401

        # not granary.observability.metrics: its metrics belong to the process that creates them
        from granary.observability import collector, grpc_services, http, meters  # noqa: F401

        if cfg.http.dashboard:
            from granary.observability.dashboard import routes  # noqa: F401
