"""The one place where domain errors become gRPC status."""

from __future__ import annotations

import errno
import functools
import inspect
import logging

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from granary.errors import FailedPrecondition, GranaryError, InvalidArgument
from granary.services.registry import Malformed

log = logging.getLogger("granary.rpc")


def rich_status(err: GranaryError) -> status_pb2.Status:
    status = status_pb2.Status(code=err.code.value[0], message=err.message)
    if isinstance(err, FailedPrecondition) and err.violations:
        failure = error_details_pb2.PreconditionFailure(
            violations=[
                error_details_pb2.PreconditionFailure.Violation(type=t, subject=s, description=d)
                for t, s, d in err.violations
            ]
        )
        detail = any_pb2.Any()
        detail.Pack(failure)
        status.details.append(detail)
    status.details.extend(getattr(err, "details", ()))  # packed google.rpc details an error carries
    return status


def status_of(err: GranaryError) -> status_pb2.Status:
    """google.rpc.Status for per-item results (batch responses)."""
    return status_pb2.Status(code=err.code.value[0], message=err.message)


async def abort(context: grpc.aio.ServicerContext, err: GranaryError) -> None:
    metadata = ()
    if (isinstance(err, FailedPrecondition) and err.violations) or getattr(err, "details", None):
        metadata = (("grpc-status-details-bin", rich_status(err).SerializeToString()),)
    await context.abort(err.code, err.message, trailing_metadata=metadata)


_UNAVAILABLE_NAMES = {
    # backends that lost their server: the client should retry, not give up
    ("redis.exceptions", "ConnectionError"),
    ("redis.exceptions", "TimeoutError"),
    ("botocore.exceptions", "EndpointConnectionError"),
    ("botocore.exceptions", "ConnectTimeoutError"),
    ("botocore.exceptions", "ReadTimeoutError"),
    ("aiohttp.client_exceptions", "ClientConnectorError"),
    ("sqlalchemy.exc", "OperationalError"),
    # the job queue's raw DB-API cursors on PostgreSQL: a server restarting or unreachable
    ("psycopg", "OperationalError"),
}


def classify(exc: BaseException) -> grpc.StatusCode:
    """Status for an unexpected exception: UNAVAILABLE for a lost backend, RESOURCE_EXHAUSTED
    for a full disk, INTERNAL otherwise."""
    if isinstance(exc, ConnectionError | TimeoutError):
        return grpc.StatusCode.UNAVAILABLE
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    for cls in type(exc).__mro__:
        if (cls.__module__, cls.__name__) in _UNAVAILABLE_NAMES:
            return grpc.StatusCode.UNAVAILABLE
    if isinstance(exc, grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.UNAVAILABLE:
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.INTERNAL


async def _internal(context, method: str, exc: Exception) -> None:
    code = classify(exc)
    if code == grpc.StatusCode.INTERNAL:
        log.exception("%s failed", method)
        await context.abort(code, f"{method}: internal error: {type(exc).__name__}: {exc}")
    log.warning("%s: %s: %s", method, type(exc).__name__, exc)
    await context.abort(code, f"{method}: storage backend unavailable or full: {type(exc).__name__}: {exc}")


def rpc(fn):
    """Map GranaryError (and unexpected errors) of a servicer method to gRPC status."""
    name = fn.__name__
    if inspect.isasyncgenfunction(fn):

        @functools.wraps(fn)
        async def stream(self, request, context):
            try:
                if type(request) is Malformed:
                    raise InvalidArgument(request.describe())
                async for item in fn(self, request, context):
                    yield item
            except GranaryError as e:
                await abort(context, e)
            except grpc.aio.AbortError:
                raise
            except Exception as e:  # noqa: BLE001 - the server must keep serving
                await _internal(context, name, e)

        return stream

    @functools.wraps(fn)
    async def unary(self, request, context):
        try:
            if type(request) is Malformed:
                raise InvalidArgument(request.describe())
            return await fn(self, request, context)
        except GranaryError as e:
            await abort(context, e)
        except grpc.aio.AbortError:
            raise
        except Exception as e:  # noqa: BLE001
            await _internal(context, name, e)

    return unary
