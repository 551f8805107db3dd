"""How a command is wrapped: a plain process under a reaper, or bubblewrap.

Actions run strangers' code, so the worker is a privilege boundary.

Who runs it. A worker running as root runs actions as an unprivileged uid
(ActionUser, nobody by default): bubblewrap itself is started as that uid
(setpriv drops to it, with no capabilities, an empty bounding set and
no_new_privs), so the action's user namespace maps to it and it holds no
capability on the host. bubblewrap resolves its bind sources as the uid that
runs it, so the input root must be reachable by that uid: the worker shows
its work directory at a path the action uid can traverse (its own mount
namespace, see worker/mountview.py). Where the input root is still out of
reach (its parents only root can traverse, e.g. /root, and no such view),
a small launcher sandbox comes first (bubblewrap as root, showing the
host's system paths and the input root at /granary-input), in which setpriv
drops to the action uid and starts the real sandbox; that costs a second
bubblewrap (about twice the CPU per action), so it is only the fallback. A
worker that is not root runs actions as itself.

An input root is run in one of two layouts:

* host tools (Bazel and most REAPI clients): the input root is a directory
  somewhere on the host and the command uses the host's programs. Under
  bubblewrap the action sees a read-only view of the system (/usr, /bin,
  /lib*, /opt, ... as on the host, symlinks kept), of /etc only what
  toolchains read (ETC_ENTRIES: no shadow, no keys), a private /tmp, /proc
  and /dev, and its input root bound read-write at the same path as on the
  host.
* filesystem image (BuildStream, and any client that stages a whole sysroot,
  as buildbox-run-bubblewrap expects): the input root *is* `/`. Nothing of the
  host is visible; bubblewrap mounts a fresh /proc and a minimal /dev on the
  image's own mount points. An input root says it is one by holding the empty
  directories `dev` and `proc` at its top (inputs.is_filesystem_image).
  Plain processes cannot do this (it needs a mount namespace).

Both layouts get their own user, PID, IPC and UTS namespaces, no capability,
no nested user namespaces (so no private mounts either), and no network
unless the action's platform says dockerNetwork=standard. When the command
ends its PID namespace ends, and every process in it; --die-with-parent ties
it to the worker. The action's environment reaches it through a file
descriptor (--args), never through bubblewrap's own environment.

Without bubblewrap (--sandbox none, an explicit choice) a command runs under
the reaper (reaper.py), which kills whatever it left behind, as the action
uid when the worker is root.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from granary.errors import FailedPrecondition

log = logging.getLogger("granary.worker.sandbox")

SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/opt")
# What toolchains read under /etc: users and groups (no shadow), name resolution, the dynamic
# linker, alternatives, CA certificates (not private keys), time zone, and toolchain settings.
ETC_ENTRIES = (
    "passwd", "group", "hosts", "host.conf", "nsswitch.conf", "resolv.conf", "gai.conf", "services",
    "protocols", "networks", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime",
    "timezone", "ssl/certs", "ssl/openssl.cnf", "ca-certificates", "ca-certificates.conf", "pki/tls/certs",
    "pki/ca-trust", "crypto-policies", "mime.types", "os-release", "lsb-release", "debian_version",
    "java-*", "python3*", "perl", "gitconfig", "inputrc", "bash.bashrc", "profile", "environment",
)
LAUNCHER_INPUT = "/granary-input"  # where the launcher shows the input root to the unprivileged bwrap
LAUNCHER_IMAGE = "/granary-image"  # where it shows a container image's root filesystem
NETWORK_PROPERTY = "dockerNetwork"
NETWORK_VALUES = ("off", "standard")
NOBODY = 65534
SYSTEM_REFRESH = 30.0  # seconds the list of system paths (which of them exist, which are symlinks) is reused


@dataclass(frozen=True)
class ActionUser:
    """The host uid and gid actions run as when the worker is root."""

    uid: int
    gid: int


class Sandbox(Protocol):
    name: str
    network_modes: tuple[str, ...]  # dockerNetwork values this sandbox can honour
    reaper: bool  # the command's leader is the reaper: SIGTERM makes it kill everything first

    def wrap(self, argv: list[str], root: Path, cwd: Path, network: bool, env_fd: int) -> list[str]:
        """Host tools: the input root at its host path, cwd a host path inside it."""
        ...

    def wrap_image(self, argv: list[str], root: Path, cwd: str, network: bool, env_fd: int) -> list[str]:
        """Filesystem image: root becomes '/', cwd is relative to it ('' for '/')."""
        ...

    def wrap_container(self, argv: list[str], rootfs: Path, root: Path, mount: str, cwd: str, network: bool,
                       env_fd: int) -> list[str]:
        """Container image: rootfs (read-only) becomes '/', the input root is mounted at `mount` inside
        it, cwd is relative to the input root."""
        ...


def reaper_argv(argv: list[str], user: ActionUser | None, env_fd: int) -> list[str]:
    script = str(Path(__file__).with_name("reaper.py"))
    ids = ["--uid", str(user.uid), "--gid", str(user.gid)] if user else []
    return [sys.executable, "-I", "-S", script, "--parent", str(os.getpid()), "--env-fd", str(env_fd), *ids,
            "--", *argv]


class NoSandbox:
    name = "none"
    network_modes = ("standard",)  # no network namespace: the host's network is all there is
    reaper = True

    def __init__(self, user: ActionUser | None = None):
        self.user = user

    def wrap(self, argv: list[str], root: Path, cwd: Path, network: bool = True, env_fd: int = -1) -> list[str]:
        return reaper_argv(argv, self.user, env_fd)

    def wrap_image(self, argv: list[str], root: Path, cwd: str, network: bool = True, env_fd: int = -1) -> list[str]:
        raise FailedPrecondition(
            "the input root is a whole filesystem (it holds the empty mount points 'dev' and 'proc'), so the"
            " action must run with it as '/', which needs the bubblewrap sandbox; this worker runs actions as"
            " plain processes (start it with --sandbox=bwrap where bubblewrap works)"
        )

    def wrap_container(self, argv: list[str], rootfs: Path, root: Path, mount: str, cwd: str, network: bool = True,
                       env_fd: int = -1) -> list[str]:
        raise FailedPrecondition(
            "the action asks for a container image (platform property container-image), which needs the bubblewrap"
            " sandbox; this worker runs actions as plain processes (start it with --sandbox=bwrap)"
        )


def etc_paths() -> list[str]:
    found: list[str] = []
    for entry in ETC_ENTRIES:
        found += sorted(glob.glob(os.path.join("/etc", entry)))
    return found


class Bubblewrap:
    name = "bwrap"
    reaper = False

    def __init__(self, bwrap: str, extra_paths: tuple[str, ...] = (), unshare_net: bool = True,
                 user: ActionUser | None = None, setpriv: str | None = None, disable_userns: bool = True,
                 views: tuple[tuple[str, str], ...] = ()):
        """views: (real directory, another path showing it that the action uid can traverse)."""
        self.bwrap = bwrap
        self.unshare_net = unshare_net
        self.disable_userns = disable_userns
        self.user = user
        self.setpriv = setpriv
        self.views = views
        self.paths = tuple(dict.fromkeys([*SYSTEM_PATHS, *etc_paths(), *extra_paths]))
        self.network_modes = NETWORK_VALUES if unshare_net else ("standard",)
        self._system_args: tuple[list[str], float] | None = None
        self.force_launcher = False  # for tests and the probe: always take the two-step path

    def with_views(self, views: tuple[tuple[str, str], ...]) -> Bubblewrap:
        box = Bubblewrap(self.bwrap, (), self.unshare_net, self.user, self.setpriv, self.disable_userns, views)
        box.paths, box.network_modes = self.paths, self.network_modes
        return box

    def _system(self) -> list[str]:
        """The system paths' arguments, re-read every SYSTEM_REFRESH seconds (they were ~10% of
        the worker's CPU per action when stat'ed each time)."""
        now = time.monotonic()
        if self._system_args is None or now - self._system_args[1] > SYSTEM_REFRESH:
            args: list[str] = []
            for p in self.paths:
                if os.path.islink(p):
                    args += ["--symlink", os.readlink(p), p]
                elif os.path.isdir(p) or os.path.isfile(p):
                    args += ["--ro-bind", p, p]
            self._system_args = (args, now)
        return list(self._system_args[0])

    def _setpriv(self) -> list[str]:
        assert self.user is not None and self.setpriv is not None
        return [self.setpriv, "--reuid", str(self.user.uid), "--regid", str(self.user.gid), "--clear-groups",
                "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]

    def _source(self, root: Path | str) -> str | None:
        """Where the action uid's bubblewrap finds the input root (None: out of its reach)."""
        if self.user is None:
            return str(root)
        if self.force_launcher:
            return None
        path = str(root)
        candidates = [alias + path[len(real):] for real, alias in self.views
                      if path == real or path.startswith(real + "/")] + [path]
        for c in candidates:
            if reachable(c, self.user):
                return c
        return None

    def _launcher(self, root: Path, rootfs: Path | None = None) -> list[str]:
        """Root's part: show the system and the input root where the action uid can reach them, drop to it."""
        if self.user is None:
            return []
        assert self.setpriv is not None
        tools = {os.path.dirname(os.path.realpath(t)) for t in (self.bwrap, self.setpriv)}
        extra: list[str] = []
        for t in sorted(tools):
            if not any(t == p or t.startswith(p + "/") for p in self.paths):
                extra += ["--ro-bind", t, t]
        # bwrap as root makes the parents of its mount points 0700: the action uid must traverse them
        parents = sorted({a for p in [*self.paths, *tools] for a in _ancestors(p)})
        return [
            self.bwrap, "--die-with-parent", "--unshare-ipc", "--unshare-uts",
            *[arg for a in parents for arg in ("--perms", "0755", "--dir", a)],
            *self._system(), *extra,
            "--bind", "/proc", "/proc",  # a fully visible proc, so the inner sandbox may mount its own
            "--dev-bind", "/dev", "/dev",
            "--tmpfs", "/tmp",  # where the inner bwrap mounts its new root
            "--bind", str(root), LAUNCHER_INPUT,
            *(["--ro-bind", str(rootfs), LAUNCHER_IMAGE] if rootfs is not None else []),
            "--",
            *self._setpriv(),
        ]

    def _namespaces(self, network: bool, env_fd: int) -> list[str]:
        ids = ["--uid", str(self.user.uid), "--gid", str(self.user.gid)] if self.user else []
        return [
            self.bwrap,
            *(["--args", str(env_fd)] if env_fd >= 0 else []),
            "--die-with-parent", "--unshare-user", *ids, *(["--disable-userns"] if self.disable_userns else []),
            "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            *(["--unshare-net"] if self.unshare_net and not network else []),
            "--cap-drop", "ALL",
        ]

    def _start(self, root: Path) -> tuple[list[str], str]:
        """What runs before the action's bubblewrap, and where that finds the input root."""
        source = self._source(root)
        if source is None:
            return self._launcher(root), LAUNCHER_INPUT
        return (self._setpriv() if self.user is not None else []), source

    def wrap_image(self, argv: list[str], root: Path, cwd: str, network: bool = False, env_fd: int = -1) -> list[str]:
        start, source = self._start(root)
        return [
            *start,
            *self._namespaces(network, env_fd),
            "--bind", source, "/",
            "--proc", "/proc",
            "--dev", "/dev",
            "--chdir", "/" + cwd,
            "--",
            *argv,
        ]

    def wrap_container(self, argv: list[str], rootfs: Path, root: Path, mount: str, cwd: str, network: bool = False,
                       env_fd: int = -1) -> list[str]:
        source, image = self._source(root), self._source(rootfs)
        if source is None or image is None:  # the launcher shows both where the action uid reaches them
            start, source, image = self._launcher(root, rootfs), LAUNCHER_INPUT, LAUNCHER_IMAGE
        else:
            start = self._setpriv() if self.user is not None else []
        return [
            *start,
            *self._namespaces(network, env_fd),
            "--ro-bind", image, "/",
            "--proc", "/proc",
            "--dev", "/dev",
            "--tmpfs", "/tmp",
            "--bind", source, mount,
            "--chdir", mount.rstrip("/") + ("/" + cwd if cwd else ""),
            "--",
            *argv,
        ]

    def wrap(self, argv: list[str], root: Path, cwd: Path, network: bool = False, env_fd: int = -1) -> list[str]:
        start, source = self._start(root)
        return [
            *start,
            *self._namespaces(network, env_fd),
            *self._system(),
            "--proc", "/proc",
            "--dev", "/dev",
            "--tmpfs", "/tmp",
            "--bind", source, str(root),
            "--chdir", str(cwd),
            "--",
            *argv,
        ]


