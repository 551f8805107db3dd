"""Per-action resource limits: memory, processes, CPU, disk use of the working directory, outputs.

`ActionLimits` is what the worker's flags ask for; `ActionLimits.start` decides, once at start-up,
how this host enforces it (a `Limiter`); `Limiter.confine` makes the `Confinement` of one action,
which wraps its command, watches it while it runs and says afterwards which limit it went over.

Two backends for memory, processes and CPU (--action-limits-backend):

* cgroup (cgroups.py; v2, else v1): one cgroup per action, entered before its command runs, so
  the limits hold for the action as a whole, every process of it together, whatever the sandbox.
  Memory (memory.max, no swap) counts what its processes use plus the page cache and tmpfs
  (/tmp in the sandbox) they fill; at the limit the kernel's OOM killer kills it (v2: the whole
  action, memory.oom.group; v1: one process, then the worker kills the rest). Processes
  (pids.max) count every process and thread; a fork past it fails. CPU (cpu.max, or v1's CFS
  quota) is CPU time per wall time: 1.5 is one and a half CPUs' worth, spread over any of them.
  The cgroup's events say for certain whether the action was OOM-killed or refused a fork.
* rlimit (no usable cgroup: not root and no delegated subtree, a read-only cgroupfs): memory is
  RLIMIT_AS, address space per process, set by `prlimit` around the whole wrapped command;
  processes RLIMIT_NPROC, set inside the bubblewrap sandbox, whose own user namespace makes it
  count this action's processes only (not set for plain processes or images, see `confine`);
  CPU is an affinity mask (`taskset`) of ceil(N) CPUs, rotated over the worker's CPUs from one
  action to the next. setrlimit refuses and does not kill, so the worker cannot know a limit was
  the cause of a failure, only that it may have been: it says so in the action's stderr.

Whatever the backend:

* disk (--action-disk): the bytes the action adds to its work directory (input root, stdout and
  stderr; each file once however many links it has; its inputs as materialised are the baseline).
  RLIMIT_FSIZE (the limit plus one byte) stops any one file at once (SIGXFSZ, or EFBIG); a scan
  of the directory every DISK_EVERY seconds (less often for large trees, so that scanning takes at
  most 1/DISK_SHARE of a CPU) kills the action once the total is over.
* outputs (--action-output-size): the bytes of the declared output files (each file of an output
  directory included), counted before they are uploaded; none is uploaded when they are over.

An action over its limit fails: the limit and the flag setting it are named in the
RESOURCE_EXHAUSTED status of its result and in a last line of its stderr (execute.py).
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from granary.worker import cgroups

log = logging.getLogger("granary.worker.limits")

BACKENDS = ("auto", "cgroup", "rlimit")
DISK_EVERY = 0.5  # seconds between two scans of a working directory, at least
DISK_SHARE = 20  # a scan that took t seconds waits DISK_SHARE * t before the next one
OOM_EVERY = 0.2  # cgroup v1: seconds between two looks at the OOM kill counter

T = TypeVar("T")


def format_bytes(n: int) -> str:
    """2 GiB, 512 MiB, or bytes: as a person would write the flag."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} bytes"


def disk_use(path: Path) -> int:
    """Bytes of the regular files under path (apparent size, each inode once; symlinks not followed).
    What cannot be read (a directory the action made unreadable to a worker that is not root) is
    not counted."""
    total = 0
    seen: set[tuple[int, int]] = set()
    stack = [str(path)]
    while stack:
        try:
            it = os.scandir(stack.pop())
        except OSError:
            continue
        with it:
            for e in it:
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    stack.append(e.path)
                elif stat.S_ISREG(st.st_mode):
                    if st.st_nlink > 1:
                        if (st.st_dev, st.st_ino) in seen:
                            continue
                        seen.add((st.st_dev, st.st_ino))
                    total += st.st_size
    return total


