"""Whose operation is it: the caller of an Operations or Execution call, as the scheduler sees it.

Each Execute records its caller's identity name on the operation it creates. Identical
in-flight actions share a job, but every Execute call still gets its own operation, so the
second caller owns (sees, waits on, cancels) its own operation on the shared job; cancelling
it cancels the job only once no other caller's operation wants it.

A caller sees only its own operations unless it may see everyone's on that instance
(`admin` there). With authentication off every caller is EVERYONE: name "" and sees all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from granary.errors import PermissionDenied


def _everything(_instance: str) -> bool:
    return True


@dataclass(frozen=True)
class Caller:
    name: str  # identity name recorded on operations it creates ("" without authentication)
    sees_all: Callable[[str], bool] = field(default=_everything, compare=False)  # instance -> admin there
    shown: str = ""  # how messages name the caller

    def may_see(self, instance: str, owner: str) -> bool:
        return owner == self.name or self.sees_all(instance)

    def check(self, instance: str, owner: str, operation: str) -> None:
        if not self.may_see(instance, owner):
            raise PermissionDenied(
                f"operation {operation!r} belongs to another identity; {self.shown or repr(self.name)}"
                f" needs admin on instance {instance!r} to use it"
            )


EVERYONE = Caller("")
CallerOf = Callable[[], Caller]  # the caller of the gRPC call being served


def everyone() -> Caller:
    return EVERYONE
