"""One cgroup per action: memory, process and CPU limits for the action as a whole.

Standard library only (the non-root fallback test runs it with the system's Python).

At start the worker looks for a place where it may make cgroups with the controllers its limits
need (`find`):

* cgroup v2: the worker's own cgroup (/proc/self/cgroup, line `0::`), on the cgroup2 mount, must
  offer the controllers (cgroup.controllers) and be writable by the worker: root's, or a subtree
  delegated to the worker's uid (systemd: Delegate=yes). A cgroup with processes in it cannot hand
  controllers to its children (the "no internal processes" rule), so the worker first moves every
  process of its cgroup into a child `leaf` (as docker-in-docker moves them into `init`), then
  enables the controllers for its children and makes `granary-worker-PID-ID` beside `leaf`, with
  one child per action.
* cgroup v1: for each controller, the hierarchy it is mounted in (memory, pids, cpu) and the
  worker's cgroup in it; `granary-worker-PID-ID` under that, with one child per action, in each.

Per action (`Tree.acquire`): a cgroup with the limits, written before anything runs in it (one
an earlier action emptied, else a new one). The action enters it before its command runs: the
wrapped command starts with a shell that writes its own pid into the cgroup's `cgroup.procs` and
then execs the rest (`join`), so every process the action ever forks is born inside. After the
action: its events (an OOM kill, a refused fork, counted from when it got the cgroup), then
everything left in it is killed (v2 cgroup.kill, else SIGKILL to each listed process until none
is left) and the cgroup waits for the next action (`Tree.release`); the worker removes them all
when it stops.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("granary.worker.cgroups")

CONTROLLERS = ("memory", "pids", "cpu")
LEAF = "leaf"  # v2: where the worker's processes move, so that its cgroup may enable controllers
PREFIX = "granary-worker-"
CPU_PERIOD = 100_000  # microseconds
REMOVE_SECONDS = 10.0  # for the processes of a killed cgroup to be gone before it is removed

# Enters the cgroups given as `sh -c JOIN granary-cgroup N FILE... ARGV...`, then runs ARGV.
JOIN = ('n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || { echo "granary worker: cannot enter'
        ' the action cgroup ($1)" >&2; exit 125; }; shift; n=$((n - 1)); done; exec "$@"')


class Unusable(Exception):
    """Why cgroups cannot be used here (the message says it for a log line)."""


@dataclass(frozen=True)
class Limits:
    memory: int | None = None  # bytes, all processes of the action together (page cache included)
    pids: int | None = None  # processes and threads of the action at once
    cpus: float | None = None  # CPU time per wall time

    def controllers(self) -> tuple[str, ...]:
        return tuple(c for c, v in zip(CONTROLLERS, (self.memory, self.pids, self.cpus), strict=True)
                     if v is not None)


@dataclass
class Events:
    oom_kills: int = 0  # processes the OOM killer killed at the memory limit
    pids_max: int = 0  # forks (and clones) refused at the process limit


def _read(path: Path) -> str:
    with open(path) as f:
        return f.read()


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _keyed(text: str) -> dict[str, int]:
    """`key value` lines (memory.events, pids.events, memory.oom_control) as a dict."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            out[key] = int(value)
    return out


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code in ("\\040", "\\011", "\\012", "\\134"):
        field = field.replace(code, chr(int(code[1:], 8)))
    return field


@dataclass(frozen=True)
class Mount:
    root: str  # the cgroup shown at the mount point
    point: str
    fstype: str
    options: frozenset[str]  # super options: the v1 controllers of the hierarchy


def mounts(text: str) -> list[Mount]:
    out = []
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        out.append(Mount(_unescape(fields[3]), _unescape(fields[4]), tail[0], frozenset(tail[2].split(","))))
    return out


