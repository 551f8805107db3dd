"""Sizes as people write them: 10GiB, 500MB, 1.5GiB or a whole number of bytes.

The grammar the configuration file (granary.config_values) and command-line flags
share, apart from the validation library so that `granary worker` need not load it.
"""

from __future__ import annotations

import re
from typing import Any

from granary.errors import ConfigError

SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?i?b?)?\s*$", re.IGNORECASE)
UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "ki": 1024, "kib": 1024, "m": 10**6, "mb": 10**6,
         "mi": 1 << 20, "mib": 1 << 20, "g": 10**9, "gb": 10**9, "gi": 1 << 30, "gib": 1 << 30,
         "t": 10**12, "tb": 10**12, "ti": 1 << 40, "tib": 1 << 40}


def bytes_in(value: Any) -> int | None:
    """The bytes `value` names, or None when it is not a size."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and value >= 0:
        return value
    m = SIZE.match(str(value)) if isinstance(value, (str, float)) else None
    if not m or m.group(2) is not None and m.group(2).lower() not in UNITS:
        return None
    return int(float(m.group(1)) * UNITS[(m.group(2) or "").lower()])


def not_a_size(value: Any) -> str:
    return f"expected a size like 10GiB or 500MB, got {value!r}"


def parse_size(value: Any, where: str) -> int:
    """A size from a command-line flag; a bad one is a ConfigError naming `where`."""
    n = bytes_in(value)
    if n is None:
        raise ConfigError(f"{where}: {not_a_size(value)}")
    return n
