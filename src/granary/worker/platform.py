"""The platform properties a worker advertises (REAPI platform.md names)."""

from __future__ import annotations

import platform
import sys

from granary.errors import ConfigError

# platform.machine() spellings -> REAPI ISA names (platform.md: "x86-64", "aarch64", ...).
_ISA = {
    "x86_64": "x86-64", "amd64": "x86-64", "i386": "x86-32", "i686": "x86-32",
    "aarch64": "aarch64", "arm64": "aarch64", "armv7l": "armv7l",
    "ppc64le": "power-isa-le", "ppc64": "power-isa-be", "s390x": "s390x", "riscv64": "riscv64",
}


def os_family() -> str:
    return {"linux": "linux", "darwin": "macos", "win32": "windows"}.get(sys.platform, sys.platform)


def isa() -> str:
    machine = platform.machine().lower()
    return _ISA.get(machine, machine)


def parse_property(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--property: expected KEY=VALUE, got {text!r}")
    return key, value


def properties(extra: list[tuple[str, str]], network_modes: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """OSFamily, ISA and the dockerNetwork values the sandbox honours, then the extra ones.

    A repeated key adds a value; an extra OSFamily, ISA or dockerNetwork replaces the detected ones.
    """
    unsupported = sorted({v for k, v in extra if k == "dockerNetwork" and v not in network_modes})
    if unsupported:  # advertising a network mode the sandbox cannot enforce would run actions unconfined
        raise ConfigError(
            f"--property dockerNetwork={unsupported[0]}: this worker's sandbox can only honour"
            f" {', '.join(network_modes) or 'no dockerNetwork value'}"
        )
    overridden = {k for k, _ in extra if k in ("OSFamily", "ISA", "dockerNetwork")}
    found = [("OSFamily", os_family()), ("ISA", isa()), *(("dockerNetwork", m) for m in network_modes)]
    detected = [(k, v) for k, v in found if k not in overridden]
    return list(dict.fromkeys([*detected, *extra]))
