"""Running one command in its own process group, with a timeout and cancellation.

The command leads a new session (so a new process group). Whatever ends it
(normal exit, timeout, cancel, a resource limit: `kill`) the whole group is killed before the leader is
reaped, so leftover background children die too and the group id cannot have
been reused by then. A process that left the group (setsid, daemons) is
ended by what leads it: bubblewrap's PID namespace, or the reaper
(reaper.py), which is asked with SIGTERM first (`graceful`) so it can kill
everything it adopted before the group is killed.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Outcome:
    exit_code: int
    timed_out: bool
    cancelled: bool
    seconds: float


GRACE_SECONDS = 10.0  # for the reaper to kill what the command left behind


class CommandCancelled(Exception):
    pass


class Command:
    """One run of a command; cancel() may be called from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._reaped = False
        self._graceful = False
        self.cancelled = False
        self.killed = False

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            self._stop()

    def kill(self) -> None:
        """Stop the command now, as at its timeout (it went over a limit); run() returns its outcome."""
        with self._lock:
            self.killed = True
            self._stop()

    def _stop(self) -> None:
        """Ask a graceful leader to clean up, or kill the group (caller holds the lock)."""
        if self._graceful and self._proc is not None and not self._reaped:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self._proc.pid, signal.SIGTERM)
        else:
            self._kill_group()

    def _kill_group(self) -> None:
        """SIGKILL the group while its leader is unreaped (caller holds the lock)."""
        if self._proc is not None and not self._reaped:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)

    def run(
        self, argv: list[str], env: dict[str, str], cwd: Path, stdout: Path, stderr: Path, timeout: float | None,
        pass_fds: tuple[int, ...] = (), graceful: bool = False,
    ) -> Outcome:
        """Run argv; graceful: the leader cleans up its descendants on SIGTERM (the reaper)."""
        start = time.monotonic()
        with open(stdout, "wb") as out, open(stderr, "wb") as err, self._lock:
            if self.cancelled:
                raise CommandCancelled("cancelled before the command started")
            try:
                self._proc = subprocess.Popen(
                    argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                    start_new_session=True, close_fds=True, pass_fds=pass_fds,
                )
                self._graceful = graceful
            except OSError as e:
                # Like a shell: the command could not be started (missing, not executable).
                err.write(f"granary worker: cannot run {argv[0]!r}: {e.strerror}\n".encode())
                return Outcome(127 if isinstance(e, FileNotFoundError) else 126, False, False, 0.0)
        timed_out = not self._wait_exit(timeout)
        if self._graceful and (timed_out or self.cancelled or self.killed):
            with self._lock:
                self._stop()
            self._wait_exit(GRACE_SECONDS)
        with self._lock:
            self._kill_group()
            self._reaped = True
        code = self._proc.wait()
        seconds = time.monotonic() - start
        return Outcome(128 - code if code < 0 else code, timed_out, self.cancelled, seconds)

    def _wait_exit(self, timeout: float | None) -> bool:
        """Wait for the leader to exit without reaping it; False on timeout."""
        assert self._proc is not None
        fd = os.pidfd_open(self._proc.pid)
        try:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                if poller.poll(None if left is None else left * 1000):
                    return True
                if deadline is not None and time.monotonic() >= deadline:
                    return False
        finally:
            os.close(fd)
