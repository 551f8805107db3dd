"""Each process of the default tree imports only what its job needs: what a process never
uses still costs it memory, for as long as it runs.

The server processes of a supervisor are forks of it: it imports what they run on once
(granary.preload) and they share those pages, so what they import on their own is a copy each.

The processes are real (`granary serve` with several server processes and its local
worker; `granary worker` running an action); each records its `sys.modules` as it exits.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rwapi import ExecClient, final
from serverutil import LISTEN_RE, start_granary

# Runs `granary ARGS...` in this interpreter and writes its module names to PATH at exit.
RECORDER = """
import atexit, runpy, sys
path = sys.argv[1]

def record() -> None:
    with open(path, "w") as f:
        f.write("\\n".join(sorted(sys.modules)))

atexit.register(record)
sys.argv = ["granary", *sys.argv[2:]]
runpy.run_module("granary", run_name="__main__", alter_sys=True)
"""

# The supervisor's server processes are forks of it: it holds what they run on, shared with
# them, but no backend it is not configured with, and nothing of a worker's.
NOT_IN_SUPERVISOR = (
    "granary.worker.main", "granary.worker.inputs", "granary.worker.execute", "granary.worker.bot",
    "granary.worker.sandbox",
    # metrics belong to the server process that keeps them (the HTTP port's modules are preloaded)
    "granary.observability.metrics",
    "rich", "granary.status_cli",  # terminal views of other commands
)
PRELOADED_IN_SUPERVISOR = {
    "grpc", "google.protobuf", "uvloop", "sqlalchemy", "granary.server", "granary.bootstrap",
    "granary.cas.disk", "granary.execution.farm", "granary.services.execution_service",
    "aiohttp", "prometheus_client", "granary.observability.http",
}
# A worker speaks the Remote Workers API to a server; the server's queue, stores and
# configuration models are not its business.
NOT_IN_WORKER = (
    "sqlalchemy", "pydantic", "yaml", "uvloop",
    "granary.config", "granary.config_models", "granary.server", "granary.bootstrap", "granary.storage_builder",
    "granary.cas", "granary.actioncache", "granary.execution.farm", "granary.execution.jobqueue",
    "granary.execution.scheduler", "granary.execution.botsessions", "granary.execution.operations",
    "granary.services.bots_service", "granary.services.execution_service", "granary.supervisor",
    "aiohttp", "prometheus_client", "granary.observability.runarea", "granary.observability.serving",
    "granary.auth.cli", "granary.cleanup_cli", "granary.config_cli",  # other commands' flags
    "rich", "granary.status_cli",
)

# A server loads the client libraries of the backends it is configured with, and no others:
# the default configuration is disk stores and a SQLite queue, without authentication.
NOT_IN_DEFAULT_SERVER = (
    "sqlalchemy.dialects.postgresql", "psycopg", "psycopg2", "redis", "boto3", "botocore", "jwt",
    "granary.redis_client", "granary.s3_client", "granary.cas.redis", "granary.cas.s3",
    "granary.actioncache.redis", "granary.actioncache.s3", "granary.auth.jwt_auth", "granary.auth.tokens",
    "granary.auth.htpasswd", "granary.auth.interceptor",
)

WORKER_CONFIG = """
storage:
  main: {type: disk, path: cas}
action_caches:
  main: {type: disk, path: ac}
execution:
  local_workers: 0
  platform_grace: 0s
  known_platforms: [{OSFamily: linux}]
instances:
  "*": {cas: main, action_cache: main}
