"""Run a command on a pseudo-terminal, as an operator would: for the live `granary status` display and
the progress bars of `granary cleanup`, which are drawn only when the output is a terminal."""

from __future__ import annotations

import os
import pty
import select
import signal
import sys
import time


def run_in_pty(argv: list[str], until, timeout: float = 60) -> tuple[int, bytes, int]:
    """Start `python argv` on a pseudo-terminal and read it until `until(output so far)` holds (or it
    ends): (pid, output, the terminal's fd)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the terminal is its stdin, stdout and stderr
        os.environ.update(COLUMNS="120", LINES="40", TERM="xterm-256color")
        os.execv(sys.executable, [sys.executable, *argv])
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while not until(out):
            assert time.monotonic() < deadline, out.decode(errors="replace")
            if select.select([fd], [], [], 1)[0]:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:  # EIO: the child is gone
                    break
                if not chunk:
                    break
                out += chunk
        return pid, out, fd
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(fd)
        raise


def finish(pid: int, fd: int, out: bytes, timeout: float = 30) -> tuple[int, bytes]:
    """Read the rest of the child's output until it exits: (exit code, all its output)."""
    deadline = time.monotonic() + timeout
    reading = True
    try:
        while time.monotonic() < deadline:
            if reading and select.select([fd], [], [], 0.5)[0]:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:  # EIO: the child closed the terminal
                    chunk = b""
                out += chunk
                reading = bool(chunk)
            elif not reading:
                time.sleep(0.1)
            done, status_ = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status_), out
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise AssertionError(f"did not exit: {out.decode(errors='replace')}")
    finally:
        os.close(fd)
