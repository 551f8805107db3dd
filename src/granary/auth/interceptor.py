"""The gRPC server interceptor: authenticate once per call, then authorize the method.

Every registered method is wrapped (unary and streaming alike) so that, before the
servicer runs, the caller is identified from the metadata and TLS peer, the identity is
put in the context variable (`current_identity()`), and the permission the method needs
is checked on the instance named by its first request message. A method missing from
the table is refused: new services must say what they need.

Capabilities and health checks are public: clients call GetCapabilities before anything
else (Bazel does so to choose digest functions), and it reveals nothing stored. The
Operations service needs an authenticated caller (or anonymous `execute` somewhere); which
operations a caller may see is decided where the operation is known.

The (de)serializers of the wrapped handler are kept, so requests still reach here as parsed
messages or `Malformed` markers, and a malformed request gets INVALID_ARGUMENT once the
caller is known.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from granary.auth.authenticator import Authenticator
from granary.auth.identity import Identity, set_identity
from granary.auth.permissions import Permission, Policy
from granary.errors import GranaryError, InvalidArgument, PermissionDenied, Unauthenticated
from granary.resource_names import read_target, write_target
from granary.services.registry import Malformed

log = logging.getLogger("granary.auth")

PUBLIC = "public"  # anyone, with or without credentials (wrong credentials are still refused)
AUTHENTICATED = "authenticated"  # any identity; the servicer decides what it may see


@dataclass(frozen=True)
class MethodRule:
    need: Permission | str
    instance_of: Callable[[Any], str] | None = None


def _instance_name(request: Any) -> str:
    return request.instance_name


def _read_resource(request: Any) -> str:
    return read_target(request.resource_name).instance


def _write_resource(request: Any) -> str:
    return write_target(request.resource_name).instance


def _bots_parent(request: Any) -> str:
    return request.parent


def _bot_session_parent(request: Any) -> str:
    name = request.name
    if name.startswith("botSessions/"):
        return ""
    parent, sep, _ = name.rpartition("/botSessions/")
    if not sep:
        raise InvalidArgument(f"bot session name {name!r} is not of the form [INSTANCE/]botSessions/ID")
    return parent


def _root(_request: Any) -> str:
    """Build events belong to no instance: checked on the root instance name ""."""
    return ""


def _operation_instance(request: Any) -> str:
    name = request.name
    if name.startswith("operations/"):
        return ""
    parent, sep, _ = name.rpartition("/operations/")
    if not sep:
        raise InvalidArgument(f"operation name {name!r} is not of the form [INSTANCE/]operations/ID")
    return parent


_RE = "/build.bazel.remote.execution.v2."
_CAS = _RE + "ContentAddressableStorage/"
_BS = "/google.bytestream.ByteStream/"
_OPS = "/google.longrunning.Operations/"
_BOTS = "/google.devtools.remoteworkers.v1test2.Bots/"
_ASSET = "/build.bazel.remote.asset.v1."
_BES = "/google.devtools.build.v1.PublishBuildEvent/"
_BUILDS = "/granary.builds.v1.BuildEvents/"
R, W = Permission.CACHE_READ, Permission.CACHE_WRITE

METHOD_RULES: dict[str, MethodRule] = {
    _CAS + "FindMissingBlobs": MethodRule(R, _instance_name),
    _CAS + "BatchReadBlobs": MethodRule(R, _instance_name),
    _CAS + "GetTree": MethodRule(R, _instance_name),
    _CAS + "SplitBlob": MethodRule(R, _instance_name),
    _CAS + "BatchUpdateBlobs": MethodRule(W, _instance_name),
    _CAS + "SpliceBlob": MethodRule(W, _instance_name),
    _RE + "ActionCache/GetActionResult": MethodRule(R, _instance_name),
    _RE + "ActionCache/UpdateActionResult": MethodRule(Permission.AC_WRITE, _instance_name),
    _RE + "Capabilities/GetCapabilities": MethodRule(PUBLIC),
    _RE + "Execution/Execute": MethodRule(Permission.EXECUTE, _instance_name),
    _RE + "Execution/WaitExecution": MethodRule(Permission.EXECUTE, _operation_instance),
    _BS + "Read": MethodRule(R, _read_resource),
    _BS + "Write": MethodRule(W, _write_resource),
    _BS + "QueryWriteStatus": MethodRule(W, _write_resource),
    _OPS + "GetOperation": MethodRule(AUTHENTICATED),
    _OPS + "ListOperations": MethodRule(AUTHENTICATED),
    _OPS + "CancelOperation": MethodRule(AUTHENTICATED),
    _OPS + "DeleteOperation": MethodRule(AUTHENTICATED),
    _OPS + "WaitOperation": MethodRule(AUTHENTICATED),
    # Fetch only stores what an allowed origin serves; Push vouches for content like an action result
    _ASSET + "Fetch/FetchBlob": MethodRule(R, _instance_name),
    _ASSET + "Fetch/FetchDirectory": MethodRule(R, _instance_name),
    _ASSET + "Push/PushBlob": MethodRule(Permission.AC_WRITE, _instance_name),
    _ASSET + "Push/PushDirectory": MethodRule(Permission.AC_WRITE, _instance_name),
    # a log stream's parent is an instance name; creating one is writing to that instance
    "/build.bazel.remote.logstream.v1.LogStreamService/CreateLogStream": MethodRule(W, _bots_parent),
    _BOTS + "CreateBotSession": MethodRule(Permission.WORKER, _bots_parent),
    _BOTS + "UpdateBotSession": MethodRule(Permission.WORKER, _bot_session_parent),
    _BOTS + "PostBotEventTemp": MethodRule(Permission.WORKER, _bot_session_parent),
    _BES + "PublishLifecycleEvent": MethodRule(W, _root),
    _BES + "PublishBuildToolEventStream": MethodRule(W, _root),
    _BUILDS + "QueryEvents": MethodRule(R, _root),
    _BUILDS + "ListInvocations": MethodRule(R, _root),
    _BUILDS + "GetInvocation": MethodRule(R, _root),
    "/grpc.health.v1.Health/Check": MethodRule(PUBLIC),
    "/grpc.health.v1.Health/Watch": MethodRule(PUBLIC),
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": MethodRule(AUTHENTICATED),  # the schema
}

_NO_REQUEST = object()


async def _replay(first: Any, rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    if first is not _NO_REQUEST:
        yield first
    async for item in rest:
        yield item


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        authenticator: Authenticator,
        policy: Policy,
        extra_methods: Mapping[str, MethodRule] | None = None,
    ):
        self.authenticator = authenticator
        self.policy = policy
        self.methods = {**METHOD_RULES, **(extra_methods or {})}
        self._peer_identities = authenticator.certificates is not None
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # gRPC answers UNIMPLEMENTED
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    # ---- the check --------------------------------------------------------------

    async def identify(self, context: grpc.aio.ServicerContext) -> Identity:
        auth_context = context.auth_context() if self._peer_identities else None
        return await self.authenticator.identify(context.invocation_metadata(), auth_context)

    async def admit(self, method: str, rule: MethodRule | None, request: Any, context: grpc.aio.ServicerContext) -> None:
        """Identify the caller, then refuse the call (context.abort) unless the policy allows it."""
        try:
            identity = await self.identify(context)
            set_identity(identity)
            self.authorize(method, rule, identity, request)
        except GranaryError as e:
            if isinstance(e, Unauthenticated | PermissionDenied):
                log.info("%s refused: %s", method, e.message)
            await context.abort(e.code, e.message)
        except Exception as e:  # noqa: BLE001 - e.g. the token database is down: retryable, never a crash
            log.warning("%s: cannot check credentials: %s: %s", method, type(e).__name__, e)
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, f"cannot check credentials now: {type(e).__name__}: {e}"
            )

    def authorize(self, method: str, rule: MethodRule | None, identity: Identity, request: Any) -> None:
        if rule is None:
            raise PermissionDenied(f"method {method} is not open to callers of this server")
        if rule.need == PUBLIC:
            return
        if rule.need == AUTHENTICATED:
            if not identity.authenticated and not self.policy.anonymous_may_anywhere(Permission.EXECUTE):
                raise Unauthenticated(f"{method} needs credentials")
            return
        assert rule.instance_of is not None and isinstance(rule.need, Permission)
        if request is _NO_REQUEST:  # an empty request stream asks for nothing; the servicer refuses it
            if not identity.authenticated and not self.policy.anonymous_may_anywhere(rule.need):
                raise Unauthenticated(f"{rule.need.value} needs credentials")
            return
        try:
            if type(request) is Malformed:
                raise InvalidArgument(request.describe())
            instance = rule.instance_of(request)
        except InvalidArgument:
            # a caller who may do nothing without credentials learns nothing about its request
            if not identity.authenticated and not self.policy.anonymous_may_anywhere(rule.need):
                raise Unauthenticated(f"{rule.need.value} needs credentials") from None
            raise
        self.policy.check(identity, instance, rule.need)

    # ---- wrapping handlers --------------------------------------------------------

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        rule = self.methods.get(method)
        admit = self.admit
        codec = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if not handler.request_streaming and not handler.response_streaming:
            behavior = handler.unary_unary

            async def unary_unary(request, context):
                await admit(method, rule, request, context)
                return await behavior(request, context)

            return grpc.unary_unary_rpc_method_handler(unary_unary, **codec)

        if not handler.request_streaming:
            behavior = handler.unary_stream

            async def unary_stream(request, context):
                await admit(method, rule, request, context)
                result = behavior(request, context)
                if inspect.isasyncgen(result):
                    async for item in result:
                        yield item
                else:
                    await result

            return grpc.unary_stream_rpc_method_handler(unary_stream, **codec)

        async def first_of(request_iterator, context) -> AsyncIterator[Any]:
            it = request_iterator.__aiter__()
            try:
                first = await it.__anext__()
            except StopAsyncIteration:
                first = _NO_REQUEST
            await admit(method, rule, first, context)
            return _replay(first, it)

        if not handler.response_streaming:
            behavior = handler.stream_unary

            async def stream_unary(request_iterator, context):
                return await behavior(await first_of(request_iterator, context), context)

            return grpc.stream_unary_rpc_method_handler(stream_unary, **codec)

        behavior = handler.stream_stream

        async def stream_stream(request_iterator, context):
            result = behavior(await first_of(request_iterator, context), context)
            if inspect.isasyncgen(result):
                async for item in result:
                    yield item
            else:
                await result

        return grpc.stream_stream_rpc_method_handler(stream_stream, **codec)
