"""Errors a client or an operator can cause, each with the gRPC status it maps to.

Domain code raises these; `granary.services.status` turns them into gRPC
status (with google.rpc details where the REAPI spec asks for them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import grpc


class _Status:
    """A class's gRPC status code, looked up on first use: processes that only read
    configuration (the supervisor of several server processes) never load gRPC."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> grpc.StatusCode:
        import grpc

        return grpc.StatusCode[self.name]


class GranaryError(Exception):
    code: _Status = _Status("INTERNAL")

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidArgument(GranaryError):
    code = _Status("INVALID_ARGUMENT")


class NotFound(GranaryError):
    code = _Status("NOT_FOUND")


class OutOfRange(GranaryError):
    code = _Status("OUT_OF_RANGE")


class PermissionDenied(GranaryError):
    code = _Status("PERMISSION_DENIED")


class Unauthenticated(GranaryError):
    """No credentials where they are needed, or credentials that do not check out."""

    code = _Status("UNAUTHENTICATED")


class ResourceExhausted(GranaryError):
    code = _Status("RESOURCE_EXHAUSTED")


class Unavailable(GranaryError):
    code = _Status("UNAVAILABLE")


class Unimplemented(GranaryError):
    code = _Status("UNIMPLEMENTED")


class Aborted(GranaryError):
    code = _Status("ABORTED")


class Cancelled(GranaryError):
    code = _Status("CANCELLED")


class DeadlineExceeded(GranaryError):
    code = _Status("DEADLINE_EXCEEDED")


class FailedPrecondition(GranaryError):
    """Optionally carries google.rpc.PreconditionFailure violations (type, subject, description)."""

    code = _Status("FAILED_PRECONDITION")

    def __init__(self, message: str, violations: list[tuple[str, str, str]] | None = None):
        super().__init__(message)
        self.violations = violations or []


class BlobNotFound(NotFound):
    def __init__(self, digest):
        super().__init__(f"blob {digest.hash}/{digest.size} not found")
        self.digest = digest


class ConfigError(Exception):
    """The operator's configuration is wrong; start-up stops with this one line."""
