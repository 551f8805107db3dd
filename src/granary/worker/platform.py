"""The platform properties a worker advertises (the conventional names: see granary.execution.platform).

Detected: OSFamily (REAPI lexicon: linux, macos, windows), the CPU as both
ISA (REAPI lexicon: x86-64, arm-a64, ...) and Arch (Go/OCI names: amd64,
arm64, ...), the dockerNetwork values the sandbox can honour, and Pool=default.
"""

from __future__ import annotations

import platform
import sys

from granary.errors import ConfigError
from granary.execution.platform import (
    ARCH_PROPERTY,
    DEFAULT_POOL,
    ISA_PROPERTY,
    NETWORK_PROPERTY,
    OS_PROPERTY,
    POOL_PROPERTY,
    arch_names,
)


def os_family() -> str:
    return {"linux": "linux", "darwin": "macos", "win32": "windows"}.get(sys.platform, sys.platform)


def cpu(machine: str | None = None) -> tuple[str, str]:
    """(ISA, Arch) of this machine (platform.machine(): x86_64 -> x86-64, amd64)."""
    m = (machine or platform.machine()).lower()
    return arch_names(m) or (m, m)


def parse_property(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--property: expected KEY=VALUE, got {text!r}")
    return key, value


def properties(extra: list[tuple[str, str]], network_modes: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """The detected properties and the extra ones (--property); the conventional names first.

    A repeated key adds a value. An extra OSFamily, dockerNetwork or Pool replaces the detected one;
    an extra ISA or Arch naming an architecture (arm64, x86-64, ...) replaces the detected CPU under
    both names (the other name is filled in), while other ISA values (x86-avx2) are added to it.
    """
    unsupported = sorted({v for k, v in extra if k == NETWORK_PROPERTY and v not in network_modes})
    if unsupported:  # advertising a network mode the sandbox cannot enforce would run actions unconfined
        raise ConfigError(
            f"--property dockerNetwork={unsupported[0]}: this worker's sandbox can only honour"
            f" {', '.join(network_modes) or 'no dockerNetwork value'}"
        )
    overridden = {k for k, _ in extra if k in (OS_PROPERTY, NETWORK_PROPERTY, POOL_PROPERTY)}
    arches = [arch_names(v) for k, v in extra if k in (ISA_PROPERTY, ARCH_PROPERTY)]
    given = [a for a in arches if a is not None]
    if given:
        overridden |= {ISA_PROPERTY, ARCH_PROPERTY}
    isa_value, arch_value = cpu()
    found = [(OS_PROPERTY, os_family()), (ISA_PROPERTY, isa_value), (ARCH_PROPERTY, arch_value),
             *((NETWORK_PROPERTY, m) for m in network_modes), (POOL_PROPERTY, DEFAULT_POOL)]
    detected = [(k, v) for k, v in found if k not in overridden]
    filled = [(ISA_PROPERTY, a[0]) for a in given] + [(ARCH_PROPERTY, a[1]) for a in given]
    named = {(k, v) for k, v in extra}
    filled = [p for p in filled if not any(k == p[0] and arch_names(v) == arch_names(p[1]) for k, v in named)]
    order = {k: i for i, k in enumerate((OS_PROPERTY, ISA_PROPERTY, ARCH_PROPERTY, NETWORK_PROPERTY, POOL_PROPERTY))}
    return sorted(dict.fromkeys([*detected, *extra, *filled]), key=lambda p: order.get(p[0], len(order)))
