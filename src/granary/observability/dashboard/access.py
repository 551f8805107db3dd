"""Who may see what on the dashboard: the gRPC port's authenticator and policy, asked per request.

There is no permission model of the dashboard's own. Each page asks what the gRPC call showing the
same thing needs:

- the overview, the instance list and the workers page: what /metrics needs (any identity the
  authenticator accepts, or anyone when anonymous callers may do something somewhere);
- the operations list and an operation: what ListOperations and GetOperation need (an authenticated
  caller, or anonymous `execute` somewhere), and then the scheduler shows a caller only its own
  operations unless it is `admin` on their instance (auth/callers.py, execution/owners.py);
- blobs (the CAS browser, downloads, an operation's command, stdout and stderr): `cache-read` on
  their instance, as ByteStream Read.

Without `auth:` everyone may see everything, as over gRPC.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from granary.auth.identity import ANONYMOUS, Identity, reset_identity, set_identity
from granary.auth.permissions import Permission
from granary.errors import GranaryError, PermissionDenied, Unauthenticated
from granary.execution.owners import EVERYONE, Caller
from granary.observability.http import CHALLENGE, identify

if TYPE_CHECKING:
    from granary.auth.settings import AuthRuntime


@dataclass(frozen=True)
class Visitor:
    """The caller of one dashboard request."""

    identity: Identity
    checked: bool  # False: no auth configured, everything is allowed


class Access:
    def __init__(self, auth: AuthRuntime | None):
        self.auth = auth

    async def visitor(self, request: web.Request) -> Visitor:
        """The caller; 401 (with a Basic challenge, so a browser prompts) for refused credentials."""
        if self.auth is None:
            return Visitor(ANONYMOUS, False)
        return Visitor(await identify(self.auth, request), True)

    def _anyone_may_something(self) -> bool:
        assert self.auth is not None
        return any(self.auth.policy.anonymous_may_anywhere(p) for p in Permission)

    def require_known(self, visitor: Visitor, what: str) -> None:
        """What /metrics needs: an accepted identity, or anonymous callers allowed somewhere."""
        if not visitor.checked or visitor.identity.authenticated or self._anyone_may_something():
            return
        raise Unauthenticated(f"{what} needs credentials (Authorization: Basic or Bearer)")

    def require_operations(self, visitor: Visitor) -> None:
        """What the Operations service needs before the scheduler looks at ownership."""
        if not visitor.checked or visitor.identity.authenticated:
            return
        assert self.auth is not None
        if not self.auth.policy.anonymous_may_anywhere(Permission.EXECUTE):
            raise Unauthenticated("operations need credentials (Authorization: Basic or Bearer)")

    def check(self, visitor: Visitor, instance: str, permission: Permission) -> None:
        """The policy's own check (Unauthenticated or PermissionDenied, with its message)."""
        if visitor.checked:
            assert self.auth is not None
            self.auth.policy.check(visitor.identity, instance, permission)

    def allows(self, visitor: Visitor, instance: str, permission: Permission) -> bool:
        try:
            self.check(visitor, instance, permission)
        except (Unauthenticated, PermissionDenied):
            return False
        return True

    def caller(self, visitor: Visitor) -> Caller:
        """The Caller the scheduler checks operations against, made as for a gRPC call."""
        if not visitor.checked:
            return EVERYONE
        from granary.auth.callers import operation_callers

        assert self.auth is not None
        token = set_identity(visitor.identity)
        try:
            return operation_callers(self.auth.policy)()
        finally:
            reset_identity(token)


def http_error(e: GranaryError) -> web.HTTPException:
    """The HTTP status of a domain error, its message as the JSON body (the text gRPC would give)."""
    import json

    name = e.code.name
    status = {
        "INVALID_ARGUMENT": 400, "OUT_OF_RANGE": 400, "FAILED_PRECONDITION": 400, "UNAUTHENTICATED": 401,
        "PERMISSION_DENIED": 403, "NOT_FOUND": 404, "UNIMPLEMENTED": 404, "RESOURCE_EXHAUSTED": 429,
        "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504,
    }.get(name, 500)
    body = json.dumps({"error": e.message, "code": name})
    cls = web.HTTPException
    for c in (web.HTTPBadRequest, web.HTTPUnauthorized, web.HTTPForbidden, web.HTTPNotFound,
              web.HTTPTooManyRequests, web.HTTPServiceUnavailable, web.HTTPGatewayTimeout,
              web.HTTPInternalServerError):
        if c.status_code == status:
            cls = c
            break
    headers = dict(CHALLENGE) if status == 401 else {}
    return cls(text=body, content_type="application/json", headers=headers)
