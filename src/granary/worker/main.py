"""Wiring a worker process: channel, caches, sandbox, bot sessions, signals.

Each unit of --concurrency is its own bot session (bot id NAME-PID-K) holding
at most one lease at a time, so any server that gives one lease per bot (as
BuildGrid does) fills every slot. All sessions share one channel, one local
CAS and one work directory.

First SIGTERM/SIGINT: stop taking work, let running actions finish for up to
--shutdown-grace seconds, report them, leave. Second signal (or the grace
running out): kill running actions, report them UNAVAILABLE so the server
can re-queue them, leave.

--max-idle: once no slot has held a lease for that long, the worker stops as on
SIGTERM (nothing is running, so it leaves at once) and exits 0, so a cloud
instance or a pod that is no longer needed goes away by itself.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from granary._proto.google.bytestream import bytestream_pb2_grpc as bs_grpc
from granary.worker.bot import BotConfig, BotSession, Shutdown
from granary.worker.connect import Credentials, open_channel, wait_until_answered
from granary.worker.execute import Executor, Trash, remove_tree
from granary.worker.images import ANY as ANY_IMAGE
from granary.worker.images import PROPERTY as IMAGE_PROPERTY
from granary.worker.images import ImageStore
from granary.worker.inputs import InputLimits
from granary.worker.limits import ActionLimits, Limiter
from granary.worker.local_cas import LocalCas
from granary.worker.logstream import LiveOutput
from granary.worker.mountview import work_view
from granary.worker.platform import properties
from granary.worker.remote_cas import RemoteCas
from granary.worker.sandbox import ActionUser, Bubblewrap, default_user, make_sandbox

log = logging.getLogger("granary.worker")

MAX_MESSAGE = 64 << 20
TRASH_SUFFIX = ".trash"  # work/PID.trash: finished actions' directories being removed (execute.Trash)


@dataclass
class WorkerConfig:
    server: str
    instance: str = ""
    concurrency: int = 1
    properties: list[tuple[str, str]] = field(default_factory=list)
    cache_dir: Path = Path.home() / ".cache" / "granary-worker" / "cas"
    work_dir: Path | None = None  # default: next to the cache (same filesystem, so hardlinks work)
    cache_size: int = 10 << 30
    sandbox: str = "auto"
    sandbox_paths: tuple[str, ...] = ()
    name: str = field(default_factory=socket.gethostname)
    named: bool = False  # name given (--name): bot ids omit the pid, so a restart comes back as the same bots
    poll_timeout: float = 60.0
    shutdown_grace: float = 30.0
    max_idle: float | None = None  # seconds without a lease after which the worker leaves (None: never)
    action_user: ActionUser | None = field(default_factory=default_user)  # None: the worker's own uid
    input_limits: InputLimits = field(default_factory=InputLimits)
    action_limits: ActionLimits = field(default_factory=ActionLimits)  # --action-memory, --action-pids, ...
    credentials: Credentials = field(default_factory=Credentials)  # TLS files and the auth header
    container_images: bool = True  # run container-image=docker://... actions (bwrap sandbox only)
    image_dir: Path | None = None  # default: beside the cache dir
    image_cache_size: int = 10 << 30
    insecure_registries: tuple[str, ...] = ()
    registry_credentials: dict[str, tuple[str, str]] = field(default_factory=dict)


def default_concurrency() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def channel_for(server: str, credentials: Credentials | None = None) -> grpc.Channel:
    """grpc://HOST:PORT or HOST:PORT (plain), grpcs://HOST:PORT (TLS: --tls-ca or the system roots)."""
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.max_send_message_length", MAX_MESSAGE),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    return open_channel(server, credentials or Credentials(), options)