def own_cgroups(text: str) -> dict[str, str]:
    """/proc/self/cgroup as {controller: path}; the v2 one under ''."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        for c in controllers.split(",") if controllers else [""]:
            out[c] = path
    return out


def _under(mount: Mount, path: str) -> Path | None:
    """Where the cgroup `path` lies under the mount point (None: not visible through it)."""
    root = mount.root.rstrip("/")
    if path != root and not path.startswith(root + "/"):
        return None
    return Path(mount.point + path[len(root):])


def _pid_alive(pid: str) -> bool:
    return pid.isdigit() and os.path.exists(f"/proc/{pid}")


def _procs(d: Path) -> list[int]:
    try:
        return [int(p) for p in _read(d / "cgroup.procs").split()]
    except (OSError, ValueError):
        return []


def kill_all(dirs: list[Path], seconds: float = REMOVE_SECONDS) -> bool:
    """SIGKILL every process in the cgroups until none is left (v2: cgroup.kill); True when empty."""
    for d in dirs:
        if (d / "cgroup.kill").exists():
            with contextlib.suppress(OSError):
                _write(d / "cgroup.kill", "1")
    deadline = time.monotonic() + seconds
    while True:
        left = [p for d in dirs for p in _procs(d)]
        if not left:
            return True
        if time.monotonic() > deadline:
            return False
        for p in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, signal.SIGKILL)
        time.sleep(0.002)


def remove(dirs: list[Path], seconds: float = REMOVE_SECONDS, kill: bool = True) -> bool:
    """Kill what is left in the cgroups (unless not `kill`) and remove them, children first; False
    when one stays."""
    ok = True
    for d in dirs:
        try:
            children = [c for c in d.iterdir() if c.is_dir()]
        except FileNotFoundError:
            continue
        except OSError:
            children = []
        if children and not remove(children, seconds, kill):
            ok = False
            continue
        if kill:
            kill_all([d], seconds)
        deadline = time.monotonic() + (seconds if kill else 0)
        pause = 0.001
        while True:
            try:
                os.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError as e:  # EBUSY for the few milliseconds the kernel takes to let go of the last task
                if time.monotonic() >= deadline:
                    if kill:
                        log.warning("cgroup %s could not be removed: %s", d, e.strerror)
                    ok = False
                    break
                time.sleep(pause)
                pause = min(pause * 2, 0.05)
    return ok


class ActionCgroup:
    """The cgroup (v2) or cgroups (v1, one per hierarchy) of one action."""

    def __init__(self, version: int, dirs: dict[str, Path]):
        self.version = version
        self.dirs = dirs  # controller -> its directory (v2: the same one for all)
        self.unique = list(dict.fromkeys(dirs.values()))
        self.since = Events()  # the counters when this action got the cgroup (a reused one counts on)

    def join(self, argv: list[str]) -> list[str]:
        """argv, started inside this cgroup: a shell enters it, then execs argv."""
        files = [str(d / "cgroup.procs") for d in self.unique]
        return ["/bin/sh", "-c", JOIN, "granary-cgroup", str(len(files)), *files, *argv]

    def counters(self) -> Events:
        ev = Events()
        memory, pids = self.dirs.get("memory"), self.dirs.get("pids")
        with contextlib.suppress(OSError):
            if memory is not None:
                text = _read(memory / ("memory.events" if self.version == 2 else "memory.oom_control"))
                ev.oom_kills = _keyed(text).get("oom_kill", 0)
            if pids is not None:
                ev.pids_max = _keyed(_read(pids / "pids.events")).get("max", 0)
        return ev

    def events(self) -> Events:
        """What happened since this action got the cgroup."""
        now = self.counters()
        return Events(now.oom_kills - self.since.oom_kills, now.pids_max - self.since.pids_max)

    def oom_killed(self) -> bool:
        return self.events().oom_kills > 0

    def kill(self) -> None:
        kill_all(self.unique, seconds=1.0)


class Tree:
    """Where this worker makes its actions' cgroups: one directory per hierarchy (v2: one).

    An action's cgroup, once emptied, waits for the next action instead of being removed: a
    process that makes a PID namespace (bubblewrap) in a cgroup made just before took about 10 ms
    longer to run than in one that had been used before (here, Linux 6.18, cgroup v1)."""

    def __init__(self, version: int, bases: dict[str, Path], where: str):
        self.version = version
        self.bases = bases  # controller -> the worker's directory holding its actions' cgroups
        self.where = where  # for the log
        self._idle: list[ActionCgroup] = []
        self._lock = threading.Lock()

    @property
    def group_oom(self) -> bool:
        """Whether the kernel kills the whole action at an OOM (v2 memory.oom.group); v1 leaves that
        to the worker."""
        return self.version == 2

    def acquire(self, limits: Limits) -> ActionCgroup:
        """An empty cgroup with the limits (written again into a reused one)."""
        with self._lock:
            cg = self._idle.pop() if self._idle else None
        if cg is None:
            cg = self._make(limits)
        else:
            try:
                _set_limits(self.version, cg.dirs, limits)
            except BaseException:
                remove(cg.unique)
                raise
        cg.since = cg.counters()
        return cg

    def release(self, cg: ActionCgroup) -> None:
        """Kill whatever of the action is left in its cgroup; then it waits for the next action."""
        if kill_all(cg.unique):
            with self._lock:
                self._idle.append(cg)
        elif not remove(cg.unique):
            log.warning("cgroup %s keeps processes that SIGKILL does not end", cg.unique[0])

    def _make(self, limits: Limits) -> ActionCgroup:
        name = f"action-{uuid.uuid4().hex[:12]}"
        dirs: dict[str, Path] = {}
        made: list[Path] = []
        try:
            for c in limits.controllers():
                d = self.bases[c] / name
                if d not in made:
                    d.mkdir()
                    made.append(d)
                dirs[c] = d
            _set_limits(self.version, dirs, limits)
        except BaseException:
            remove(made)
            raise
        return ActionCgroup(self.version, dirs)

    def close(self) -> None:
        with self._lock:
            self._idle.clear()
        remove(list(dict.fromkeys(self.bases.values())))


def _set_limits(version: int, dirs: dict[str, Path], limits: Limits) -> None:
    if limits.memory is not None:
        d = dirs["memory"]
        if version == 2:
            _write(d / "memory.max", str(limits.memory))
            if (d / "memory.swap.max").exists():
                _write(d / "memory.swap.max", "0")
            if (d / "memory.oom.group").exists():
                _write(d / "memory.oom.group", "1")
        else:
            _write(d / "memory.limit_in_bytes", str(limits.memory))
            if (d / "memory.memsw.limit_in_bytes").exists():  # swap accounting on: no swap either
                _write(d / "memory.memsw.limit_in_bytes", str(limits.memory))
    if limits.pids is not None:
        _write(dirs["pids"] / "pids.max", str(limits.pids))
    if limits.cpus is not None:
        quota = max(1000, round(limits.cpus * CPU_PERIOD))
        d = dirs["cpu"]
        if version == 2:
            _write(d / "cpu.max", f"{quota} {CPU_PERIOD}")
        else:
            _write(d / "cpu.cfs_period_us", str(CPU_PERIOD))
            _write(d / "cpu.cfs_quota_us", str(quota))


def _remove_stale(parent: Path) -> None:
    """The directories of worker processes that are gone, when empty: their actions died with them
    (a pid that looks dead may be a worker in another PID namespace: nothing is killed)."""
    with contextlib.suppress(OSError):
        for d in parent.iterdir():
            if d.is_dir() and d.name.startswith(PREFIX):
                pid = d.name[len(PREFIX):].split("-")[0]
                if not _pid_alive(pid):
                    remove([d], kill=False)


def _probe(tree: Tree, limits: Limits) -> None:
    """Make an action cgroup with the limits and start a process in it, as an action would."""
    cg = tree.acquire(limits)
    try:
        r = subprocess.run(cg.join(["/bin/sh", "-c", "exit 0"]), capture_output=True, text=True, check=False,
                           timeout=30)
        if r.returncode != 0:
            raise Unusable(r.stderr.strip() or f"a process could not enter {cg.unique[0]} (exit {r.returncode})")
    finally:
        tree.release(cg)


def _oserror(what: str, e: OSError) -> Unusable:
    return Unusable(f"{what}: {e.strerror or e}")


def setup_v2(own: Path, controllers: tuple[str, ...]) -> Tree:
    """The v2 tree under the worker's cgroup `own` (processes moved into own/leaf when needed)."""
    if own.name == LEAF and (own.parent / "cgroup.subtree_control").exists():
        enabled = set(_read(own.parent / "cgroup.subtree_control").split())
        if set(controllers) <= enabled:  # this process (or its parent) did this before: use that
            own = own.parent
    try:
        offered = set(_read(own / "cgroup.controllers").split())
    except OSError as e:
        raise _oserror(f"cgroup v2: cannot read {own}/cgroup.controllers", e) from None
    missing = [c for c in controllers if c not in offered]
    if missing:
        have = " ".join(sorted(offered)) or "none"
        raise Unusable(f"cgroup v2: the worker's cgroup {own} does not offer the {' and '.join(missing)}"
                       f" controller{'s' if len(missing) > 1 else ''} (cgroup.controllers: {have})")
    enable = " ".join(f"+{c}" for c in controllers)
    try:
        _write(own / "cgroup.subtree_control", enable)
    except OSError as e:
        if e.errno != errno.EBUSY:
            raise _oserror(f"cgroup v2: cannot enable {' '.join(controllers)} in {own}/cgroup.subtree_control",
                           e) from None
        _move_into_leaf(own)
        try:
            _write(own / "cgroup.subtree_control", enable)
        except OSError as e2:
            raise _oserror(f"cgroup v2: cannot enable {' '.join(controllers)} in {own}/cgroup.subtree_control"
                           f" even with its processes moved into {LEAF}", e2) from None
    _remove_stale(own)
    base = own / f"{PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        base.mkdir()
        _write(base / "cgroup.subtree_control", enable)
    except OSError as e:
        remove([base])
        raise _oserror(f"cgroup v2: cannot make {base}", e) from None
    return Tree(2, dict.fromkeys(controllers, base), f"cgroup v2 {base}")


