"""Start BuildGrid (the incumbent Python REAPI server) as a cache-only server.

Used to benchmark Granary side by side with BuildGrid. BuildGrid 0.9.x needs
Python >= 3.13, so it lives in its own venv made by ``bench/buildgrid_env.sh``
(default /tmp/granary-bench/bg-venv, override with BG_VENV).

Configuration written (see ``render_config``):
  * CAS storage: ``!disk-storage`` rooted at ``data_dir/cas`` (BuildGrid puts
    blobs at ``<path>/cas/objects/<2 hex>/<rest of hash>``, one file per blob,
    written via NamedTemporaryFile + os.link).
  * Action Cache: ``!lru-action-cache`` over that same disk CAS. BuildGrid 0.9.x
    has no disk-backed AC; its local choices are LRU (in memory) or Redis,
    S3, remote, sharded. The LRU AC stores each ActionResult *as a blob in the
    disk CAS* and keeps only the action-digest -> result-digest map in memory
    (lost on restart), and on every hit it checks that the referenced output
    blobs still exist in CAS. That is the closest match to a disk cache with no
    external service. max-cached-refs is set large so nothing is evicted.
  * Services on instance "": cas, bytestream, action-cache (allow-updates);
    Capabilities is added automatically by BuildGrid for every instance.
  * Listens on 127.0.0.1:PORT, insecure, no auth, monitoring off.

Manual use:
    python3 bench/buildgrid_server.py --data-dir /tmp/bg-data --port 50061
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_VENV = Path(os.environ.get("BG_VENV", "/tmp/granary-bench/bg-venv"))
BUILDGRID_VERSION = "0.9.1"

CONFIG_TEMPLATE = """\
description: Granary benchmark - BuildGrid {version} cache-only server

server:
  - !channel
    address: "127.0.0.1:{port}"
    insecure-mode: true

authorization:
  method: none

monitoring:
  enabled: false

storages:
  - !disk-storage &cas-storage
    path: {cas_path}

caches:
  - !lru-action-cache &ac
    storage: *cas-storage
    max-cached-refs: {max_refs}
    allow-updates: true
    cache-failed-actions: true

instances:
  - name: ""
    description: cache-only instance
    services:
      - !cas
        storage: *cas-storage
      - !bytestream
        storage: *cas-storage
      - !action-cache
        cache: *ac

# gRPC thread pool (BuildGrid uses a sync grpc.server with a ThreadPoolExecutor;
# default is max(5, 5 * cpu_count) = 10 here).
thread-pool-size: {threads}
maximum-concurrent-rpcs: {max_rpcs}

grpc-server-options:
  grpc.max_receive_message_length: 67108864
  grpc.max_send_message_length: 67108864
"""


def ensure_venv(venv: Path = DEFAULT_VENV) -> Path:
    """Create/reuse the BuildGrid venv (idempotent); returns its path."""
    env = dict(os.environ, BG_VENV=str(venv), BG_VERSION=BUILDGRID_VERSION)
    out = subprocess.run(
        ["bash", str(BENCH_DIR / "buildgrid_env.sh")],
        env=env, check=True, stdout=subprocess.PIPE, text=True,
    ).stdout
    return Path(out.strip().splitlines()[-1])


def render_config(data_dir: Path, port: int, threads: int = 10, max_refs: int = 10_000_000) -> str:
    return CONFIG_TEMPLATE.format(
        version=BUILDGRID_VERSION,
        port=port,
        cas_path=str((data_dir / "cas").resolve()),
        max_refs=max_refs,
        threads=threads,
        max_rpcs=threads * 2,
    )


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _capabilities_ok(port: int, timeout: float = 2.0) -> bool:
    """A raw GetCapabilities call (no generated stubs needed: empty request)."""
    try:
        import grpc  # available in system Python 3.11 and in the venv
    except ImportError:
        return _port_open(port)
    ch = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        call = ch.unary_unary(
            "/build.bazel.remote.execution.v2.Capabilities/GetCapabilities",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        call(b"", timeout=timeout)  # GetCapabilitiesRequest{instance_name=""}
        return True
    except grpc.RpcError:
        return False
    finally:
        ch.close()


def start_buildgrid(
    data_dir: Path,
    port: int,
    *,
    venv: Path | None = None,
    threads: int = 10,
    wait_timeout: float = 60.0,
    log_path: Path | None = None,
) -> subprocess.Popen:
    """Write a config under data_dir and start ``bgd server start``; wait until
    a GetCapabilities call succeeds. The caller owns the returned process
    (use stop_buildgrid)."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    venv = Path(venv) if venv else ensure_venv()
    bgd = venv / "bin" / "bgd"
    cfg = data_dir / "buildgrid.yml"
    cfg.write_text(render_config(data_dir, port, threads=threads))
    log_path = log_path or (data_dir / "buildgrid.log")
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
    proc = subprocess.Popen(
        [str(bgd), "server", "start", str(cfg)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log.close()
    deadline = time.monotonic() + wait_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"bgd exited with {proc.returncode}; see {log_path}:\n"
                + Path(log_path).read_text()[-3000:]
            )
        if _port_open(port) and _capabilities_ok(port):
            return proc
        time.sleep(0.2)
    stop_buildgrid(proc)
    raise TimeoutError(f"BuildGrid did not answer on port {port} in {wait_timeout}s; see {log_path}")


def stop_buildgrid(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=Path("/tmp/granary-bench/bg-data"))
    ap.add_argument("--port", type=int, default=50061)
    ap.add_argument("--threads", type=int, default=10)
    ap.add_argument("--print-config", action="store_true", help="print the config and exit")
    args = ap.parse_args()
    if args.print_config:
        print(render_config(args.data_dir, args.port, threads=args.threads), end="")
        return
    # SIGTERM/SIGHUP to this wrapper must not orphan bgd (it runs in its own session).
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(0))
    proc = start_buildgrid(args.data_dir, args.port, threads=args.threads)
    print(f"BuildGrid {BUILDGRID_VERSION} pid {proc.pid} on 127.0.0.1:{args.port}, "
          f"data {args.data_dir}, log {args.data_dir / 'buildgrid.log'}; Ctrl-C stops it", flush=True)
    try:
        proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop_buildgrid(proc)


if __name__ == "__main__":
    main()
