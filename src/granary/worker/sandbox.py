"""How a command is wrapped: a plain process, or bubblewrap.

Under bubblewrap the action sees a read-only view of the system (/usr, /etc,
/bin, /lib*, ... as they are on the host, symlinks kept), a private /tmp,
/proc and /dev, no network (when the host allows a network namespace), its
own PID namespace, and its input root bound read-write at the same path as
on the host. --die-with-parent ties it to the worker.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Protocol

log = logging.getLogger("granary.worker.sandbox")

SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt")


class Sandbox(Protocol):
    name: str

    def wrap(self, argv: list[str], root: Path, cwd: Path) -> list[str]: ...


class NoSandbox:
    name = "none"

    def wrap(self, argv: list[str], root: Path, cwd: Path) -> list[str]:
        return argv


class Bubblewrap:
    name = "bwrap"

    def __init__(self, bwrap: str, extra_paths: tuple[str, ...] = (), unshare_net: bool = True):
        self.bwrap = bwrap
        self.unshare_net = unshare_net
        self.paths = tuple(dict.fromkeys([*SYSTEM_PATHS, *extra_paths]))

    def _system(self) -> list[str]:
        args: list[str] = []
        for p in self.paths:
            if os.path.islink(p):
                args += ["--symlink", os.readlink(p), p]
            elif os.path.isdir(p) or os.path.isfile(p):
                args += ["--ro-bind", p, p]
        return args

    def wrap(self, argv: list[str], root: Path, cwd: Path) -> list[str]:
        return [
            self.bwrap,
            "--die-with-parent",
            "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            *(["--unshare-net"] if self.unshare_net else []),
            *self._system(),
            "--proc", "/proc",
            "--dev", "/dev",
            "--tmpfs", "/tmp",
            "--bind", str(root), str(root),
            "--chdir", str(cwd),
            "--",
            *argv,
        ]


def _probe(box: Bubblewrap) -> str:
    """'' when the sandbox runs /bin/sh here, else why not."""
    with tempfile.TemporaryDirectory(prefix="granary-bwrap-probe-") as d:
        argv = box.wrap(["/bin/sh", "-c", "exit 0"], Path(d), Path(d))
        try:
            r = subprocess.run(argv, check=False, capture_output=True, timeout=30, env={"PATH": "/usr/bin:/bin"})
        except (OSError, subprocess.TimeoutExpired) as e:
            return str(e)
        return "" if r.returncode == 0 else r.stderr.decode(errors="replace").strip() or f"exit {r.returncode}"


def make_sandbox(mode: str, extra_paths: tuple[str, ...] = ()) -> Sandbox:
    """'none', 'bwrap' (must work, else ValueError) or 'auto' (bwrap when it works)."""
    if mode == "none":
        return NoSandbox()
    exe = shutil.which("bwrap")
    if exe is None:
        if mode == "bwrap":
            raise ValueError("--sandbox=bwrap: bubblewrap (bwrap) is not installed")
        return NoSandbox()
    box = Bubblewrap(exe, extra_paths)
    why = _probe(box)
    if why:  # maybe only network namespaces are refused (some containers)
        box = Bubblewrap(exe, extra_paths, unshare_net=False)
        if not _probe(box):
            log.warning("bubblewrap cannot create a network namespace here (%s); actions keep the network", why)
            return box
        if mode == "bwrap":
            raise ValueError(f"--sandbox=bwrap: bubblewrap does not work here: {why}")
        log.info("bubblewrap does not work here (%s); running actions as plain processes", why)
        return NoSandbox()
    return box