def reachable(path: str, user: ActionUser) -> bool:
    """Whether `user` (no supplementary groups) can reach `path`: search permission on every
    directory above it, none of them a symlink (bubblewrap resolves the path as that uid)."""
    parts = path.rstrip("/").split("/")
    for i in range(1, len(parts)):
        parent = "/".join(parts[:i]) or "/"
        try:
            st = os.lstat(parent)
        except OSError:
            return False
        if not stat.S_ISDIR(st.st_mode):
            return False
        if st.st_uid == user.uid:
            bit = stat.S_IXUSR
        elif st.st_gid == user.gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def _ancestors(path: str) -> list[str]:
    parts = path.strip("/").split("/")[:-1]
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def _probe(box: Bubblewrap) -> str:
    """'' when the sandbox runs /bin/sh here, else why not (for a root worker: both the direct
    start and the launcher, whichever an input root will need)."""
    for launcher in ((False, True) if box.user is not None else (False,)):
        with tempfile.TemporaryDirectory(prefix="granary-bwrap-probe-") as d:
            if box.user is not None:
                os.chmod(d, 0o700)
                os.chown(d, box.user.uid, box.user.gid)
            box.force_launcher = launcher
            try:
                argv = box.wrap(["/bin/sh", "-c", "exit 0"], Path(d), Path(d))
            finally:
                box.force_launcher = False
            try:
                r = subprocess.run(argv, check=False, capture_output=True, timeout=30,
                                   env={"PATH": "/usr/bin:/bin"})
            except (OSError, subprocess.TimeoutExpired) as e:
                return str(e)
            if r.returncode != 0:
                return r.stderr.decode(errors="replace").strip() or f"exit {r.returncode}"
    return ""