def _move_into_leaf(own: Path) -> None:
    leaf = own / LEAF
    try:
        leaf.mkdir(exist_ok=True)
        for _ in range(100):  # a process may fork meanwhile: until none is left
            pids = _procs(own)
            if not pids:
                return
            for p in pids:
                try:
                    _write(leaf / "cgroup.procs", str(p))
                except ProcessLookupError:
                    continue
    except OSError as e:
        raise _oserror(f"cgroup v2: cannot move the processes of {own} into {leaf}", e) from None
    raise Unusable(f"cgroup v2: the processes of {own} keep coming back (moved into {leaf} 100 times)")


def setup_v1(dirs: dict[str, Path]) -> Tree:
    """The v1 tree: `granary-worker-...` under the worker's cgroup in each controller's hierarchy."""
    suffix = f"{PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    bases: dict[str, Path] = {}
    made: list[Path] = []
    for c, own in dirs.items():
        base = own / suffix
        if base not in made:
            _remove_stale(own)
            try:
                base.mkdir()
            except OSError as e:
                remove(made)
                raise _oserror(f"cgroup v1: cannot make {base}", e) from None
            made.append(base)
        bases[c] = base
    return Tree(1, bases, "cgroup v1 " + ", ".join(str(b) for b in made))


def find(limits: Limits) -> Tree:
    """A usable tree for the controllers the limits need (tried: v2, then v1), probed by starting a
    process in an action cgroup with such limits; Unusable says why neither works."""
    controllers = limits.controllers()
    try:
        mount_list = mounts(_read(Path("/proc/self/mountinfo")))
        own = own_cgroups(_read(Path("/proc/self/cgroup")))
    except OSError as e:
        raise _oserror("cannot read /proc/self/mountinfo and /proc/self/cgroup", e) from None
    reasons: list[str] = []
    for setup in (_find_v2, _find_v1):
        try:
            tree = setup(mount_list, own, controllers)
        except Unusable as e:
            reasons.append(str(e))
            continue
        try:
            _probe(tree, Limits(None if limits.memory is None else max(limits.memory, 64 << 20),
                                None if limits.pids is None else max(limits.pids, 16), limits.cpus))
        except (Unusable, OSError, subprocess.SubprocessError) as e:
            tree.close()
            reasons.append(f"{tree.where}: {e}" if isinstance(e, Unusable) else f"{tree.where}: probe failed: {e}")
            continue
        return tree
    raise Unusable("; ".join(reasons))


def _find_v2(mount_list: list[Mount], own: dict[str, str], controllers: tuple[str, ...]) -> Tree:
    if "" not in own:
        raise Unusable("cgroup v2: the worker is in no cgroup v2")
    for m in mount_list:
        if m.fstype == "cgroup2":
            d = _under(m, own[""])
            if d is not None and d.is_dir():
                return setup_v2(d, controllers)
    raise Unusable("cgroup v2: no cgroup2 mount shows the worker's cgroup")


def _find_v1(mount_list: list[Mount], own: dict[str, str], controllers: tuple[str, ...]) -> Tree:
    dirs: dict[str, Path] = {}
    for c in controllers:
        for m in mount_list:
            if m.fstype == "cgroup" and c in m.options and c in own:
                d = _under(m, own[c])
                if d is not None and d.is_dir():
                    dirs[c] = d
                    break
        else:
            raise Unusable(f"cgroup v1: no {c} hierarchy mounted where the worker's cgroup shows")
    return setup_v1(dirs)
