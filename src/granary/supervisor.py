"""The parent of several server processes sharing one port.

It reserves the port, forks the server processes, restarts any that die, and stops
them all. The servers are forked, not started afresh: the caller imports what a
server runs on (granary.preload) once, here, and every server process shares those
pages copy-on-write instead of importing its own copy. The supervisor itself never
starts gRPC, an event loop or a store, so a fork has nothing half-initialised to copy.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from typing import Protocol

from granary.config import Config
from granary.errors import ConfigError

log = logging.getLogger("granary.supervisor")


class Workers(Protocol):
    def begin_stop(self) -> None: ...

    def wait(self, timeout: float) -> bool: ...


class ServerProcess:
    """A forked server process: its pid and the supervisor's ends of its two pipes.

    `ready`: the child writes one line, "ready", once it serves. `release`: the child
    reads it until EOF, which the supervisor gives once its local workers are gone
    (server.SupervisorsWorkers); they are the child's stdout and stdin.
    """

    def __init__(self, pid: int, ready: int, release: int):
        self.pid = pid
        self.returncode: int | None = None
        self._ready = ready
        self._release: int | None = release
        try:
            self._exited: int | None = os.pidfd_open(pid)  # readable once it exits: waits without polling
        except (AttributeError, OSError):
            self._exited = None

    def wait_ready(self) -> bool:
        """Its first line; the pipe stays open (as a child's stdout always was) until it is gone."""
        line = b""
        with contextlib.suppress(OSError):
            while not line.endswith(b"\n"):
                chunk = os.read(self._ready, 64)
                if not chunk:
                    break
                line += chunk
        return line.strip() == b"ready"

    def release(self) -> None:
        """Close the child's stdin: it tells a draining child that no local worker is left."""
        if self._release is not None:
            os.close(self._release)
            self._release = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid == self.pid:
                self.returncode = os.waitstatus_to_exitcode(status)
                if self._exited is not None:
                    os.close(self._exited)
                    self._exited = None
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0)
            if self._exited is not None:
                with contextlib.suppress(InterruptedError):
                    select.select([self._exited], [], [], left)
            else:
                time.sleep(0.05 if left is None else min(0.05, left))
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def close(self) -> None:
        """The supervisor's descriptors for it (the process itself is left alone)."""
        self.release()
        if self._ready >= 0:
            os.close(self._ready)
            self._ready = -1
        if self._exited is not None:
            os.close(self._exited)
            self._exited = None


try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:
    _LIBC = None

PR_SET_PDEATHSIG, PR_SET_NAME = 1, 15
HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)  # the signals the supervisor handles


def fork_server(port: int, serve: Callable[[int], None]) -> ServerProcess:
    """Fork a server process that runs serve(port) and exits.

    Called from the supervisor's main thread only (PR_SET_PDEATHSIG follows the thread
    that forked). Before the fork, every object alive is frozen (gc.freeze): the child's
    garbage collector then never walks, and so never writes to, the pages it shares.
    """
    ready_r, ready_w = os.pipe()
    release_r, release_w = os.pipe()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()  # or the child would write what is buffered a second time
    gc.collect()
    gc.freeze()
    parent = os.getpid()
    # Our signals wait until the child has its own handlers: one arriving in between would run the
    # supervisor's handler in the child (and write to the supervisor's wake-up pipe).
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child's half, which never returns
            _run_forked(parent, port, serve, ready_w, release_r, mask)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    os.close(ready_w)
    os.close(release_r)
    return ServerProcess(pid, ready_r, release_w)


