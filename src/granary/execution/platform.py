"""Platform requirements (from an Action or Command) and the capabilities workers offer.

A requirement is a (name, value) pair; a worker satisfies an action when,
for every pair, it advertises that value under that name. A name may carry
several values on either side (every required value must be offered).

Values are compared as other remote-execution services compare them, so that
the platforms Bazel users already have work unchanged:

- OSFamily: case-insensitive, with the usual aliases (`Linux` and `linux`;
  `darwin`, `macOS` and `macos`; `Windows` and `windows`). RBE and
  BuildBuddy platforms say `OSFamily=Linux`, REAPI's platform lexicon and
  BuildGrid `linux`.
- ISA and Arch name the same thing, the worker's CPU: REAPI's lexicon and
  BuildGrid say `ISA=x86-64` / `ISA=arm-a64`, BuildBuddy `Arch=amd64` /
  `Arch=arm64`. Either name matches either, and the spellings of one
  architecture are one pool: x86-64, x86_64, amd64, x64; arm-a64, aarch64,
  arm64; ... (ARCH_ALIASES). Other ISA values (extensions such as
  x86-avx2) are compared case-insensitively.

One exception to exact matching, container-image: an action names any image
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
OS_PROPERTY = "OSFamily"
ISA_PROPERTY = "ISA"
ARCH_PROPERTY = "Arch"
POOL_PROPERTY = "Pool"
NETWORK_PROPERTY = "dockerNetwork"
DEFAULT_POOL = "default"
# The conventional names, advertised in GetCapabilities' supported_node_properties.
CONVENTIONAL = (OS_PROPERTY, ISA_PROPERTY, ARCH_PROPERTY, POOL_PROPERTY, IMAGE_PROPERTY, NETWORK_PROPERTY)

# Spellings of one CPU architecture -> (REAPI lexicon ISA value, Go/OCI/BuildBuddy Arch value).
_ARCHES = {
    ("x86-64", "amd64"): ("x86-64", "x86_64", "amd64", "x64"),
    ("arm-a64", "arm64"): ("arm-a64", "aarch64", "arm64", "armv8l"),
    ("x86-32", "386"): ("x86-32", "x86", "386", "i386", "i486", "i586", "i686"),
    ("arm-a32", "arm"): ("arm-a32", "arm", "armv7l", "armv7", "armhf", "armv6l"),
    ("power-isa-le", "ppc64le"): ("power-isa-le", "ppc64le"),
    ("power-isa-be", "ppc64"): ("power-isa-be", "ppc64"),
    ("rv64g", "riscv64"): ("rv64g", "riscv64"),
    ("s390x", "s390x"): ("s390x",),
    ("la64v100", "loong64"): ("la64v100", "loong64", "loongarch64"),
}
ARCH_ALIASES: dict[str, tuple[str, str]] = {alias: names for names, aliases in _ARCHES.items() for alias in aliases}
_OS_ALIASES = {"darwin": "macos", "mac": "macos", "macosx": "macos", "osx": "macos", "win32": "windows"}


def arch_names(value: str) -> tuple[str, str] | None:
    """(ISA value, Arch value) of an architecture's spelling, or None when it names no architecture."""
    return ARCH_ALIASES.get(value.strip().lower())


def canonical(name: str, value: str) -> tuple[str, str]:
    """The (name, value) requirements and offers are compared as."""
    if name == OS_PROPERTY:
        v = value.strip().lower()
        return name, _OS_ALIASES.get(v, v)
    if name in (ISA_PROPERTY, ARCH_PROPERTY):
        names = arch_names(value)
        return ISA_PROPERTY, names[0] if names else value.strip().lower()
    return name, value


def _same_name(a: str, b: str) -> bool:
    return a == b or {a, b} <= {ISA_PROPERTY, ARCH_PROPERTY}


def _offers(values: set[str], name: str, value: str) -> bool:
    """Whether canonical `values` (of canonical `name`) satisfy the canonical name=value."""
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
        self.values: dict[str, set[str]] = {}  # as advertised, for messages and listings
        self._canon: dict[str, set[str]] = {}  # as compared
        for k, v in pairs:
            self.values.setdefault(k, set()).add(v)
            ck, cv = canonical(k, v)
            self._canon.setdefault(ck, set()).add(cv)

    def offers(self, name: str, value: str) -> bool:
        ck, cv = canonical(name, value)
        return _offers(self._canon.get(ck, set()), ck, cv)

    def satisfies(self, reqs: Requirements) -> bool:
        return all(self.offers(k, v) for k, v in reqs)

    def advertised(self, name: str) -> set[str]:
        """The values advertised under name, or under a name matched as the same (ISA and Arch)."""
        return {v for k, vs in self.values.items() if _same_name(k, name) for v in vs}

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
        if not any(c.offers(k, v) for c in offered):
            seen = sorted({x for c in offered for x in c.advertised(k)})
            what = f"workers offer {k}: {', '.join(seen)}" if seen else f"no worker has property {k!r}"
            return f"no worker can satisfy platform property {k}={v} ({what})"
    return f"no single worker satisfies all of the platform properties {_fmt(reqs)}"


def _fmt(reqs: Requirements) -> str:
    return ", ".join(f"{k}={v}" for k, v in reqs)
