"""The parent of several server processes sharing one port.

Kept free of gRPC and storage imports: it only reserves the port, starts
`granary serve` children, restarts any that die, and stops them all.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Protocol

from granary.config import Config
from granary.errors import ConfigError

log = logging.getLogger("granary.supervisor")

class Workers(Protocol):
    def begin_stop(self) -> None: ...

    def wait(self, timeout: float) -> bool: ...


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
    child_argv: list[str],
    on_ready: Callable[[int], None],
    workers: Workers | None = None,
) -> int:
    """Run `processes` children until SIGTERM/SIGINT, then let them drain and stop.

    Stopping: the local workers are asked to finish their actions and the children to
    drain (SIGTERM) at once; once the workers are gone the children hear it (their stdin
    closes), so they outlive the workers, and they exit when their work is delivered.
    The loop sleeps until a signal arrives (a child exiting is SIGCHLD): idle costs nothing.
    """
    keeper, port = reserve_port(cfg.host, cfg.port)
    argv = [sys.executable, "-m", "granary", *child_argv, "--child-port", str(port)]
    children: list[subprocess.Popen] = []
    stopping = False

    def spawn() -> subprocess.Popen:
        return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def wait_ready(child: subprocess.Popen) -> bool:
        assert child.stdout is not None
        line = child.stdout.readline()
        return line.strip() == b"ready"

    def release(child: subprocess.Popen) -> None:
        """Close the child's stdin: it tells a draining child that no local worker is left."""
        if child.stdin is not None:
            with contextlib.suppress(OSError):
                child.stdin.close()

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
            if not wait_ready(children[-1]):
                stopping = True
                break
        if stopping:
            for child in children:
                child.terminate()
                release(child)
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
                    release(child)
                    children[i] = spawn()
                    if not wait_ready(children[i]):
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
            release(child)  # the workers are gone: the children may stop
        for child in children:
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("server process %d did not stop within drain_timeout; killing it", child.pid)
                child.kill()
                child.wait()
        return 0
    finally:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.close(wake_r)
        os.close(wake_w)


def default_processes(cfg: Config) -> int:
    if cfg.uses_process_local_state():
        return 1
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
