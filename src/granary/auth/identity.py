"""Who is calling: an Identity, and the context variable that holds it for the current call."""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class AuthMethod(StrEnum):
    BASIC = "basic"
    TOKEN = "token"  # personal access token
    JWT = "jwt"
    MTLS = "mtls"
    ANONYMOUS = "anonymous"
    LOCAL_WORKER = "local-worker"  # the secret `granary serve` gives its own workers (localworker.py)


@dataclass(frozen=True)
class Identity:
    """An authenticated caller (or ANONYMOUS, the caller who presented no credentials).

    `scopes` and `instance_prefix` restrict what a personal access token may do beyond what
    its owner may do; None means no restriction.
    """

    name: str
    method: AuthMethod
    groups: frozenset[str] = frozenset()
    claims: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)
    scopes: frozenset[str] | None = None
    instance_prefix: str | None = None
    token_id: str | None = None

    @property
    def authenticated(self) -> bool:
        return self.method is not AuthMethod.ANONYMOUS

    def describe(self) -> str:
        return f"{self.name!r} ({self.method.value})" if self.authenticated else "anonymous caller"


ANONYMOUS = Identity("anonymous", AuthMethod.ANONYMOUS)

_current: ContextVar[Identity] = ContextVar("granary_identity", default=ANONYMOUS)


def current_identity() -> Identity:
    """The caller of the gRPC call being served (ANONYMOUS outside a call or without credentials)."""
    return _current.get()


def set_identity(identity: Identity) -> Token[Identity]:
    return _current.set(identity)


def reset_identity(token: Token[Identity]) -> None:
    _current.reset(token)


def identity_or_peer(context: Any) -> str:
    """Who a call counts against for per-client limits: its identity when it has one, else its host."""
    from granary.services.client_key import peer_host

    identity = current_identity()
    return f"identity:{identity.name}" if identity.authenticated else peer_host(context)
