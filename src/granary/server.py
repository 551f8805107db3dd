"""Running the gRPC server: one process, or several sharing the port."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import signal
import sys
from collections.abc import Callable

import grpc

from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from granary._proto.google.bytestream import bytestream_pb2 as bs_pb2
from granary.bootstrap import build_app
from granary.config import Config
from granary.errors import ConfigError
from granary.services.ac_service import ActionCacheService
from granary.services.bytestream_service import ByteStreamService
from granary.services.capabilities_service import CapabilitiesService
from granary.services.cas_service import CasService
from granary.services.registry import add_servicer

log = logging.getLogger("granary.server")


def grpc_options(cfg: Config, reuse_port: bool) -> list[tuple[str, int]]:
    limit = max(64 << 20, cfg.max_batch_size + (4 << 20))
    return [
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ]


def add_execution_services(server: grpc.aio.Server, app) -> None:
    from google.longrunning import operations_pb2

    from granary._proto.google.devtools.remoteworkers.v1test2 import bots_pb2
    from granary.services.bots_service import BotsService
    from granary.services.execution_service import ExecutionService
    from granary.services.operations_service import OperationsService

    farm = app.execution
    execution = re_pb2.DESCRIPTOR.services_by_name["Execution"]
    add_servicer(server, ExecutionService(app.instances, farm.scheduler), execution)
    add_servicer(server, OperationsService(farm.scheduler), operations_pb2.DESCRIPTOR.services_by_name["Operations"])
    add_servicer(server, BotsService(farm.bots), bots_pb2.DESCRIPTOR.services_by_name["Bots"])


async def serve(cfg: Config, port: int, reuse_port: bool, on_ready: Callable[[int], None]) -> None:
    app = build_app(cfg)
    server = grpc.aio.server(options=grpc_options(cfg, reuse_port))
    instances = app.instances
    re_services = re_pb2.DESCRIPTOR.services_by_name
    add_servicer(server, CasService(instances), re_services["ContentAddressableStorage"])
    add_servicer(server, ActionCacheService(instances), re_services["ActionCache"])
    add_servicer(server, CapabilitiesService(instances), re_services["Capabilities"])
    add_servicer(server, ByteStreamService(instances), bs_pb2.DESCRIPTOR.services_by_name["ByteStream"])
    if app.execution is not None:
        add_execution_services(server, app)
    address = f"[{cfg.host}]:{port}" if ":" in cfg.host else f"{cfg.host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as e:
        raise ConfigError(f"cannot listen on {address}: {e}") from None
    if not bound:
        raise ConfigError(f"cannot listen on {address} (address in use?)")
    await server.start()
    tasks = [asyncio.ensure_future(cas.uploads.run_expiry()) for cas in app.cas_by_store.values()]
    tasks += [asyncio.ensure_future(j.run()) for j in app.janitors if j.interval]
    if app.execution is not None:
        await app.execution.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    on_ready(bound)
    await stop.wait()
    await server.stop(grace=5)
    for t in tasks:
        t.cancel()
    await app.close()


def tune_malloc() -> None:
    """Keep 1 MiB message buffers out of mmap: glibc otherwise returns and re-faults them per chunk,
    which measured 20x slower here (notes/performance-here.md)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
        libc.mallopt(-2, 64 << 20)  # M_TOP_PAD


def run_single(cfg: Config, port: int, reuse_port: bool, on_ready: Callable[[int], None]) -> None:
    import uvloop

    tune_malloc()
    uvloop.run(serve(cfg, port, reuse_port, on_ready))


def _die_with_parent() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def run_child(cfg: Config, port: int) -> None:
    _die_with_parent()

    def ready(_: int) -> None:
        sys.stdout.write("ready\n")
        sys.stdout.flush()

    run_single(cfg, port, True, ready)
