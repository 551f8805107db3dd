"""Errors a client or an operator can cause, each with the gRPC status it maps to.

Domain code raises these; `granary.services.status` turns them into gRPC
status (with google.rpc details where the REAPI spec asks for them).
"""

from __future__ import annotations

import grpc


class GranaryError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidArgument(GranaryError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(GranaryError):
    code = grpc.StatusCode.NOT_FOUND


class OutOfRange(GranaryError):
    code = grpc.StatusCode.OUT_OF_RANGE


class PermissionDenied(GranaryError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(GranaryError):
    """No credentials where they are needed, or credentials that do not check out."""

    code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhausted(GranaryError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(GranaryError):
    code = grpc.StatusCode.UNAVAILABLE


class Unimplemented(GranaryError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Aborted(GranaryError):
    code = grpc.StatusCode.ABORTED


class Cancelled(GranaryError):
    code = grpc.StatusCode.CANCELLED


class DeadlineExceeded(GranaryError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class FailedPrecondition(GranaryError):
    """Optionally carries google.rpc.PreconditionFailure violations (type, subject, description)."""

    code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, message: str, violations: list[tuple[str, str, str]] | None = None):
        super().__init__(message)
        self.violations = violations or []


class BlobNotFound(NotFound):
    def __init__(self, digest):
        super().__init__(f"blob {digest.hash}/{digest.size} not found")
        self.digest = digest


class ConfigError(Exception):
    """The operator's configuration is wrong; start-up stops with this one line."""
