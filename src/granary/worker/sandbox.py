"""How a command is wrapped: a plain process, or bubblewrap.

An input root is run in one of two layouts:

* host tools (Bazel and most REAPI clients): the input root is a directory
  somewhere on the host and the command uses the host's programs. Under
  bubblewrap the action sees a read-only view of the system (/usr, /etc,
  /bin, /lib*, ... as they are on the host, symlinks kept), a private /tmp,
  /proc and /dev, and its input root bound read-write at the same path as on
  the host.
* filesystem image (BuildStream, and any client that stages a whole sysroot,
  as buildbox-run-bubblewrap expects): the input root *is* `/`. Nothing of the
  host is visible; bubblewrap mounts a fresh /proc and a minimal /dev on the
  image's own mount points. An input root says it is one by holding the empty
  directories `dev` and `proc` at its top (inputs.is_filesystem_image).
  Plain processes cannot do this (it needs a mount namespace).

Both layouts get no network (when the host allows a network namespace), their
own PID, IPC and UTS namespaces, and --die-with-parent ties them to the worker.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Protocol

from granary.errors import FailedPrecondition

log = logging.getLogger("granary.worker.sandbox")

SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt")


class Sandbox(Protocol):
    name: str

    def wrap(self, argv: list[str], root: Path, cwd: Path) -> list[str]:
        """Host tools: the input root at its host path, cwd a host path inside it."""
        ...

    def wrap_image(self, argv: list[str], root: Path, cwd: str) -> list[str]:
        """Filesystem image: root becomes '/', cwd is relative to it ('' for '/')."""
        ...


class NoSandbox:
    name = "none"

    def wrap(self, argv: list[str], root: Path, cwd: Path) -> list[str]:
        return argv

    def wrap_image(self, argv: list[str], root: Path, cwd: str) -> list[str]:
        raise FailedPrecondition(
            "the input root is a whole filesystem (it holds the empty mount points 'dev' and 'proc'), so the"
            " action must run with it as '/', which needs the bubblewrap sandbox; this worker runs actions as"
            " plain processes (start it with --sandbox=bwrap where bubblewrap works)"
        )


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

    def _namespaces(self) -> list[str]:
        return [
            self.bwrap,
            "--die-with-parent",
            "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            *(["--unshare-net"] if self.unshare_net else []),
        ]

    def wrap_image(self, argv: list[str], root: Path, cwd: str) -> list[str]:
        return [
            *self._namespaces(),
            "--bind", str(root), "/",
            "--proc", "/proc",
            "--dev", "/dev",
            "--chdir", "/" + cwd,
            "--",
            *argv,
        ]

    def wrap(self, argv: list[str], root: Path, cwd: Path) -> list[str]:
        return [
            *self._namespaces(),
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
