"""`granary worker` processes that `granary serve` starts next to itself.

One worker process per execution queue (CAS store), with `--concurrency
local_workers` (the worker opens one bot session per slot), its cache under
the data dir. Restarted if it exits; killed with the server (PR_SET_PDEATHSIG).
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
from pathlib import Path

from granary.config import Config

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


def default_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


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
        self._procs: dict[str, subprocess.Popen] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._argv: dict[str, list[str]] = {}

    def start(self, port: int) -> None:
        if not self.count or not self.instances:
            return
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else ("[::1]" if self.host == "::" else self.host)
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        for i, instance in enumerate(self.instances):
            cache = Path(self.data_dir) / "worker" / str(i)
            self._argv[instance] = [
                sys.executable, "-m", "granary", "worker", "--server", f"{host}:{port}", "--instance", instance,
                "--concurrency", str(self.count), "--cache-dir", str(cache / "cas"),
                "--name", f"local-{os.getpid()}-{i}",
            ]
        self._thread = threading.Thread(target=self._supervise, name="granary-local-workers", daemon=True)
        self._thread.start()

    def _spawn(self, instance: str) -> None:
        # process_group: the server's terminal signals are not the worker's
        # stdout dropped: `granary serve` prints one line; the worker's errors still reach stderr
        self._procs[instance] = subprocess.Popen(
            self._argv[instance],
            stdout=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - prctl only
            process_group=0,
        )

    def _supervise(self) -> None:
        for instance in self._argv:  # spawned from this long-lived thread: PDEATHSIG follows it
            self._spawn(instance)
        backoff = 1.0
        while not self._stop.wait(backoff):
            backoff = 1.0
            for instance, proc in list(self._procs.items()):
                if proc.poll() is not None and not self._stop.is_set():
                    log.error("local worker %d exited with %s; starting another", proc.pid, proc.returncode)
                    self._spawn(instance)
                    backoff = 5.0
        for proc in self._procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self._procs.values():
            try:
                proc.wait(35)
            except subprocess.TimeoutExpired:
                proc.kill()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(40)
