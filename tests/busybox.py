"""Debian's static busybox: a whole, offline sysroot for actions that run with their input root as /."""

from __future__ import annotations

import os
import subprocess

BUSYBOX = "/bin/busybox"


def static_busybox() -> bool:
    """busybox-static is present: it runs in a sysroot without libc (the `busybox` package's would not)."""
    if not os.access(BUSYBOX, os.X_OK):
        return False
    r = subprocess.run(["ldd", BUSYBOX], capture_output=True, text=True, check=False,
                       env={"LC_ALL": "C", "PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    return "not a dynamic executable" in r.stdout + r.stderr


def applets() -> list[str]:
    """The applet names busybox answers to (each becomes a symlink to it), busybox itself left out."""
    names = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout.split()
    return [n for n in names if n != "busybox"]
