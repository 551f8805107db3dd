"""Directories the operator names (data dir, worker cache): usable now, or one line saying why not."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from granary.errors import ConfigError


def ensure_writable_dir(path: Path, what: str) -> Path:
    """Create `path` if needed and prove a file can be written in it; else ConfigError naming `what`."""
    path = Path(os.path.expanduser(path))
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.is_dir():
            where = "is a file" if parent == path else f"{parent} is a file, not a directory"
            raise ConfigError(f"{what} {path}: {where}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".granary-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        reason = (e.strerror or str(e)).lower()
        raise ConfigError(f"{what} {path}: not writable ({reason})") from None
    return path