def _run_forked(
    parent: int, port: int, serve: Callable[[int], None], ready: int, release: int, sigmask: set[signal.Signals]
) -> None:
    code = 1
    try:
        if _LIBC is not None:
            _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
            _LIBC.prctl(PR_SET_NAME, b"granary-server")  # `ps -o comm`, top: which process is which
        if os.getppid() != parent:  # the supervisor died before the line above
            os._exit(1)
        signal.set_wakeup_fd(-1)
        for sig in HANDLED:
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, sigmask)
        os.dup2(release, 0)
        os.dup2(ready, 1)
        # Nothing else of the supervisor's: the reserved port, its pipes to the other servers
        # (their EOF must not wait for us), its signal pipe. The objects owning them stay
        # referenced by the supervisor's frames below us, which never return here.
        os.closerange(3, os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 65536)
        serve(port)
        code = 0
    except ConfigError as e:
        print(f"granary: configuration error: {e}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - the child's last word: whatever it was is printed
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


IDLE_CHECK = 60.0  # seconds: the loop looks at its children at least this often (signals wake it sooner)
STOP_MARGIN = 10.0  # seconds past drain_timeout a child may take to stop before it is killed


def reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """Bind (without listening) so the port is ours; children bind it with SO_REUSEPORT.

    SO_REUSEADDR on both sockets: connections a stopped server closed first sit in
    TIME_WAIT on the port and must not block a restart, whichever way that server bound
    (one process binds without SO_REUSEPORT); a socket still listening there, reuse-port
    or not, still makes the probe fail.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    probe = socket.socket(family, socket.SOCK_STREAM)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind((host, port))  # fails if anyone, reuse-port or not, holds it
        port = probe.getsockname()[1]
        keeper = socket.socket(family, socket.SOCK_STREAM)
        keeper.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        keeper.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        probe.close()
        try:
            keeper.bind((host, port))
        except OSError:
            keeper.close()
            raise
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    finally:
        probe.close()
    return keeper, port


def run_supervisor(
    cfg: Config,
    processes: int,
    serve: Callable[[int], None],
    on_ready: Callable[[int], None],
    workers: Workers | None = None,
) -> int:
    """Run `processes` children, each serve(port) in a forked process, until SIGTERM/SIGINT,
    then let them drain and stop.

    Stopping: the local workers are asked to finish their actions and the children to
    drain (SIGTERM) at once; once the workers are gone the children hear it (their stdin
    closes), so they outlive the workers, and they exit when their work is delivered.
    The loop sleeps until a signal arrives (a child exiting is SIGCHLD): idle costs nothing.
    """
    keeper, port = reserve_port(cfg.host, cfg.port)
    children: list[ServerProcess] = []
    stopping = False

    def spawn() -> ServerProcess:
        return fork_server(port, serve)

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so that a child's exit wakes the loop
    try:
        # one at a time: the first child creates the stores' files (schemas, WAL mode) alone
        for _ in range(processes):
            children.append(spawn())
            if not children[-1].wait_ready():
                stopping = True
                break
        if stopping:
            for child in children:
                child.terminate()
                child.release()
            codes = [child.wait() for child in children]
            return max(codes) or 1
        keeper.close()
        on_ready(port)
        while not stopping:
            select.select([wake_r], [], [], IDLE_CHECK)
            with contextlib.suppress(BlockingIOError):
                while os.read(wake_r, 512):
                    pass
            for i, child in enumerate(children):
                if child.poll() is not None and not stopping:
                    log.error("server process %d exited with %s; starting another", child.pid, child.returncode)
                    child.close()
                    children[i] = spawn()
                    if not children[i].wait_ready():
                        time.sleep(1)
        if workers is not None:
            workers.begin_stop()
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + cfg.drain_timeout + STOP_MARGIN
        if workers is not None:
            workers.wait(cfg.drain_timeout)
        for child in children:
            child.release()  # the workers are gone: the children may stop
        for child in children:
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("server process %d did not stop within drain_timeout; killing it", child.pid)
                child.kill()
                child.wait()
        return 0
    finally:
        for child in children:
            child.close()
        keeper.close()
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.close(wake_r)
        os.close(wake_w)


def default_processes(cfg: Config) -> int:
    if cfg.uses_process_local_state():
        return 1
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
