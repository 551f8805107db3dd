"""From the authenticated identity of the current call to the Caller the scheduler checks
operations against (execution/owners.py): its name, and whether it is `admin` on an instance."""

from __future__ import annotations

from granary.auth.identity import current_identity
from granary.auth.permissions import Permission, Policy
from granary.execution.owners import Caller, CallerOf, everyone


def operation_callers(policy: Policy | None) -> CallerOf:
    """None (authentication off): everyone is the same caller and sees everything."""
    if policy is None:
        return everyone

    def caller() -> Caller:
        identity = current_identity()
        name = identity.name if identity.authenticated else ""

        def sees_all(instance: str) -> bool:
            return policy.allows(identity, instance, Permission.ADMIN)

        return Caller(name, sees_all, identity.describe())

    return caller