@dataclass(frozen=True)
class ActionLimits:
    """The limits the worker's flags ask for (None: no limit)."""

    memory: int | None = None  # --action-memory, bytes
    pids: int | None = None  # --action-pids
    cpus: float | None = None  # --action-cpus
    disk: int | None = None  # --action-disk, bytes
    output_size: int | None = None  # --action-output-size, bytes
    backend: str = "auto"  # --action-limits-backend

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.memory, self.pids, self.cpus, self.disk, self.output_size))

    def cgroup_limits(self) -> cgroups.Limits:
        return cgroups.Limits(self.memory, self.pids, self.cpus)

    def start(self, sandbox: str) -> Limiter:
        """How this host enforces the limits, decided once (cgroups are probed, the worker may move
        into a leaf cgroup). ValueError when the backend asked for cannot work here."""
        if self.backend not in BACKENDS:
            raise ValueError(f"--action-limits-backend: expected one of {', '.join(BACKENDS)}, got {self.backend!r}")
        tree, why = None, ""
        if self.cgroup_limits().controllers() and self.backend != "rlimit":
            try:
                tree = cgroups.find(self.cgroup_limits())
            except cgroups.Unusable as e:
                if self.backend == "cgroup":
                    raise ValueError(f"--action-limits-backend cgroup: no cgroup usable here: {e}") from None
                why = str(e)
        limiter = Limiter(self, tree, sandbox)
        try:
            limiter.find_tools()
        except ValueError:
            limiter.close()
            raise
        if why:
            log.warning("action limits: no cgroup usable here (%s); falling back to setrlimit: %s", why,
                        limiter.fallback())
        if tree is None and self.pids is not None and sandbox != "bwrap":
            log.warning("--action-pids %d is not enforced: without cgroups it needs the bwrap sandbox (sandbox"
                        " here: %s)", self.pids, sandbox)
        if tree is None and self.cpus is not None and math.ceil(self.cpus) >= len(limiter.cpu_list):
            log.warning("--action-cpus %g is not enforced: without cgroups it pins each action to %d CPU(s), and"
                        " the worker has only %d", self.cpus, math.ceil(self.cpus), len(limiter.cpu_list))
        return limiter


