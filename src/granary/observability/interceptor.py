"""One gRPC interceptor for every call: its metrics (count, latency, bytes in and out, by service, method,
instance and status code) and its request log line.

It is the outermost interceptor, so a call refused by authentication or by draining is seen too. It
costs a few microseconds a call (bench/bench_metrics.py): per call one small object in a context
variable; the wrapped handlers and the label children of the metrics are made once per method.
grpc.aio runs a call's interceptors, request deserializer, handler and response serializer in one
task, so the serializers can count the call's bytes exactly (their lengths on the wire, without
serializing anything twice). A unary response is serialized after the handler returns: the call is
finished there.

Instance labels are bounded: configured instance names always get their own, names answered by the
"*" instance get their own up to `http.max_instance_labels` per process, then `(other)`. Method
labels come only from registered methods (an unknown method never reaches here).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from bisect import bisect_left
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextvars import ContextVar
from time import perf_counter
from typing import Any

import grpc

from granary.auth.identity import current_identity

log = logging.getLogger("granary.requests")

METADATA_KEY = "build.bazel.remote.execution.v2.requestmetadata-bin"
MAX_SHOWN = 200  # characters of a client-chosen string shown in a log line
INVALID = "(invalid)"  # the instance of a request that could not be read
OTHER = "(other)"  # instance names past max_instance_labels
OK = grpc.StatusCode.OK
CANCELLED = grpc.StatusCode.CANCELLED
UNKNOWN = grpc.StatusCode.UNKNOWN
# latency buckets (metrics.LATENCY_BUCKETS; repeated here so that request logs alone need no prometheus_client)
LATENCY_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                  60.0, 300.0)


class _Call:
    """One call in progress; lives in the task's context (_CALL)."""

    __slots__ = ("context", "instance", "received", "sent", "start")

    def __init__(self, start: float):
        self.start = start
        self.received = 0
        self.sent = 0
        self.instance: str | None = None
        self.context: Any = None  # set once the handler returned a unary response


_CALL: ContextVar[_Call | None] = ContextVar("granary_call", default=None)


# ---- the instance a request names ------------------------------------------------------------


def _instance_name(request: Any) -> str:
    return request.instance_name


def _before(marker: str) -> Callable[[Any], str]:
    """INSTANCE from names like INSTANCE/operations/ID or operations/ID (no instance)."""
    inner = "/" + marker

    def of(name: str) -> str:
        if name.startswith(marker):
            return ""
        i = name.find(inner)
        return name[:i] if i >= 0 else INVALID

    return of


def _OPERATION(name: str) -> str:
    if name in ("", "operations") or name.startswith("operations/"):
        return ""
    i = name.find("/operations")
    return name[:i] if i >= 0 else INVALID


_BOT_SESSION = _before("botSessions/")
_UPLOAD = _before("uploads/")
_BLOBS = _before("blobs/")
_COMPRESSED = _before("compressed-blobs/")
_LOGSTREAMS = _before("logstreams/")


def _earliest(name: str, *parsers: Callable[[str], str]) -> str:
    """The instance before the first marker the name holds (an instance may not contain one)."""
    found = [i for i in (p(name) for p in parsers) if i != INVALID]
    return min(found, key=len) if found else INVALID


def _read_resource(request: Any) -> str:
    return _earliest(request.resource_name, _BLOBS, _COMPRESSED, _LOGSTREAMS)


def _write_resource(request: Any) -> str:
    return _earliest(request.resource_name, _UPLOAD, _LOGSTREAMS)


_BY_METHOD: dict[str, Callable[[Any], str]] = {
    "/google.bytestream.ByteStream/Read": _read_resource,
    "/google.bytestream.ByteStream/Write": _write_resource,
    "/google.bytestream.ByteStream/QueryWriteStatus": _write_resource,
    "/build.bazel.remote.execution.v2.Execution/WaitExecution": lambda r: _OPERATION(r.name),
    "/google.devtools.remoteworkers.v1test2.Bots/CreateBotSession": lambda r: r.parent,
    "/google.devtools.remoteworkers.v1test2.Bots/UpdateBotSession": lambda r: _BOT_SESSION(r.name),
    "/google.devtools.remoteworkers.v1test2.Bots/PostBotEventTemp": lambda r: _BOT_SESSION(r.name),
}
_BY_SERVICE: dict[str, Callable[[Any], str]] = {
    "build.bazel.remote.execution.v2.ContentAddressableStorage": _instance_name,
    "build.bazel.remote.execution.v2.ActionCache": _instance_name,
    "build.bazel.remote.execution.v2.Capabilities": _instance_name,
    "build.bazel.remote.execution.v2.Execution": _instance_name,
    "build.bazel.remote.asset.v1.Fetch": _instance_name,
    "build.bazel.remote.asset.v1.Push": _instance_name,
    "google.longrunning.Operations": lambda r: _OPERATION(r.name),
}


