"""Running the gRPC server: one process, or several sharing the port.

SIGTERM or SIGINT drains before stopping: the DrainGate interceptor refuses new
Execute calls with UNAVAILABLE (clients retry elsewhere) while every other call
keeps being served, bots get no new leases, and the server waits, at most
`server.drain_timeout`, until no Execute/WaitExecution stream is open, no bot
holds unfinished work through it and its local workers (if it started them) have
finished; then it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import grpc

from granary import heap
from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from granary._proto.google.bytestream import bytestream_pb2 as bs_pb2
from granary.auth.callers import operation_callers
from granary.auth.identity import identity_or_peer
from granary.auth.localworker import SOCKET_ENV, LocalWorkerKey
from granary.auth.permissions import Policy
from granary.auth.settings import build_auth
from granary.auth.tls import server_credentials
from granary.bes.wiring import add_build_event_services
from granary.bootstrap import build_app
from granary.config import Config
from granary.errors import ConfigError
from granary.observability.serving import Observability
from granary.services.ac_service import ActionCacheService
from granary.services.bytestream_service import ByteStreamService
from granary.services.capabilities_service import CapabilitiesService
from granary.services.cas_service import CasService
from granary.services.client_key import peer_host
from granary.services.registry import add_servicer

if TYPE_CHECKING:
    from granary.execution.farm import ExecutionFarm

log = logging.getLogger("granary.server")

EXECUTION = "/build.bazel.remote.execution.v2.Execution/"
EXECUTE = EXECUTION + "Execute"
FOLLOWING = (EXECUTE, EXECUTION + "WaitExecution")  # calls that stream an operation until it is done
STOP_GRACE = 2.0  # seconds in-flight calls get once draining is over
DRAIN_CHECK = 0.1  # seconds between checks while draining


async def _refuse(_request: Any, context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNAVAILABLE, "server is shutting down; retry on another server")


class Workers(Protocol):
    """Local workers a server must outlive: asked to stop when draining begins, waited for."""

    def begin_stop(self) -> None: ...

    def running(self) -> bool: ...


class SupervisorsWorkers:
    """The supervisor's local workers as one of its server processes sees them: running until
    the supervisor closes our stdin, which it does once they are gone (or it is)."""

    def __init__(self) -> None:
        self._gone = threading.Event()
        threading.Thread(target=self._wait_for_eof, name="granary-workers-gone", daemon=True).start()

    def _wait_for_eof(self) -> None:
        with contextlib.suppress(OSError):
            while os.read(0, 512):
                pass
        self._gone.set()

    def begin_stop(self) -> None:
        """The supervisor stops them."""

    def running(self) -> bool:
        return not self._gone.is_set()


class DrainGate(grpc.aio.ServerInterceptor):
    """The one place draining shows to clients: new Execute calls get UNAVAILABLE, everything
    else is served; counts the operation streams (Execute, WaitExecution) still open."""

    def __init__(self, on_call: Callable[[], None] | None = None) -> None:
        self.on_call = on_call  # told of every call (heap.IdleTrim: give memory back after a burst)
        self.draining = False
        self.streams = 0
        self._open: dict[asyncio.Task, str] = {}  # operation streams -> the operation they follow
        self._ended: set[asyncio.Task] = set()  # those ended by end_open_streams
        self._refused = grpc.unary_stream_rpc_method_handler(_refuse)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if self.on_call is not None:
            self.on_call()
        handler = await continuation(handler_call_details)
        if self.draining and method == EXECUTE and handler is not None:
            # the request is still parsed: an interceptor before this one (auth) reads its instance name
            return self._refused._replace(request_deserializer=handler.request_deserializer,
                                          response_serializer=handler.response_serializer)
        if method in FOLLOWING and handler is not None and handler.unary_stream is not None:
            return handler._replace(unary_stream=self._counted(handler.unary_stream))
        return handler

    def _counted(self, behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
        async def counted(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            self.streams += 1
            task = asyncio.current_task()
            assert task is not None
            self._open[task] = getattr(request, "name", "")  # WaitExecution names its operation
            try:
                async for item in behavior(request, context):
                    self._open[task] = item.name or self._open[task]
                    yield item
            except asyncio.CancelledError:
                if task not in self._ended:
                    raise
                await context.abort(grpc.StatusCode.UNAVAILABLE, (
                    f"server stopped before operation {self._open[task] or '(not yet named)'} finished"
                    " (drain_timeout reached); the job stays in the queue: WaitExecution on it, through"
                    " this server once it is back or another one sharing its queue"))
            finally:
                self.streams -= 1
                self._open.pop(task, None)
                self._ended.discard(task)

        return counted

    def end_open_streams(self) -> None:
        """The drain is over with operations unfinished: tell their followers why, by name."""
        for task in list(self._open):
            self._ended.add(task)
            task.cancel()


def grpc_options(cfg: Config, reuse_port: bool) -> list[tuple[str, int]]:
    limit = max(64 << 20, cfg.max_batch_size + (4 << 20))
    return [
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ]


def add_local_worker_socket(server: grpc.aio.Server, cfg: Config) -> None:
    """Where the local workers connect when TLS or auth is on (auth/localworker.py): one abstract
    Unix socket; with several server processes the first to bind it serves them, and a restarted
    one takes over once it is free."""
    socket = os.environ.get(SOCKET_ENV)
    if not socket or (cfg.tls is None and cfg.auth is None):
        return
    try:
        if server.add_insecure_port(socket):
            return
    except RuntimeError:
        pass
    log.debug("local worker socket %s is served by another server process", socket)


def add_execution_services(server: grpc.aio.Server, app, policy: Policy | None = None, instances=None) -> list[str]:
    """Execution, Operations, Bots and LogStream; -> their service names. `instances`: what Execute looks
    actions up in (default the app's)."""
    from google.longrunning import operations_pb2

    from granary._proto.google.devtools.remoteworkers.v1test2 import bots_pb2
    from granary.services.bots_service import BotsService
    from granary.services.execution_service import ExecutionService
    from granary.services.operations_service import OperationsService

    farm = app.execution
    execution = re_pb2.DESCRIPTOR.services_by_name["Execution"]
    operations = operations_pb2.DESCRIPTOR.services_by_name["Operations"]
    bots = bots_pb2.DESCRIPTOR.services_by_name["Bots"]
    callers = operation_callers(policy)
    add_servicer(server, ExecutionService(instances or app.instances, farm.scheduler, callers), execution)
    add_servicer(server, OperationsService(farm.scheduler, callers), operations)
    add_servicer(server, BotsService(farm.bots), bots)
    names = [execution.full_name, operations.full_name, bots.full_name]
    if farm.logstreams is not None:
        from granary._proto.build.bazel.remote.logstream.v1 import remote_logstream_pb2 as ls_pb2
        from granary.services.logstream_service import LogStreamService

        logstream = ls_pb2.DESCRIPTOR.services_by_name["LogStreamService"]
        add_servicer(server, LogStreamService(instances or app.instances, farm.logstreams), logstream)
        names.append(logstream.full_name)
    return names


def add_asset_services(server: grpc.aio.Server, cfg: Config, app, client_key) -> tuple[list[str], Any]:
    """Remote Asset Fetch and Push when the file has a remote_asset section; -> (service names, the
    RemoteAssets to start and close, or None)."""
    asset_cfg = getattr(cfg.file, "remote_asset", None)
    if asset_cfg is None:
        return [], None
    from granary._proto.build.bazel.remote.asset.v1 import remote_asset_pb2 as ra_pb2
    from granary.asset.assets import RemoteAssets
    from granary.services.asset_service import FetchService, PushService

    assets = RemoteAssets(asset_cfg, app.instances, cfg.data_dir)
    fetch = ra_pb2.DESCRIPTOR.services_by_name["Fetch"]
    push = ra_pb2.DESCRIPTOR.services_by_name["Push"]
    add_servicer(server, FetchService(assets, client_key), fetch)
    add_servicer(server, PushService(assets), push)
    return [fetch.full_name, push.full_name], assets


async def drain(
    gate: DrainGate, farm: ExecutionFarm | None, workers: Workers | None, timeout: float
) -> None:
    """Stop taking work, then wait (at most timeout seconds) until the work in hand is delivered."""
    gate.draining = True
    if farm is not None:
        farm.begin_draining()
    if workers is not None:
        workers.begin_stop()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout

    def settled() -> bool:
        return (
            gate.streams == 0
            and (farm is None or farm.busy_bots() == 0)
            and (workers is None or not workers.running())
        )

    while not settled() and loop.time() < deadline:
        await asyncio.sleep(DRAIN_CHECK)
    if not settled():
        log.info("drain_timeout (%gs) reached with work in hand; stopping anyway", timeout)
        gate.end_open_streams()
        await asyncio.sleep(0)  # let the streams send their UNAVAILABLE before the server stops


async def serve(
    cfg: Config,
    port: int,
    reuse_port: bool,
    on_ready: Callable[[int], None],
    workers: Workers | None = None,
) -> None:
    auth = build_auth(cfg.auth, cfg.data_dir, LocalWorkerKey.from_environment()) if cfg.auth is not None else None
    credentials = server_credentials(cfg.tls.files(cfg.data_dir)) if cfg.tls is not None else None
    app = build_app(cfg)
    trim = heap.IdleTrim(asyncio.get_running_loop())
    gate = DrainGate(on_call=trim.activity)
    obs = Observability(cfg, app, auth, lambda: gate.draining)
    # Observability sees every call first (refused ones too); then auth answers: a caller without
    # credentials gets UNAUTHENTICATED, never learns that we drain.
    interceptors: list[grpc.aio.ServerInterceptor] = obs.interceptors()
    interceptors += [gate] if auth is None else [auth.interceptor(), gate]
    server = grpc.aio.server(options=grpc_options(cfg, reuse_port), interceptors=interceptors)
    instances = app.instances
    re_services = re_pb2.DESCRIPTOR.services_by_name
    client_key = identity_or_peer if auth is not None else peer_host
    add_servicer(server, CasService(instances), re_services["ContentAddressableStorage"])
    add_servicer(server, ActionCacheService(obs.instances), re_services["ActionCache"])
    add_servicer(server, CapabilitiesService(instances), re_services["Capabilities"])
    logstreams = app.execution.logstreams if app.execution is not None else None
    add_servicer(server, ByteStreamService(instances, client_key, logstreams),
                 bs_pb2.DESCRIPTOR.services_by_name["ByteStream"])
    services = [re_services[n].full_name for n in ("ContentAddressableStorage", "ActionCache", "Capabilities")]
    services.append(bs_pb2.DESCRIPTOR.services_by_name["ByteStream"].full_name)
    if app.execution is not None:
        services += add_execution_services(server, app, auth.policy if auth is not None else None, obs.instances)
    asset_services, assets = add_asset_services(server, cfg, app, client_key)
    services += asset_services
    bes = add_build_event_services(server, cfg, client_key)  # None: build_events.enabled is false
    services += bes.services if bes is not None else []
    obs.builds = bes.queries if bes is not None else None  # the dashboard's builds pages
    obs.add_grpc_services(server, services)
    address = f"[{cfg.host}]:{port}" if ":" in cfg.host else f"{cfg.host}:{port}"
    try:
        bound = server.add_insecure_port(address) if credentials is None else server.add_secure_port(address, credentials)
    except RuntimeError as e:
        raise ConfigError(f"cannot listen on {address}: {e}") from None
    if not bound:
        raise ConfigError(f"cannot listen on {address} (address in use?)")
    add_local_worker_socket(server, cfg)
    await server.start()
    try:
        await obs.start()
    except BaseException:
        await server.stop(None)
        await obs.close()
        raise
    tasks = [asyncio.ensure_future(cas.uploads.run_expiry()) for cas in app.cas_by_store.values()]
    tasks += [asyncio.ensure_future(j.run()) for j in app.janitors if j.interval]
    if assets is not None:
        tasks.append(asyncio.ensure_future(assets.run_expiry()))
    if app.execution is not None:
        await app.execution.start()
    if bes is not None:
        bes.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    on_ready(bound)
    await stop.wait()
    await obs.begin_draining()
    await drain(gate, app.execution, workers, cfg.drain_timeout)
    await server.stop(grace=STOP_GRACE)
    await obs.close()
    for t in tasks:
        t.cancel()
    if bes is not None:
        bes.close()
    trim.close()
    if assets is not None:
        await assets.close()
    await app.close()
    if auth is not None:
        auth.close()


def tune_malloc() -> None:
    """glibc settings for 1 MiB message buffers (granary.heap)."""
    heap.tune_malloc()


def run_single(
    cfg: Config, port: int, reuse_port: bool, on_ready: Callable[[int], None], workers: Workers | None = None
) -> None:
    import uvloop

    tune_malloc()
    uvloop.run(serve(cfg, port, reuse_port, on_ready, workers))


def _die_with_parent() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def run_child(cfg: Config, port: int) -> None:
    _die_with_parent()

    def ready(_: int) -> None:
        sys.stdout.write("ready\n")
        sys.stdout.flush()

    run_single(cfg, port, True, ready, SupervisorsWorkers())
