"""What the process that starts the server processes prepares for them, before any of them imports
prometheus_client: a fresh directory for this run's metrics (PROMETHEUS_MULTIPROC_DIR: every server
process writes its counters there and any of them sums them all at scrape time), and the HTTP port,
reserved like the gRPC one so that every server process can bind it with SO_REUSEPORT.

Light on purpose: the supervisor of several server processes imports this and nothing heavier.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from granary.config_values import listen_address
from granary.errors import ConfigError
from granary.pids import pid_alive as _pid_alive

if TYPE_CHECKING:
    from granary.config import Config

METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus_client when it is imported
HTTP_ADDRESS_ENV = "GRANARY_HTTP_ADDRESS"  # HOST:PORT the server processes bind (the port resolved)
RUN_DIR = "run"  # under the data directory: what lives only as long as one `granary serve`


def http_address(cfg: Config) -> tuple[str, int] | None:
    """Where the HTTP port listens (None: turned off); `auto` is the gRPC host and its port + 1."""
    if not cfg.http.enabled:
        return None
    if cfg.http.listen != "auto":
        return listen_address(cfg.http.listen)
    if cfg.port == 65535:
        raise ConfigError("http.listen: auto would be port 65536 (server.listen's port + 1); set http.listen")
    return cfg.host, cfg.port + 1 if cfg.port else 0


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def address_from_environment(cfg: Config) -> tuple[str, int] | None:
    """In a server process: the address its starter reserved, else (started by hand) the configured one."""
    if not cfg.http.enabled:
        return None
    value = os.environ.get(HTTP_ADDRESS_ENV)
    return listen_address(value) if value else http_address(cfg)


@dataclass
class RunArea:
    """What `prepare` set up; `close` (also at exit) releases the port and removes the metrics directory."""

    host: str = ""
    port: int = 0
    metrics_dir: Path | None = None
    scheme: str = "http"  # https when server.tls is set: the HTTP port shares the gRPC port's certificate
    _keeper: socket.socket | None = field(default=None, repr=False)

    @property
    def enabled(self) -> bool:
        return self.metrics_dir is not None

    def announce(self) -> str:
        """The end of `granary serve`'s ready line."""
        if not self.enabled:
            return ""
        return f"; metrics on {self.scheme}://{format_address(self.host, self.port)}/metrics"

    def close(self) -> None:
        if self._keeper is not None:
            self._keeper.close()
            self._keeper = None
        if self.metrics_dir is not None:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)


def _fresh_metrics_dir(data_dir: Path) -> Path:
    run = data_dir / RUN_DIR
    run.mkdir(mode=0o700, exist_ok=True)
    for old in run.glob("metrics-*"):  # left by a `granary serve` that was killed
        pid = old.name.removeprefix("metrics-")
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    path = run / f"metrics-{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(mode=0o700)
    return path


def prepare(cfg: Config, allow_unauthenticated: bool) -> RunArea:
    """Reserve the HTTP port and make this run's metrics directory, both named in os.environ for the
    server processes about to start (this one included). Call before anything imports prometheus_client."""
    address = http_address(cfg)
    if address is None:
        os.environ.pop(HTTP_ADDRESS_ENV, None)
        return RunArea()
    from granary.auth.settings import AuthSettings, is_loopback
    from granary.supervisor import reserve_port

    host, port = address
    if not (is_loopback(host) or allow_unauthenticated or (cfg.auth or AuthSettings()).enabled):
        raise ConfigError(
            f"http.listen: {host} is reachable from other hosts but no authentication is configured (auth:);"
            " configure auth, listen on 127.0.0.1, or pass --allow-unauthenticated-network-access"
        )
    try:
        keeper, port = reserve_port(host, port)
    except ConfigError as e:
        raise ConfigError(f"http.listen: {e}") from None
    area = RunArea(host, port, _fresh_metrics_dir(cfg.data_dir), "https" if cfg.tls is not None else "http", keeper)
    os.environ[METRICS_DIR_ENV] = str(area.metrics_dir)
    os.environ[HTTP_ADDRESS_ENV] = format_address(host, port)
    atexit.register(area.close)
    return area


def forget_dead_processes(metrics_dir: str) -> None:
    """Drop the live gauges (uploads in progress, backlogs) of server processes that are gone:
    prometheus_client keeps a dead process's file until told (mark_process_dead)."""
    from prometheus_client import multiprocess

    with contextlib.suppress(OSError):
        for entry in os.scandir(metrics_dir):
            name = entry.name
            if not name.startswith("gauge_live") or not name.endswith(".db"):
                continue
            pid = name[:-3].rpartition("_")[2]
            if pid.isdigit() and not _pid_alive(int(pid)):
                multiprocess.mark_process_dead(int(pid), metrics_dir)