@dataclass
class Limiter:
    """The worker's limits and how they are enforced here; shared by all its actions."""

    limits: ActionLimits = field(default_factory=ActionLimits)
    tree: cgroups.Tree | None = None  # None: no cgroup (limits through setrlimit and affinity)
    sandbox: str = "none"
    prlimit: str = ""
    taskset: str = ""
    cpu_list: list[int] = field(default_factory=lambda: sorted(os.sched_getaffinity(0)))
    _turn: itertools.count = field(default_factory=itertools.count)

    @property
    def output_size(self) -> int | None:
        return self.limits.output_size

    @property
    def backend(self) -> str:
        if not self.limits.cgroup_limits().controllers():
            return "none"
        return self.tree.where if self.tree is not None else "setrlimit"

    def find_tools(self) -> None:
        """prlimit for the rlimits, taskset for the CPU affinity (util-linux); ValueError when missing."""
        lim = self.limits
        flags = [f for f, v in (("--action-memory", lim.memory), ("--action-pids", lim.pids)) if v is not None
                 and self.tree is None] + (["--action-disk"] if lim.disk is not None else [])
        if flags:
            self.prlimit = shutil.which("prlimit") or ""
            if not self.prlimit:
                raise ValueError(f"{' and '.join(flags)} need{'s' if len(flags) == 1 else ''} prlimit (util-linux),"
                                 " which is not installed")
        if self.tree is None and lim.cpus is not None:
            self.taskset = shutil.which("taskset") or ""
            if not self.taskset:
                raise ValueError("--action-cpus without cgroups needs taskset (util-linux), which is not installed")

    def fallback(self) -> str:
        """What the limits mean without cgroups (for the start-up warning)."""
        parts = []
        if self.limits.memory is not None:
            parts.append(f"--action-memory {format_bytes(self.limits.memory)} bounds each process's address space")
        if self.limits.pids is not None:
            parts.append(f"--action-pids {self.limits.pids} is RLIMIT_NPROC inside the bwrap sandbox")
        if self.limits.cpus is not None:
            parts.append(f"--action-cpus {self.limits.cpus:g} pins each action to {math.ceil(self.limits.cpus)}"
                         " CPU(s)")
        return "; ".join(parts)

    def describe(self) -> str:
        """The limits for the worker's start-up log line."""
        lim = self.limits
        if not lim:
            return "none"
        parts = []
        if lim.memory is not None:
            parts.append(f"memory {format_bytes(lim.memory)}" + ("" if self.tree else " per process"))
        if lim.pids is not None:
            parts.append(f"pids {lim.pids}")
        if lim.cpus is not None:
            parts.append(f"cpus {lim.cpus:g}" if self.tree else f"cpus {math.ceil(lim.cpus)} (affinity)")
        if lim.disk is not None:
            parts.append(f"disk {format_bytes(lim.disk)}")
        if lim.output_size is not None:
            parts.append(f"outputs {format_bytes(lim.output_size)}")
        backend = self.backend
        return f"{', '.join(parts)} per action" + ("" if backend == "none" else f", backend {backend}")

    def confine(self, work: Path, host_tools_in_bwrap: bool) -> Confinement:
        """One action's confinement; work: its directory (input root, stdout, stderr).
        host_tools_in_bwrap: the host-tools layout under bubblewrap, where RLIMIT_NPROC (set with the
        host's prlimit in the sandbox's own user namespace) counts the action's processes only."""
        cpus = None
        if self.tree is None and self.limits.cpus is not None:
            k, n = math.ceil(self.limits.cpus), len(self.cpu_list)
            if k < n:
                start = next(self._turn) * k
                cpus = sorted(self.cpu_list[(start + i) % n] for i in range(k))
        return Confinement(self, work, host_tools_in_bwrap, cpus)

    def outputs_over(self, size: int) -> str:
        """The failure message when outputs of `size` bytes are over --action-output-size, else ''."""
        limit = self.limits.output_size
        if limit is None or size <= limit:
            return ""
        return (f"the action's outputs total {size} bytes, over the output limit {format_bytes(limit)}"
                " (granary worker --action-output-size); none was uploaded")

    def close(self) -> None:
        if self.tree is not None:
            self.tree.close()


