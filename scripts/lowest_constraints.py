"""Print pip constraints pinning every direct dependency of Granary to the floor pyproject.toml admits.

Usage: python lowest_constraints.py [EXTRA...]   e.g. `lowest_constraints.py all > lowest.txt`

Covers the build backend too (pip applies PIP_CONSTRAINT inside its isolated build environment),
so `PIP_CONSTRAINT=lowest.txt pip install .` builds and installs Granary exactly as a user holding
the oldest releases we claim to support would. A requirement without a `>=` floor is an error:
every dependency must say how old it may be.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?\s*(.*)$")


def floors(requirements: list[str], project: str, extras: dict[str, list[str]]) -> dict[str, str]:
    pins: dict[str, str] = {}
    for req in requirements:
        m = REQUIREMENT.match(req.split(";")[0])
        if m is None:
            raise SystemExit(f"cannot read requirement {req!r}")
        name, wanted_extras, spec = m.group(1), m.group(2), m.group(3)
        if name.lower() == project:  # a self-reference like granary[redis,s3]
            for extra in (wanted_extras or "").split(","):
                pins.update(floors(extras[extra.strip()], project, extras))
            continue
        floor = next((c.strip()[2:].strip() for c in spec.split(",") if c.strip().startswith((">=", "=="))), None)
        if floor is None:
            raise SystemExit(f"requirement {req!r} has no floor (>=)")
        pins[name] = floor
    return pins


def main(argv: list[str]) -> int:
    meta = tomllib.loads(PYPROJECT.read_text())
    project = meta["project"]["name"].lower()
    extras = meta["project"].get("optional-dependencies", {})
    wanted = list(meta["build-system"]["requires"]) + list(meta["project"]["dependencies"])
    for extra in argv:
        if extra not in extras:
            raise SystemExit(f"unknown extra {extra!r} (known: {', '.join(sorted(extras))})")
        wanted.append(f"{project}[{extra}]")
    for name, floor in floors(wanted, project, extras).items():
        print(f"{name}=={floor}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