def _no_instance(_request: Any) -> str:
    return ""


def instance_reader(path: str) -> Callable[[Any], str]:
    service = path[1:].partition("/")[0]
    return _BY_METHOD.get(path) or _BY_SERVICE.get(service) or _no_instance


class InstanceLabels:
    """Instance names -> metric label values, bounded (see the module docstring)."""

    def __init__(self, configured: Iterable[str], wildcard: bool, limit: int):
        self.known = self._labels = {name: name for name in configured}  # name -> label, read directly
        self._wildcard = wildcard
        self._room = limit

    def label(self, name: str | None) -> str:
        if name is None:
            return ""
        label = self._labels.get(name)
        if label is not None:
            return label
        if name == INVALID:
            return INVALID
        if not self._wildcard:
            return INVALID  # the call was refused: no such instance
        if self._room <= 0:
            return OTHER
        self._room -= 1
        self._labels[name] = name
        return name


# ---- log lines -------------------------------------------------------------------------------


def _shown(value: str) -> str:
    """A client-chosen string, safe on one log line: quoted (JSON) unless it is plain."""
    value = value[:MAX_SHOWN]
    if value and value.isascii() and value.isprintable() and " " not in value and '"' not in value:
        return value
    return json.dumps(value)


def request_metadata(context: Any) -> Any:
    from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2

    md = re_pb2.RequestMetadata()
    for key, value in context.invocation_metadata() or ():
        if key == METADATA_KEY and isinstance(value, bytes) and len(value) <= 16384:
            try:
                md.ParseFromString(value)
            except Exception:  # noqa: BLE001 - a bad header only loses the log fields
                md = re_pb2.RequestMetadata()
            break
    return md


class Method:
    """One registered method: its names, where its requests name their instance, its label children."""

    __slots__ = ("_children", "_observer", "instance_of", "name", "path", "service", "short")

    def __init__(self, observer: RequestObserver, path: str):
        self._observer = observer
        self.path = path
        self.service, _, self.name = path[1:].partition("/")
        self.short = f"{self.service.rpartition('.')[2]}/{self.name}"
        self.instance_of = instance_reader(path)
        self._children: dict[tuple[str, grpc.StatusCode], Any] = {}

    def read_instance(self, request: Any) -> str:
        try:
            name = self.instance_of(request)
        except Exception:  # noqa: BLE001 - a malformed request (its handler says why)
            return INVALID
        return name if isinstance(name, str) else INVALID

    def finish(self, call: _Call, code: grpc.StatusCode | None, context: Any) -> None:
        elapsed = perf_counter() - call.start
        observer = self._observer
        if code is None:
            code = OK
        if observer.metrics is not None:
            label = observer.instances.known.get(call.instance)  # type: ignore[arg-type]
            if label is None:
                label = observer.instances.label(call.instance)
            key = (label, code)  # labels are bounded: so is this cache
            tally = self._children.get(key)
            if tally is None:  # kept: its counts are written out later (metrics.PENDING)
                tally = self._children[key] = observer.metrics.PENDING.calls(
                    self.service, self.name, key[0], code.name)
            tally.counts[bisect_left(LATENCY_BOUNDS, elapsed)] += 1
            tally.total += elapsed
            tally.received += call.received
            tally.sent += call.sent
            tally.dirty = True
        if observer.logging:
            self._log(call, code, elapsed, context)

    def _log(self, call: _Call, code: grpc.StatusCode, elapsed: float, context: Any) -> None:
        md = request_metadata(context) if context is not None else None
        peer = (context.peer() if context is not None else "") or ""
        identity = current_identity()
        who = identity.name if identity.authenticated else ""
        tool = md.tool_details.tool_name if md is not None else ""
        version = md.tool_details.tool_version if md is not None else ""
        fields = {
            "service": self.service, "method": self.name, "instance": call.instance or "", "code": code.name,
            "duration_ms": round(elapsed * 1000, 3), "bytes_in": call.received, "bytes_out": call.sent,
            "peer": peer, "identity": who, "tool_name": tool[:MAX_SHOWN], "tool_version": version[:MAX_SHOWN],
            "invocation_id": md.tool_invocation_id[:MAX_SHOWN] if md is not None else "",
            "correlated_invocations_id": md.correlated_invocations_id[:MAX_SHOWN] if md is not None else "",
            "action_id": md.action_id[:MAX_SHOWN] if md is not None else "",
            "action_mnemonic": md.action_mnemonic[:MAX_SHOWN] if md is not None else "",
            "target_id": md.target_id[:MAX_SHOWN] if md is not None else "",
        }
        text = (f"{self.short} instance={_shown(fields['instance'])} code={code.name}"
                f" {fields['duration_ms']:.3f}ms in={call.received}B out={call.sent}B peer={_shown(peer)}")
        if who:
            text += f" identity={_shown(who)}"
        if tool:
            text += f" tool={_shown(tool + ('/' + version if version else ''))}"
        for key, shown in (("invocation_id", "invocation"), ("action_id", "action"),
                           ("action_mnemonic", "mnemonic")):
            if fields[key]:
                text += f" {shown}={_shown(fields[key])}"
        log.info("%s", text, extra={"fields": fields})


