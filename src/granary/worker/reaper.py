"""Run one command, then kill every process it left behind (standard library only).

    python -I -S reaper.py --parent PID --env-fd FD [--uid U --gid G] -- ARGV...

Used when actions run without bubblewrap (no PID namespace ends them). The
reaper is a child subreaper (PR_SET_CHILD_SUBREAPER): whatever the command
starts, even through setsid and double forks, is re-parented to it rather
than to init when its parent exits. When the command exits, or the reaper
gets SIGTERM (the worker's timeout or cancel, or the worker's death through
PR_SET_PDEATHSIG), it SIGKILLs its children until none is left; then it exits
with the command's status (128+N for a signal).

The command's environment comes from FD (NUL-separated NAME=VALUE), never
from the reaper's own, so an action's LD_PRELOAD cannot reach the reaper,
which may run as root to drop the command to U:G.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def children() -> list[int]:
    me = os.getpid()
    pids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{me}/task"):
            with open(f"/proc/{me}/task/{task}/children") as f:
                pids += [int(p) for p in f.read().split()]
        return pids
    except OSError:  # a kernel without /proc/PID/task/TID/children: scan
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    with open(f"/proc/{pid}/stat") as f:
                        if int(f.read().rsplit(")", 1)[1].split()[1]) == me:
                            pids.append(int(pid))
                except (OSError, ValueError, IndexError):
                    continue
        return pids


def kill_all() -> None:
    """SIGKILL every child and reap, until there is no child (their orphans come back to us)."""
    while True:
        for pid in children():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def read_env(fd: int) -> dict[str, str]:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    os.close(fd)
    env = {}
    for item in b"".join(chunks).split(b"\0"):
        if item:
            k, _, v = item.decode("utf-8", "surrogateescape").partition("=")
            env[k] = v
    return env


def exec_in_path(argv: list[str], env: dict[str, str], search: list[str]) -> None:
    """execvpe without imports (after setuid the interpreter's own files may be unreadable)."""
    if "/" in argv[0]:
        os.execve(argv[0], argv, env)
    last: OSError = FileNotFoundError(2, "No such file or directory")
    for d in search:
        try:
            os.execve(os.path.join(d, argv[0]), argv, env)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as e:
            last = e
    raise last


def main(args: list[str]) -> int:
    sep = args.index("--")
    opts = dict(zip(args[:sep:2], args[1:sep:2], strict=True))
    argv = args[sep + 1:]
    env = read_env(int(opts["--env-fd"])) if int(opts.get("--env-fd", "-1")) >= 0 else {}
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)

    def stop(_signum: int, _frame: object) -> None:
        kill_all()
        os._exit(128 + signal.SIGKILL)

    signal.signal(signal.SIGTERM, stop)
    if "--parent" in opts and os.getppid() != int(opts["--parent"]):
        return 128 + signal.SIGKILL  # the worker died before we could watch it
    search = os.get_exec_path(env)  # before dropping the uid, which may not read our own stdlib
    pid = os.fork()
    if pid == 0:
        try:
            # Python ignores SIGPIPE and SIGXFSZ, and exec keeps what is ignored: the command gets the
            # defaults back, as subprocess gives them (`yes | head -1`, RLIMIT_FSIZE's SIGXFSZ)
            for sig in (signal.SIGTERM, signal.SIGPIPE, signal.SIGXFSZ):
                signal.signal(sig, signal.SIG_DFL)
            if "--uid" in opts:
                os.setgroups([])
                os.setgid(int(opts["--gid"]))
                os.setuid(int(opts["--uid"]))
            exec_in_path(argv, env, search)
        except OSError as e:
            sys.stderr.write(f"granary worker: cannot run {argv[0]!r}: {e.strerror}\n")
            sys.stderr.flush()
            os._exit(127 if isinstance(e, FileNotFoundError) else 126)
    while True:
        try:
            done, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 128 + signal.SIGKILL
        if done == pid:
            break
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])
    kill_all()
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
