"""A view of a root worker's work directory that the action uid can reach.

A root worker starts each action's bubblewrap as the action uid (nobody),
and bubblewrap resolves the input root's path as that uid. The work
directory usually lies under the data or cache directory, whose parents
only root may traverse (/root, a 0700 data directory), and making them
traversable would open the worker's data to every local user. Instead the
worker, once at start and before it has any other thread, moves into a
mount namespace of its own (private propagation: nothing reaches the host)
and bind-mounts its work directory at VIEW (under /run, which only root
writes). Only the worker and its children see that mount; the directory is
0711, so the action uid can pass through it to the input root it owns but
cannot list the other actions' directories. Without this view (not root, a
thread already running, no CAP_SYS_ADMIN, no /run) the sandbox falls back
to its two-step launcher, which is correct but costs a second bubblewrap
per action.
"""

from __future__ import annotations

import ctypes
import logging
import os
import stat
from pathlib import Path

from granary.worker.sandbox import ActionUser, reachable

log = logging.getLogger("granary.worker.mountview")

VIEW = "/run/granary-worker"
CLONE_NEWNS = 0x00020000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 0


def work_view(work_dir: Path, user: ActionUser | None) -> tuple[tuple[str, str], ...]:
    """((work_dir, alias),) when the alias was set up; () when not needed or not possible."""
    if user is None or os.geteuid() != 0:
        return ()
    os.chmod(work_dir, 0o711)
    if reachable(str(work_dir / "action"), user):
        return ()  # the action uid reaches it as it is
    if _threads() != 1:
        log.info("work directory %s is out of the action uid's reach and this process already runs threads;"
                 " actions start through the two-step sandbox", work_dir)
        return ()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(CLONE_NEWNS) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
        if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
            raise OSError(ctypes.get_errno(), "making / private")
        parent = os.lstat(os.path.dirname(VIEW))
        if not stat.S_ISDIR(parent.st_mode) or parent.st_uid != 0 or parent.st_mode & 0o022:
            raise OSError(f"{os.path.dirname(VIEW)} is not a directory only root writes")
        try:
            os.mkdir(VIEW, 0o755)
        except FileExistsError:
            pass
        st = os.lstat(VIEW)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0:
            raise OSError(f"{VIEW} is not a directory owned by root")
        if libc.mount(str(work_dir).encode(), VIEW.encode(), None, MS_BIND, None) != 0:
            raise OSError(ctypes.get_errno(), f"bind-mounting {work_dir} on {VIEW}")
    except (OSError, AttributeError) as e:
        log.info("no reachable view of the work directory (%s); actions start through the two-step sandbox", e)
        return ()
    if not reachable(VIEW + "/action", user):
        return ()
    return ((str(work_dir), VIEW),)
