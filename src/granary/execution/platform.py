"""Platform requirements (from an Action or Command) and the capabilities workers offer.

A requirement is a (name, value) pair; a worker satisfies an action when,
for every pair, it advertises that value under that name. A name may carry
several values on either side (every required value must be offered).

One exception, container-image: an action names any image
(container-image=docker://HOST/REPO:TAG), which no worker can list in
advance, so a worker that runs container images advertises the single value
container-image=docker://* and that satisfies every docker:// value.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

Requirements = tuple[tuple[str, str], ...]
IMAGE_PROPERTY = "container-image"
ANY_IMAGE = "docker://*"


def offers(values: set[str] | tuple, name: str, value: str) -> bool:
    """Whether a worker offering `values` under `name` satisfies name=value."""
    if value in values:
        return True
    return name == IMAGE_PROPERTY and value.startswith("docker://") and ANY_IMAGE in values


def requirements_of(action_platform, command_platform) -> Requirements:
    """Action.platform when it has properties (REAPI 2.2+), Command.platform otherwise."""
    source = action_platform if action_platform is not None and action_platform.properties else command_platform
    if source is None:
        return ()
    return tuple(sorted({(p.name, p.value) for p in source.properties}))


def key_of(reqs: Requirements) -> str:
    return json.dumps([list(p) for p in reqs], separators=(",", ":"))


def from_key(key: str) -> Requirements:
    return tuple((str(k), str(v)) for k, v in json.loads(key))


class Capabilities:
    """What one worker (or one configured known platform) offers: name -> set of values."""

    def __init__(self, pairs: Iterable[tuple[str, str]]):
        self.values: dict[str, set[str]] = {}
        for k, v in pairs:
            self.values.setdefault(k, set()).add(v)

    def satisfies(self, reqs: Requirements) -> bool:
        return all(offers(self.values.get(k, ()), k, v) for k, v in reqs)

    def pairs(self) -> list[tuple[str, str]]:
        return sorted((k, v) for k, vs in self.values.items() for v in vs)


def unsatisfied_reason(reqs: Requirements, offered: Sequence[Capabilities]) -> str | None:
    """None if some offer satisfies reqs, else a message naming the property no worker offers."""
    if any(c.satisfies(reqs) for c in offered):
        return None
    if not offered:
        return "no worker is registered for this instance" + (
            f" (the action needs {_fmt(reqs)})" if reqs else ""
        )
    for k, v in reqs:
        if not any(offers(c.values.get(k, ()), k, v) for c in offered):
            seen = sorted({x for c in offered for x in c.values.get(k, ())})
            offered = f"workers offer {k}: {', '.join(seen)}" if seen else f"no worker has property {k!r}"
            return f"no worker can satisfy platform property {k}={v} ({offered})"
    return f"no single worker satisfies all of the platform properties {_fmt(reqs)}"


def _fmt(reqs: Requirements) -> str:
    return ", ".join(f"{k}={v}" for k, v in reqs)