def _code(error: BaseException, context: Any) -> grpc.StatusCode:
    code = context.code()
    if code is not None:
        return code
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return CANCELLED
    return UNKNOWN


class RequestObserver(grpc.aio.ServerInterceptor):
    """Metrics (`metrics`: the granary.observability.metrics module, or None) and request logs
    (when granary.requests logs at INFO, decided at start-up) of every call."""

    def __init__(self, instances: InstanceLabels, metrics: Any | None, logging_on: bool | None = None):
        self.instances = instances
        self.metrics = metrics
        self.logging = log.isEnabledFor(logging.INFO) if logging_on is None else logging_on
        self._methods: dict[str, Method] = {}
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    @property
    def active(self) -> bool:
        return self.metrics is not None or self.logging

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        _CALL.set(_Call(perf_counter()))
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # gRPC answers UNIMPLEMENTED; the method name is the client's, not a label
        path = handler_call_details.method
        cached = self._wrapped.get(path)
        if cached is not None and cached[0] is handler:
            return cached[1]
        method = self._methods.get(path)
        if method is None:
            method = self._methods[path] = Method(self, path)
        wrapped = self._wrap(method, handler)
        self._wrapped[path] = (handler, wrapped)
        return wrapped

    # ---- wrapping ---------------------------------------------------------------------------

    def _wrap(self, m: Method, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        codec = {
            "request_deserializer": _deserializer(m, handler.request_deserializer),
            "response_serializer": _serializer(m, handler.response_serializer, not handler.response_streaming),
        }
        if not handler.response_streaming:
            if handler.request_streaming:
                return handler._replace(stream_unary=_unary_response(m, handler.stream_unary), **codec)
            return handler._replace(unary_unary=_unary_response(m, handler.unary_unary), **codec)
        if handler.request_streaming:
            return handler._replace(stream_stream=_stream_response(m, handler.stream_stream), **codec)
        return handler._replace(unary_stream=_stream_response(m, handler.unary_stream), **codec)


def _deserializer(m: Method, inner: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        message = inner(data) if inner is not None else data
        call = _CALL.get()
        if call is not None:
            call.received += len(data)
            if call.instance is None:  # the first request names the instance
                call.instance = m.read_instance(message)
        return message

    return deserialize


def _serializer(m: Method, inner: Callable[[Any], bytes] | None, unary: bool) -> Callable[[Any], bytes]:
    def serialize(message: Any) -> bytes:
        data = inner(message) if inner is not None else message
        call = _CALL.get()
        if call is not None:
            call.sent += len(data)
            if unary and call.context is not None:  # the handler returned: the call is done
                context, call.context = call.context, None
                m.finish(call, context.code(), context)
        return data

    return serialize


def _unary_response(m: Method, behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def observed(request: Any, context: grpc.aio.ServicerContext) -> Any:
        call = _CALL.get()
        try:
            response = await behavior(request, context)
        except BaseException as e:
            if call is not None:
                m.finish(call, _code(e, context), context)
            raise
        if call is not None:
            call.context = context  # the serializer finishes the call
        return response

    return observed


def _stream_response(m: Method, behavior: Callable[..., Any]) -> Callable[..., AsyncIterator[Any]]:
    async def observed(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        call = _CALL.get()
        code = None
        try:
            result = behavior(request, context)
            if inspect.isasyncgen(result):
                async for item in result:
                    yield item
            else:
                await result  # a handler that writes with context.write
        except BaseException as e:
            code = _code(e, context)
            raise
        finally:
            if call is not None:
                m.finish(call, code if code is not None else context.code(), context)

    return observed
