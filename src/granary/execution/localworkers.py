"""`granary worker` processes that `granary serve` starts next to itself.

One worker process per execution queue (CAS store), with `--concurrency
local_workers` (the worker opens one bot session per slot), its cache under
the data dir. Restarted if it exits; killed with the server (PR_SET_PDEATHSIG).

Stopping is the worker's own graceful shutdown: SIGTERM, then it finishes its
running actions for a grace a little shorter than the server's drain_timeout
(so what it gives back reaches the server before the server stops) and exits.
One thread per worker process blocks in wait(): nothing wakes up while idle.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from granary.config import Config

RESTART_DELAY = 5.0  # seconds before a worker that exited is started again
KILL_AFTER = 15.0  # seconds past its grace a stopping worker may take to report and leave
WILDCARD = "*"  # the instance entry that answers every name (granary.instance.WILDCARD)

log = logging.getLogger("granary.execution.localworkers")


def worker_available() -> bool:
    """True once the `granary worker` command exists in this installation."""
    try:
        return importlib.util.find_spec("granary.worker.main") is not None and (
            importlib.util.find_spec("granary.worker.cli") is not None
        )
    except ImportError:
        return False


SLOTS_PER_CORE = 2


def default_count() -> int:
    """Two slots per core: a slot spends part of each action fetching inputs, starting the sandbox,
    uploading and reporting, with the CPU idle; with one slot per core, remote builds and no-op
    actions left the cores partly idle (2 cores: 22 no-op actions/s with 2 slots, 28 with 4)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return SLOTS_PER_CORE * cores


def worker_instances(cfg: Config) -> list[str]:
    """One instance name per execution queue (CAS store) for local workers to serve."""
    chosen: dict[str, str] = {}
    specs = sorted(cfg.instances.values(), key=lambda s: (s.name not in ("", WILDCARD), s.name))
    for spec in specs:
        if spec.execution and spec.cas not in chosen:
            chosen[spec.cas] = "" if spec.name == WILDCARD else spec.name
    return list(chosen.values())


try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL("libc.so.6", use_errno=True)  # loaded before any fork
except OSError:
    _LIBC = None


def worker_grace(drain_timeout: float) -> float:
    """How long a local worker may finish actions after SIGTERM: the drain minus time to report."""
    return max(0.0, drain_timeout - min(5.0, drain_timeout / 4))


def _die_with_parent() -> None:
    """Runs in the forked child: only a prctl call, no locks, no imports."""
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class LocalWorkers:
    def __init__(self, cfg: Config):
        ex = cfg.execution
        self.count = 0
        if ex is not None and worker_available():
            self.count = default_count() if ex.local_workers is None else ex.local_workers
        self.instances = worker_instances(cfg) if self.count else []
        self.data_dir = cfg.data_dir
        self.host = cfg.host
        self.grace = worker_grace(cfg.drain_timeout)
        self._procs: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._argv: dict[str, list[str]] = {}
        self._socket: str | None = None
        self._token_file: Path | None = None

    def connect_through(self, socket: str, token_file: Path | None) -> None:
        """With TLS or auth on: reach the server on its local worker socket (auth/localworker.py),
        presenting the secret in token_file when auth is on."""
        self._socket, self._token_file = socket, token_file

    def start(self, port: int) -> None:
        if not self.count or not self.instances:
            return
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else ("[::1]" if self.host == "::" else self.host)
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        server = self._socket or f"{host}:{port}"
        credential = ["--token-file", str(self._token_file)] if self._token_file is not None else []
        for i, instance in enumerate(self.instances):
            cache = Path(self.data_dir) / "worker" / str(i)
            self._argv[instance] = [
                sys.executable, "-m", "granary", "worker", "--server", server, *credential, "--instance", instance,
                "--concurrency", str(self.count), "--cache-dir", str(cache / "cas"),
                "--name", f"local-{os.getpid()}-{i}", "--shutdown-grace", f"{self.grace:g}",
            ]
            thread = threading.Thread(target=self._keep_running, args=(instance,), name=f"granary-local-worker-{i}",
                                      daemon=True)
            self._threads.append(thread)
            thread.start()

    def _spawn(self, instance: str) -> subprocess.Popen:
        # process_group: the server's terminal signals are not the worker's
        # stdout dropped: `granary serve` prints one line; the worker's errors still reach stderr
        proc = subprocess.Popen(
            self._argv[instance],
            stdout=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - prctl only
            process_group=0,
        )
        self._procs[instance] = proc
        return proc

    def _keep_running(self, instance: str) -> None:
        """Spawned from this thread, which lives as long as the worker: PDEATHSIG follows it."""
        while True:
            with self._lock:
                if self._stop.is_set():
                    return
                proc = self._spawn(instance)
            proc.wait()
            if self._stop.is_set():
                return
            log.error("local worker %d exited with %s; starting another", proc.pid, proc.returncode)
            if self._stop.wait(RESTART_DELAY):
                return

    def begin_stop(self) -> None:
        """Ask every worker to finish its running actions and leave (SIGTERM); returns at once."""
        with self._lock:
            self._stop.set()
            for proc in self._procs.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)

    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def wait(self, timeout: float) -> bool:
        """Wait up to timeout seconds for every worker to be gone; -> whether they are."""
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return not self.running()

    def stop(self) -> None:
        """Stop the workers and wait for them (killed if they outlive their grace by far)."""
        self.begin_stop()
        deadline = time.monotonic() + self.grace + KILL_AFTER
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        for proc in self._procs.values():
            if proc.poll() is None:
                log.error("local worker %d did not stop; killing it", proc.pid)
                proc.kill()
        for t in self._threads:
            t.join()