class Worker:
    def __init__(self, cfg: WorkerConfig):
        self.cfg = cfg
        self.shutdown = Shutdown()
        self.idle_exit = False  # stopped by --max-idle
        work_dir = cfg.work_dir or cfg.cache_dir.parent / "work"
        self.work_dir = work_dir / f"{os.getpid()}"
        remove_stale_work_dirs(self.work_dir.parent)
        remove_tree(self.work_dir)
        self.work_dir.mkdir(parents=True)
        self.trash = Trash(self.work_dir.parent / f"{os.getpid()}{TRASH_SUFFIX}")
        remove_tree(self.trash.where)  # of an earlier process that had our pid
        sandbox = make_sandbox(cfg.sandbox, cfg.sandbox_paths, cfg.action_user)
        if getattr(sandbox, "user", None) is not None and isinstance(sandbox, Bubblewrap):
            # before the channel: its threads (and so the actions) must start in the view's namespace
            sandbox = sandbox.with_views(work_view(self.work_dir, cfg.action_user))
        self.limiter: Limiter = cfg.action_limits.start(sandbox.name)  # may move the worker into a leaf cgroup
        self.channel = channel_for(cfg.server, cfg.credentials)
        self.executor = Executor(
            remote=RemoteCas(self.channel, cfg.instance),
            local=LocalCas(cfg.cache_dir, cfg.cache_size),
            sandbox=sandbox,
            work_dir=self.work_dir,
            worker_name=cfg.name,
            action_user=cfg.action_user,
            input_limits=cfg.input_limits,
            trash=self.trash,
            live_output=LiveOutput(bs_grpc.ByteStreamStub(self.channel)),
            limits=self.limiter,
            images=self._images(sandbox.name),
        )
        props = properties(cfg.properties, sandbox.network_modes)
        if self.executor.images is not None:
            props = list(dict.fromkeys([*props, (IMAGE_PROPERTY, ANY_IMAGE)]))
        prefix = cfg.name if cfg.named else f"{cfg.name}-{os.getpid()}"
        self.sessions = [
            BotSession(self.channel, self.executor,
                       BotConfig(cfg.instance, f"{prefix}-{k}", props, cfg.poll_timeout), self.shutdown)
            for k in range(cfg.concurrency)
        ]
        log.info("worker %s: %d slot(s), sandbox %s, platform %s, limits %s", cfg.name, cfg.concurrency,
                 sandbox.name, ", ".join(f"{k}={v}" for k, v in props), self.limiter.describe())

    def _images(self, sandbox: str) -> ImageStore | None:
        """The image store, when this worker can run container images (it needs bubblewrap)."""
        cfg = self.cfg
        if not cfg.container_images:
            return None
        if sandbox != "bwrap":
            log.info("container images are off: they need the bwrap sandbox (sandbox here: %s)", sandbox)
            return None
        if cfg.image_dir is not None:
            remove_stale_work_dirs(cfg.image_dir)  # of worker processes that are gone
            directory = cfg.image_dir / str(os.getpid())
        else:  # inside the work directory: the action uid reaches it through the same view (mountview.py)
            directory = self.work_dir / "images"
        return ImageStore(directory, cfg.image_cache_size, cfg.insecure_registries, cfg.registry_credentials)

    def stop(self, abandon: bool = False) -> None:
        """Begin a clean shutdown (abandon: kill running actions now)."""
        if abandon or self.shutdown.draining.is_set():
            self.shutdown.abandon.set()
        self.shutdown.draining.set()
        if not self.shutdown.abandon.is_set() and self.cfg.shutdown_grace >= 0:
            timer = threading.Timer(self.cfg.shutdown_grace, self.stop, kwargs={"abandon": True})
            timer.daemon = True
            timer.start()
        for s in self.sessions:
            s.notify()

    def run(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        threads = [threading.Thread(target=s.run, name=s.cfg.bot_id, daemon=True) for s in self.sessions]
        for t in threads:
            t.start()
        idle_since = time.monotonic()
        try:
            for t in threads:
                # A bounded join: SIGTERM may be delivered to one of gRPC's threads, and Python runs
                # its handler only when the main thread wakes; an unbounded join could sleep forever.
                while t.is_alive():
                    t.join(1.0)
                    idle_since = self._check_idle(idle_since)
        finally:
            self.close()

    def close(self) -> None:
        self.channel.close()
        self.trash.close()
        self.limiter.close()
        remove_tree(self.work_dir)


    def busy(self) -> bool:
        """Whether any slot holds a lease (running, or finished and not yet reported)."""
        return any(s.tasks for s in self.sessions)

    def _check_idle(self, idle_since: float) -> float:
        """Stop the worker once it has held no lease for --max-idle; returns when idleness began.
        A lease offered at the very moment of stopping is given back (as while draining), so the
        server re-queues it at once: leaving when idle never loses work."""
        now = time.monotonic()
        if self.cfg.max_idle is None or self.shutdown.draining.is_set():
            return now
        if self.busy():
            return now
        if now - idle_since >= self.cfg.max_idle:
            log.info("worker %s: no lease for %gs (--max-idle); leaving", self.cfg.name, self.cfg.max_idle)
            self.idle_exit = True
            self.stop()
        return idle_since


def remove_stale_work_dirs(parent: Path) -> None:
    """Work directories left by worker processes that died without cleaning up."""
    if not parent.is_dir():
        return
    for d in parent.iterdir():
        pid = d.name.removesuffix(TRASH_SUFFIX)
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            remove_tree(d)


def run(cfg: WorkerConfig) -> int:
    worker = Worker(cfg)

    def on_signal(signum: int, _frame) -> None:
        # a stop asked for is no problem: logged at info, so a clean shutdown prints nothing
        log.info("worker: %s received; %s", signal.Signals(signum).name,
                 "abandoning running actions" if worker.shutdown.draining.is_set() else "finishing running actions")
        worker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    target = cfg.server if "://" in cfg.server else f"grpc://{cfg.server}"
    if not wait_until_answered(worker.channel, cfg.instance, f"worker {cfg.name} connecting to {target}",
                               worker.shutdown.draining):
        worker.close()  # stopped before the server ever answered
        return 0
    print(f"granary: worker {cfg.name} serving {cfg.server} with {cfg.concurrency} slot(s)", flush=True)
    worker.run()
    if worker.idle_exit:  # on stdout, as the line that announced it: an expected end, not a problem
        print(f"granary: worker {cfg.name} held no lease for {cfg.max_idle:g}s (--max-idle); exiting", flush=True)
    return 0