def default_user() -> ActionUser | None:
    """nobody when the worker is root (actions never run as root), else the worker's own uid (None)."""
    return ActionUser(NOBODY, NOBODY) if os.geteuid() == 0 else None


def make_sandbox(mode: str, extra_paths: tuple[str, ...] = (), user: ActionUser | None = None) -> Sandbox:
    """'none', 'bwrap' (must work, else ValueError) or 'auto' (bwrap when it works, else a warning)."""
    if mode == "none":
        return NoSandbox(user)
    why = ""
    exe = shutil.which("bwrap")
    setpriv = shutil.which("setpriv") if user is not None else None
    if exe is None:
        why = "bubblewrap (bwrap) is not installed"
    elif user is not None and setpriv is None:
        why = "setpriv (util-linux) is not installed, and a root worker needs it to start bwrap as the action uid"
    else:
        box = Bubblewrap(exe, extra_paths, user=user, setpriv=setpriv)
        why = _probe(box)
        if not why:
            return box
        # bubblewrap before 0.8 has no --disable-userns; some containers refuse network namespaces
        for net, no_userns in ((True, False), (False, True), (False, False)):
            box = Bubblewrap(exe, extra_paths, unshare_net=net, user=user, setpriv=setpriv, disable_userns=no_userns)
            if _probe(box):
                continue
            if not no_userns:
                log.warning("bubblewrap cannot disable user namespaces inside the sandbox (%s); actions may"
                            " create their own (still without privileges on the host)", why)
            if not net:
                log.warning("bubblewrap cannot create a network namespace here (%s); actions keep the network", why)
            return box
    if mode == "bwrap":
        raise ValueError(f"--sandbox=bwrap: bubblewrap does not work here: {why}")
    log.warning("--sandbox auto: no bwrap sandbox (%s); actions run as plain processes without isolation"
                " (pass --sandbox none to choose that explicitly)", why)
    return NoSandbox(user)
