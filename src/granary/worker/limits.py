"""Per-action resource limits: memory (address space per process) and processes, with setrlimit.

Why setrlimit and not a cgroup: it needs no privilege and no delegated cgroup tree, so it works for
every worker, root or not, in a container or not. (cgroup v2 limits, which would also count page
cache and kill the action as a whole, are not implemented yet: see docs/execution.md.)

How each limit is set, so that one action's limit never touches its neighbours or the worker:

* memory (--action-memory): RLIMIT_AS, set by `prlimit` in front of the whole wrapped command
  (sandbox included). It is a per-process bound on address space, inherited by every process the
  action starts; an allocation past it fails (ENOMEM: MemoryError, `std::bad_alloc`, "cannot
  allocate memory"), so the action fails rather than the host swapping or the OOM killer picking
  a victim. It bounds each process, not their sum.
* processes (--action-pids): RLIMIT_NPROC, set by `prlimit` *inside* the bubblewrap sandbox. The
  kernel counts it per user and user namespace (Linux 5.14 and later), and every action has its
  own user namespace, so it counts this action's processes and threads only; a fork past it fails
  (EAGAIN). Set outside the sandbox it would count every process of the action uid on the host,
  the neighbours' and (for a worker running actions as itself) the worker's threads, so it is
  not set at all for plain processes (--sandbox none) or a filesystem image (which has no
  `prlimit` inside): the worker says so at start-up, or in the action's stderr.

An action that fails (non-zero exit or a signal) while limits were set gets a last line in its
stderr naming them and the worker flags that set them: setrlimit refuses, it does not kill, so the
worker cannot know that a limit was the cause, only that it may have been.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass


def format_bytes(n: int) -> str:
    """2 GiB, 512 MiB, or bytes: as a person would write the flag."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} bytes"


@dataclass(frozen=True)
class ActionLimits:
    memory: int | None = None  # bytes of address space per process
    pids: int | None = None  # processes and threads of one action (bubblewrap only)
    prlimit: str = "prlimit"  # the host's prlimit (util-linux), found at start-up

    @classmethod
    def make(cls, memory: int | None, pids: int | None) -> ActionLimits:
        """ValueError when limits are asked for and prlimit (util-linux) is missing."""
        if memory is None and pids is None:
            return cls()
        exe = shutil.which("prlimit")
        if exe is None:
            raise ValueError("--action-memory and --action-pids need prlimit (util-linux), which is not installed")
        return cls(memory, pids, exe)

    def __bool__(self) -> bool:
        return self.memory is not None or self.pids is not None

    def inner(self, argv: list[str], sandboxed: bool) -> list[str]:
        """The command as run inside the sandbox: under prlimit --nproc when that counts this action only."""
        if self.pids is None or not sandboxed:
            return argv
        return [self.prlimit, f"--nproc={self.pids}", "--", *argv]

    def outer(self, argv: list[str]) -> list[str]:
        """The wrapped command (sandbox and all) under prlimit --as."""
        if self.memory is None:
            return argv
        return [self.prlimit, f"--as={self.memory}", "--", *argv]

    def describe(self, pids_applied: bool) -> str:
        parts = []
        if self.memory is not None:
            parts.append(f"memory limit {format_bytes(self.memory)} of address space per process"
                         " (granary worker --action-memory)")
        if self.pids is not None and pids_applied:
            parts.append(f"process limit {self.pids} (granary worker --action-pids)")
        return ", ".join(parts)

    def note(self, exit_code: int, pids_applied: bool) -> str:
        """The line added to a failed action's stderr."""
        what = self.describe(pids_applied)
        if not what:
            return ""
        return (f"granary worker: the action failed (exit status {exit_code}) under {what}; an allocation or"
                " fork refused at a limit may be why\n")
