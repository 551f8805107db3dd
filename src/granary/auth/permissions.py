"""Permissions per instance-name prefix, and the Policy that grants or refuses them.

A rule grants permissions on every instance under its prefix to identities named in it
(exact names, or "*" for any authenticated caller), to members of its groups, or to callers
whose JWT claims match. Anonymous grants give permissions to callers who present no
credentials at all. `admin` implies every other permission.

Prefixes follow path segments: "team" and "team/" both cover "team" and "team/linux" but
not "teammates"; "" and "*" cover every instance.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from granary.auth.identity import AuthMethod, Identity
from granary.errors import PermissionDenied, Unauthenticated


class Permission(StrEnum):
    CACHE_READ = "cache-read"  # FindMissingBlobs, BatchReadBlobs, GetTree, ByteStream Read, GetActionResult
    CACHE_WRITE = "cache-write"  # BatchUpdateBlobs, ByteStream Write and QueryWriteStatus
    AC_WRITE = "ac-write"  # UpdateActionResult
    EXECUTE = "execute"  # Execute, WaitExecution
    WORKER = "worker"  # the Bots API
    ADMIN = "admin"  # other people's operations, tokens; implies every other permission


ALL = frozenset(Permission)
# what the local workers of `granary serve` may do, on every instance: run work, fetch inputs, store outputs
LOCAL_WORKER_PERMISSIONS = frozenset({Permission.WORKER, Permission.CACHE_READ, Permission.CACHE_WRITE})
ANY_AUTHENTICATED = "*"


def parse_permission(value: str) -> Permission:
    try:
        return Permission(value)
    except ValueError:
        known = ", ".join(p.value for p in Permission)
        raise ValueError(f"unknown permission {value!r} (known: {known})") from None


def under_prefix(instance: str, prefix: str) -> bool:
    """Whether `instance` lies under `prefix`, segment by segment."""
    base = prefix.rstrip("/")
    if prefix in ("", "*") or base == "":
        return True
    return instance == base or instance.startswith(base + "/")


def _claim_matches(actual: Any, wanted: str | list[str]) -> bool:
    wanted_set = {wanted} if isinstance(wanted, str) else set(wanted)
    if isinstance(actual, list | tuple | set | frozenset):
        return any(str(a) in wanted_set for a in actual)
    return actual is not None and str(actual) in wanted_set


@dataclass(frozen=True)
class Rule:
    instance: str
    permissions: frozenset[Permission]
    identities: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    claims: Mapping[str, str | list[str]] = field(default_factory=dict, hash=False)

    def applies_to(self, identity: Identity) -> bool:
        if ANY_AUTHENTICATED in self.identities or identity.name in self.identities:
            return True
        if self.groups & identity.groups:
            return True
        return bool(self.claims) and all(
            _claim_matches(identity.claims.get(k), v) for k, v in self.claims.items()
        )

    def grants(self, identity: Identity, instance: str, permission: Permission) -> bool:
        return (
            (permission in self.permissions or Permission.ADMIN in self.permissions)
            and under_prefix(instance, self.instance)
            and self.applies_to(identity)
        )


@dataclass(frozen=True)
class AnonymousGrant:
    instance: str
    permissions: frozenset[Permission]

    def grants(self, instance: str, permission: Permission) -> bool:
        return permission in self.permissions and under_prefix(instance, self.instance)


class Policy:
    def __init__(self, rules: Iterable[Rule] = (), anonymous: Iterable[AnonymousGrant] = ()):
        self.rules = tuple(rules)
        self.anonymous = tuple(anonymous)

    def anonymous_may(self, instance: str, permission: Permission) -> bool:
        return any(g.grants(instance, permission) for g in self.anonymous)

    def anonymous_may_anywhere(self, permission: Permission) -> bool:
        return any(permission in g.permissions for g in self.anonymous)

    def allows(self, identity: Identity | None, instance: str, permission: Permission) -> bool:
        try:
            self.check(identity, instance, permission)
        except (PermissionDenied, Unauthenticated):
            return False
        return True

    def check(self, identity: Identity | None, instance: str, permission: Permission) -> None:
        """Raise Unauthenticated (no credentials, no anonymous grant) or PermissionDenied."""
        if identity is not None and identity.method is AuthMethod.LOCAL_WORKER:
            if permission in LOCAL_WORKER_PERMISSIONS:
                return
            raise PermissionDenied(f"{identity.describe()} may not {permission.value} on instance {instance!r}")
        anonymous = identity is None or not identity.authenticated
        if self.anonymous_may(instance, permission) and (
            anonymous or _token_allows(identity, instance, permission)  # type: ignore[arg-type]
        ):
            return
        if identity is None or not identity.authenticated:
            raise Unauthenticated(
                f"{permission.value} on instance {instance!r} needs credentials"
                " (Authorization: Basic or Bearer, a token header, or a client certificate)"
            )
        if not _token_allows(identity, instance, permission):
            scopes = ", ".join(sorted(identity.scopes or ())) or "none"
            where = f" and instances under {identity.instance_prefix!r}" if identity.instance_prefix else ""
            raise PermissionDenied(
                f"{identity.describe()} may not {permission.value} on instance {instance!r}:"
                f" its token is limited to scopes [{scopes}]{where}"
            )
        if any(r.grants(identity, instance, permission) for r in self.rules):
            return
        raise PermissionDenied(
            f"{identity.describe()} lacks permission {permission.value} on instance {instance!r}"
        )


def _token_allows(identity: Identity, instance: str, permission: Permission) -> bool:
    if identity.scopes is not None and permission not in identity.scopes and Permission.ADMIN not in identity.scopes:
        return False
    return identity.instance_prefix is None or under_prefix(instance, identity.instance_prefix)