"""


def offending(modules: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == f or m.startswith(f + ".") for f in forbidden))


def recorded(path: Path) -> set[str]:
    return set(path.read_text().split())


def recording(tmp_path: Path, *args: str, stdout=subprocess.DEVNULL) -> tuple[subprocess.Popen, Path]:
    out = tmp_path / "modules.txt"
    log = open(tmp_path / "stderr.log", "wb")  # noqa: SIM115 - the child holds it; closed at exit
    proc = subprocess.Popen([sys.executable, "-c", RECORDER, str(out), *args], stdout=stdout, stderr=log,
                            start_new_session=True)
    log.close()
    return proc, out


def stop(proc: subprocess.Popen, timeout: float = 60) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise


def serving_line(proc: subprocess.Popen, timeout: float = 120) -> str:
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.append(raw.decode(errors="replace"))

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        for line in lines:
            if LISTEN_RE.search(line):
                return line
        time.sleep(0.05)
    raise AssertionError(f"granary serve did not report its address: {lines}")


@pytest.fixture
def execution_server(tmp_path: Path) -> Iterator[str]:
    srv = start_granary(tmp_path / "server", WORKER_CONFIG)
    try:
        yield srv.address
    finally:
        srv.stop()


def test_supervisor_imports_what_its_servers_run_and_no_more(tmp_path: Path) -> None:
    proc, out = recording(tmp_path, "serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "data"),
                          "--processes", "2", stdout=subprocess.PIPE)
    try:
        line = serving_line(proc)
        assert "2 processes" in line, line
    finally:
        code = stop(proc)
    assert code == 0, (tmp_path / "stderr.log").read_text()
    modules = recorded(out)
    assert "granary.supervisor" in modules  # it did run the supervisor
    assert PRELOADED_IN_SUPERVISOR <= modules, sorted(PRELOADED_IN_SUPERVISOR - modules)
    assert offending(modules, NOT_IN_SUPERVISOR + NOT_IN_DEFAULT_SERVER) == []


# Loads the default configuration, preloads as the supervisor does, then runs a server in this
# process until it is ready and prints the modules it imported beyond the preload.
SERVER_AFTER_PRELOAD = """
import os, signal, sys
from pathlib import Path
from granary.config import load
from granary.preload import preload_server

cfg = load(None, Path(sys.argv[1]))
preload_server(cfg)
import gc, granary.supervisor  # what the supervisor itself holds
before = set(sys.modules)

def ready(_port):
    print("\\n".join(sorted(set(sys.modules) - before)), flush=True)
    os.kill(os.getpid(), signal.SIGTERM)

from granary import server
server.run_single(cfg, 0, False, ready)
"""


def test_preload_gives_a_server_process_everything_it_imports(tmp_path: Path) -> None:
    """A module the preload misses is imported again, privately, by every server process."""
    out = subprocess.run([sys.executable, "-c", SERVER_AFTER_PRELOAD, str(tmp_path / "data")],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    # metrics are the one module each server process creates for itself
    own = [m for m in out.stdout.split() if not m.startswith("encodings.") and m != "granary.observability.metrics"]
    assert own == [], own


def test_default_server_imports_only_the_configured_backends(tmp_path: Path) -> None:
    proc, out = recording(tmp_path, "serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "data"),
                          "--processes", "1", stdout=subprocess.PIPE)
    try:
        address = LISTEN_RE.search(serving_line(proc))
        assert address is not None
        client = ExecClient(f"{address.group(1)}:{address.group(2)}")
        try:
            action, _ = client.action(["sh", "-c", "echo ran > out"])  # stores, queue and local worker
            response = final(client.execute(action, timeout=120))
            assert response.result.exit_code == 0, response
        finally:
            client.close()
    finally:
        code = stop(proc)
    assert code == 0, (tmp_path / "stderr.log").read_text()
    modules = recorded(out)
    assert {"granary.server", "granary.cas.disk", "granary.execution.jobqueue"} <= modules  # it did serve
    assert offending(modules, NOT_IN_DEFAULT_SERVER) == []


def test_worker_running_an_action_imports_no_server_or_config_modules(tmp_path: Path, execution_server: str) -> None:
    proc, out = recording(tmp_path, "worker", "--server", execution_server, "--concurrency", "1",
                          "--cache-dir", str(tmp_path / "worker" / "cas"), "--sandbox", "none")
    client = ExecClient(execution_server)
    try:
        action, _ = client.action(["sh", "-c", "echo ran > out"])
        response = final(client.execute(action, skip_cache=True, timeout=120))
        assert response.status.code == 0, response.status
        assert response.result.exit_code == 0, response.result
    finally:
        client.close()
        code = stop(proc)
    assert code == 0, (tmp_path / "stderr.log").read_text()
    modules = recorded(out)
    assert "granary.worker.execute" in modules  # it did run an action
    assert offending(modules, NOT_IN_WORKER) == []