class Confinement:
    """The limits of one action: its command's wrapping, the watch while it runs, the verdict."""

    def __init__(self, limiter: Limiter, work: Path, host_tools_in_bwrap: bool, cpus: list[int] | None):
        self.limiter = limiter
        self.limits = limiter.limits
        self.work = work
        self.cpus = cpus
        self.nproc = self.limits.pids is not None and limiter.tree is None and host_tools_in_bwrap
        self.cgroup = limiter.tree.acquire(self.limits.cgroup_limits()) if limiter.tree is not None else None
        self.baseline = 0
        self.disk_found = 0  # bytes over the baseline the watch found when it killed the action
        self.killed = ""  # which limit the watch killed the action for
        self._stop = threading.Event()

    def inner(self, argv: list[str]) -> list[str]:
        """The command as run inside the sandbox."""
        if not self.nproc:
            return argv
        return [self.limiter.prlimit, f"--nproc={self.limits.pids}", "--", *argv]

    def outer(self, argv: list[str]) -> list[str]:
        """The wrapped command (sandbox and all) as the worker starts it: entering the cgroup first,
        then the CPU affinity, then the rlimits."""
        rlimits = []
        if self.limits.memory is not None and self.cgroup is None:
            rlimits.append(f"--as={self.limits.memory}")
        if self.limits.disk is not None:
            rlimits.append(f"--fsize={self.limits.disk + 1}")  # one byte over: the scan sees it is over
        if rlimits:
            argv = [self.limiter.prlimit, *rlimits, "--", *argv]
        if self.cpus is not None:  # taskset knows no '--': argv[0] is an absolute path here
            argv = [self.limiter.taskset, "-c", ",".join(map(str, self.cpus)), *argv]
        if self.cgroup is not None:
            argv = self.cgroup.join(argv)
        return argv

    def run(self, start: Callable[[], T], kill: Callable[[], None]) -> T:
        """start() runs the command; the watch calls kill() (then kills the cgroup) when the action
        goes over its disk limit, or (cgroup v1) once the OOM killer has killed one of its processes."""
        watch_disk = self.limits.disk is not None
        watch_oom = self.cgroup is not None and self.limits.memory is not None and not self.limiter.tree.group_oom
        if watch_disk:
            self.baseline = disk_use(self.work)
        thread = None
        if watch_disk or watch_oom:
            thread = threading.Thread(target=self._watch, args=(kill, watch_disk, watch_oom), daemon=True,
                                      name="granary-limits")
            thread.start()
        try:
            return start()
        finally:
            self._stop.set()
            if thread is not None:
                thread.join()

    def _watch(self, kill: Callable[[], None], watch_disk: bool, watch_oom: bool) -> None:
        next_scan = time.monotonic() + DISK_EVERY
        while not self._stop.wait(OOM_EVERY if watch_oom else DISK_EVERY):
            if watch_oom and self.cgroup is not None and self.cgroup.oom_killed():
                self._kill(kill, "memory")
                return
            if watch_disk and time.monotonic() >= next_scan:
                began = time.monotonic()
                used = disk_use(self.work) - self.baseline
                took = time.monotonic() - began
                next_scan = time.monotonic() + max(DISK_EVERY, DISK_SHARE * took)
                if self.limits.disk is not None and used > self.limits.disk:
                    self.disk_found = used
                    self._kill(kill, "disk")
                    return

    def _kill(self, kill: Callable[[], None], why: str) -> None:
        self.killed = why
        log.info("killing an action in %s: over its %s limit", self.work, why)
        kill()
        if self.cgroup is not None:
            self.cgroup.kill()

    def verdict(self, exit_code: int, timed_out: bool) -> str:
        """The limit the action went over, as the message its failure gives ('' when none)."""
        events = self.cgroup.events() if self.cgroup is not None else cgroups.Events()
        if self.limits.memory is not None and events.oom_kills:
            return f"the action was killed by the memory limit {format_bytes(self.limits.memory)}" \
                   " (granary worker --action-memory)"
        if self.limits.disk is not None:
            used = self.disk_found or disk_use(self.work) - self.baseline
            if used > self.limits.disk:
                how = "was killed at" if self.killed == "disk" else "went over"
                return (f"the action {how} the disk limit {format_bytes(self.limits.disk)} (granary worker"
                        f" --action-disk): it had written {used} bytes in its working directory")
        if self.limits.pids is not None and events.pids_max and exit_code != 0 and not timed_out:
            return (f"the action failed (exit status {exit_code}) after its process limit {self.limits.pids} refused"
                    f" {events.pids_max} fork(s) (granary worker --action-pids)")
        return ""

    def note(self, exit_code: int) -> str:
        """For a failed action under setrlimit limits, which cannot say they were the cause: the line
        added to its stderr naming them ('' when none)."""
        parts = []
        if self.limits.memory is not None and self.cgroup is None:
            parts.append(f"memory limit {format_bytes(self.limits.memory)} of address space per process"
                         " (granary worker --action-memory)")
        if self.nproc:
            parts.append(f"process limit {self.limits.pids} (granary worker --action-pids)")
        if not parts:
            return ""
        return (f"granary worker: the action failed (exit status {exit_code}) under {', '.join(parts)}; an"
                " allocation or fork refused at a limit may be why\n")

    def close(self) -> None:
        """Kill whatever of the action is left in its cgroup, which then waits for the next action."""
        self._stop.set()
        if self.cgroup is not None and self.limiter.tree is not None:
            cgroup, self.cgroup = self.cgroup, None
            self.limiter.tree.release(cgroup)
