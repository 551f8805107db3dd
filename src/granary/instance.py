"""Instances: what an `instance_name` on a request maps to."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from granary.actioncache.actioncache import ActionCache
from granary.cas.cas import ContentAddressableStorage
from granary.errors import InvalidArgument

WILDCARD = "*"


@dataclass
class Instance:
    name: str
    cas: ContentAddressableStorage
    action_cache: ActionCache | None
    extras: dict = field(default_factory=dict)  # services added by later layers (execution...)


class Instances:
    """Exact names first; a "*" entry answers every other name with its own namespace."""

    def __init__(self, exact: dict[str, Instance], wildcard: Callable[[str], Instance] | None = None):
        self._exact = dict(exact)
        self._wildcard = wildcard
        self._made: dict[str, Instance] = {}

    def get(self, name: str) -> Instance:
        inst = self._exact.get(name)
        if inst is not None:
            return inst
        inst = self._made.get(name)
        if inst is not None:
            return inst
        if self._wildcard is None:
            known = ", ".join(repr(n) for n in sorted(self._exact)) or "none"
            raise InvalidArgument(f"unknown instance name {name!r} (this server has: {known})")
        if len(self._made) > 10_000:
            self._made.clear()
        inst = self._made[name] = self._wildcard(name)
        return inst

    def all(self) -> list[Instance]:
        return list(self._exact.values())
