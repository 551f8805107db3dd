#!/usr/bin/env python3
"""A real Granary farm on one machine, with faults (issue 12, "A real cluster on one machine").

Every "host" is a Linux network namespace with its own address on a bridge
(10.77.0.0/24), joined to it by a veth pair:

    root namespace 10.77.0.1   PostgreSQL (the queue), Redis (the CAS cache), moto S3 behind a
                               fault-injecting HTTP proxy, and a TCP load balancer (clients prefer
                               server A, workers prefer server B, so jobs cross hosts through the queue)
    gc-srvA 10.77.0.11         granary serve (tiered Redis over S3, deferred writes; S3 action cache)
    gc-srvB 10.77.0.12         granary serve (the same config)
    gc-w1..3 10.77.0.21-23     granary worker --server grpc://LB, two slots each
    gc-client 10.77.0.30       bazel --batch, remote execution only

One fault scenario at a time: a fresh workspace (its own salt, so every action
really executes), a local reference build, then the remote build while the
fault happens and heals. Afterwards: were the outputs byte-identical to the
local build, is every acknowledged blob and action result still readable
through both servers, did any action complete twice with different results,
and the peak RSS of the Granary processes.

    python3 bench/cluster.py                          # every scenario
    python3 bench/cluster.py --short                  # worker-kill and rolling-restart
    python3 bench/cluster.py --scenarios s3-faults,redis-restart

Needs root (namespaces, veth, bridge, tmpfs), bazel, postgres, redis-server,
moto and bubblewrap. Everything it creates is removed on every exit path.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import fcntl
import glob
import hashlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))

PREFIX = "gc-"
BRIDGE = "gc-br0"
NET = "10.77.0"
GW = f"{NET}.1"
HOSTS = {"srvA": 11, "srvB": 12, "w1": 21, "w2": 22, "w3": 23, "client": 30}
SERVER_PORT = 8980
LB_CLIENT_PORT = 18980
LB_WORKER_PORT = 18990
WORKERS = ("w1", "w2", "w3")
BOT_TIMEOUT = 10

SCENARIOS = (
    "baseline", "server-kill-upload", "server-kill-execute", "worker-kill", "worker-partition",
    "worker-drop", "redis-restart", "s3-faults", "postgres-restart", "disk-full", "rolling-restart",
)
SHORT = ("worker-kill", "rolling-restart")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


def ns(host: str) -> str:
    return PREFIX + host


def addr(host: str) -> str:
    return f"{NET}.{HOSTS[host]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(host: str, port: int, timeout: float = 60, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {host}:{port} exited with {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {host}:{port} after {timeout}s")


def netns_available() -> str | None:
    """None if this process may create namespaces, veths and a bridge; else why not."""
    if os.geteuid() != 0:
        return "not root"
    for tool in ("ip", "bazel", "redis-server", "bwrap"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not glob.glob("/usr/lib/postgresql/*/bin/postgres"):
        return "PostgreSQL binaries are not installed"
    probe = f"{PREFIX}probe{os.getpid() % 10000}"
    r = sh("ip", "netns", "add", probe, check=False)
    if r.returncode != 0:
        return f"ip netns add failed: {r.stderr.strip()}"
    sh("ip", "netns", "del", probe, check=False)
    return None


# ---- network ----------------------------------------------------------------------------------


def teardown_network() -> None:
    """Remove every namespace and link this harness may have made (also leftovers of a crash)."""
    for name in sh("ip", "netns", "list", check=False).stdout.split():
        if name.startswith(PREFIX):
            for pid in sh("ip", "netns", "pids", name, check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            sh("ip", "netns", "del", name, check=False)
    for host in HOSTS:
        sh("ip", "link", "del", f"gcv-{host}", check=False)
    sh("ip", "link", "del", BRIDGE, check=False)


def setup_network() -> None:
    teardown_network()
    sh("ip", "link", "add", BRIDGE, "type", "bridge")
    sh("ip", "addr", "add", f"{GW}/24", "dev", BRIDGE)
    sh("ip", "link", "set", BRIDGE, "up")
    for host in HOSTS:
        n, outer = ns(host), f"gcv-{host}"
        sh("ip", "netns", "add", n)
        sh("ip", "link", "add", outer, "type", "veth", "peer", "name", "eth0", "netns", n)
        sh("ip", "link", "set", outer, "master", BRIDGE)
        sh("ip", "link", "set", outer, "up")
        sh("ip", "netns", "exec", n, "ip", "addr", "add", f"{addr(host)}/24", "dev", "eth0")
        sh("ip", "netns", "exec", n, "ip", "link", "set", "eth0", "up")
        sh("ip", "netns", "exec", n, "ip", "link", "set", "lo", "up")
        sh("ip", "netns", "exec", n, "ip", "route", "add", "default", "via", GW)


def netns_pids(host: str) -> list[int]:
    """Every process of a host: those in its namespace and their descendants (a sandboxed action
    runs in namespaces of its own but is still the host's process)."""
    roots = {int(p) for p in sh("ip", "netns", "pids", ns(host), check=False).stdout.split()}
    children: dict[int, list[int]] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            text = Path(stat).read_text()
        except OSError:
            continue
        ppid = int(text.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(stat.split("/")[2]))
    found, todo = set(roots), list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return sorted(found)


def kill_host(host: str, sig: int = signal.SIGKILL) -> int:
    """Signal every process of a host (its namespace), as a host dying would."""
    pids = netns_pids(host)
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    return len(pids)


# ---- the shared services (root namespace) -----------------------------------------------------


class Postgres:
    def __init__(self, base: Path) -> None:
        self.bin = max(glob.glob("/usr/lib/postgresql/*/bin"))
        self.dir = base / "pg"
        self.dir.mkdir()
        shutil.chown(self.dir, "postgres")
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        sh("runuser", "-u", "postgres", "--", f"{self.bin}/initdb", "-D", str(self.dir / "data"), "-A", "trust",
           "-U", "postgres", "--no-sync")
        with open(self.dir / "data" / "pg_hba.conf", "a") as f:
            f.write(f"host all all {NET}.0/24 trust\n")
        self.start()
        self.url = f"postgresql+psycopg://postgres@{GW}:{self.port}/postgres"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["runuser", "-u", "postgres", "--", f"{self.bin}/postgres", "-D", str(self.dir / "data"),
             "-p", str(self.port), "-k", str(self.dir), "-c", f"listen_addresses={GW}", "-c", "fsync=off",
             "-c", "max_connections=300"],
            stdout=subprocess.DEVNULL, stderr=open(self.dir / "postgres.log", "ab"),  # noqa: SIM115 - the child keeps it
            start_new_session=True)
        wait_port(GW, self.port, proc=self.proc)

    def stop(self, sig: int = signal.SIGINT) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


class Redis:
    def __init__(self, base: Path) -> None:
        self.dir = base / "redis"
        self.dir.mkdir()
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.start()
        self.url = f"redis://{GW}:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", GW, "--save", "", "--appendonly", "no",
             "--dir", str(self.dir), "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_port(GW, self.port, proc=self.proc)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)


class Moto:
    def __init__(self) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_port("127.0.0.1", self.port, proc=self.proc)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)


# ---- proxies: the load balancer and the S3 fault injector (one asyncio loop in a thread) ------


class Proxies:
    """A TCP load balancer (first reachable backend in preference order) and an HTTP proxy in front
    of moto that answers 503 SlowDown or stalls on demand."""

    def __init__(self, moto_port: int) -> None:
        self.moto_port = moto_port
        self.s3_port = free_port()
        self.s3_error_rate = 0.0
        self.s3_slow_rate = 0.0
        self.s3_slow_seconds = 0.0
        self.s3_requests = self.s3_errors = self.s3_slowed = 0
        self.upstream_bytes = 0  # client -> server bytes through the client port (for "mid-upload")
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.ready.wait(30)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        self.ready.set()
        self.loop.run_forever()

    async def _start(self) -> None:
        from aiohttp import ClientSession, ClientTimeout, web

        order_a = [(addr("srvA"), SERVER_PORT), (addr("srvB"), SERVER_PORT)]
        await asyncio.start_server(lambda r, w: self._pipe(r, w, order_a, True), GW, LB_CLIENT_PORT)
        await asyncio.start_server(lambda r, w: self._pipe(r, w, order_a[::-1], False), GW, LB_WORKER_PORT)
        self.session = ClientSession(timeout=ClientTimeout(total=300), auto_decompress=False)
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._s3)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, GW, self.s3_port).start()

    async def _pipe(self, reader, writer, order, count: bool) -> None:
        upstream = None
        for host, port in order:
            try:
                upstream = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
                break
            except (OSError, TimeoutError):
                continue
        if upstream is None:
            writer.close()
            return
        ur, uw = upstream

        async def copy(src, dst, counted: bool) -> None:
            try:
                while data := await src.read(65536):
                    if counted:
                        self.upstream_bytes += len(data)
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                try:
                    dst.close()
                except OSError:
                    pass

        await asyncio.gather(copy(reader, uw, count), copy(ur, writer, False))

    async def _s3(self, request):
        from aiohttp import web

        self.s3_requests += 1
        body = await request.read()
        if random.random() < self.s3_slow_rate:
            self.s3_slowed += 1
            await asyncio.sleep(self.s3_slow_seconds)
        if random.random() < self.s3_error_rate:
            self.s3_errors += 1
            return web.Response(status=503, content_type="application/xml",
                                text="<Error><Code>SlowDown</Code><Message>injected by cluster.py</Message></Error>")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("content-length", "transfer-encoding")}
        url = f"http://127.0.0.1:{self.moto_port}{request.rel_url}"
        async with self.session.request(request.method, url, headers=headers, data=body) as resp:
            data = await resp.read()
            head = request.method == "HEAD"  # a HEAD answer's Content-Length is the object's size: keep it
            out = {k: v for k, v in resp.headers.items()
                   if k.lower() not in ("transfer-encoding", "connection", "content-encoding")
                   and (head or k.lower() != "content-length")}
            return web.Response(status=resp.status, headers=out, body=None if head else data)

    def s3_faults(self, error_rate: float = 0.0, slow_rate: float = 0.0, slow_seconds: float = 0.0) -> None:
        self.s3_error_rate, self.s3_slow_rate, self.s3_slow_seconds = error_rate, slow_rate, slow_seconds

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.session.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


# ---- the farm -----------------------------------------------------------------------------------


CONFIG = """\
server: {{allow_unauthenticated: true, processes: 1}}
storage:
  main:
    type: tiered
    cache: {{type: redis, url: "{redis}", max_blob_size: 4MiB}}
    fallback: {{type: s3, bucket: cluster, prefix: cas/, endpoint_url: "{s3}", region: us-east-1,
               create_bucket: true, access_key_id: testing, secret_access_key: testing}}
    defer_fallback_writes: true
action_caches:
  main: {{type: s3, bucket: cluster, prefix: ac/, endpoint_url: "{s3}", region: us-east-1,
         create_bucket: true, access_key_id: testing, secret_access_key: testing}}
instances:
  "*": {{cas: main, action_cache: main}}
execution:
  database: "{pg}"
  local_workers: 0
  bot_timeout: {bot_timeout}s
  bot_long_poll: 3s
"""


class Farm:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.procs: dict[str, subprocess.Popen] = {}
        self.mounts: list[Path] = []
        self.closed = False
        # one farm per machine: the namespace and link names are fixed
        self.lock = open("/run/granary-cluster.lock", "w")  # noqa: SIM115 - held for the farm's life
        try:
            fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise RuntimeError("another cluster farm runs on this machine (/run/granary-cluster.lock)") from None
        self.env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "AWS_ACCESS_KEY_ID": "testing",
                    "AWS_SECRET_ACCESS_KEY": "testing"}
        try:
            setup_network()
            self.pg = Postgres(base)
            self.redis = Redis(base)
            self.moto = Moto()
            self.proxies = Proxies(self.moto.port)
            self.config = base / "granary.yaml"
            self.config.write_text(CONFIG.format(redis=self.redis.url, s3=f"http://{GW}:{self.proxies.s3_port}",
                                                 pg=self.pg.url, bot_timeout=BOT_TIMEOUT))
            for host in ("srvA", "srvB"):
                self.start_server(host)
            for w in WORKERS:
                self.start_worker(w)
        except BaseException:
            self.close()
            raise

    def _spawn(self, host: str, args: list[str]) -> subprocess.Popen:
        logf = open(self.base / f"{host}.log", "ab")  # noqa: SIM115 - the child process keeps it
        proc = subprocess.Popen(["ip", "netns", "exec", ns(host), *args], env=self.env, stdout=logf,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs[host] = proc
        return proc

    def start_server(self, host: str) -> None:
        proc = self._spawn(host, [sys.executable, "-m", "granary", "serve", "--config", str(self.config),
                                  "--listen", f"{addr(host)}:{SERVER_PORT}", "--data-dir", str(self.base / host)])
        wait_port(addr(host), SERVER_PORT, proc=proc)

    def start_worker(self, host: str, cache_dir: Path | None = None) -> None:
        cache = cache_dir or self.base / host / "cas"
        cache.mkdir(parents=True, exist_ok=True)
        self._spawn(host, [sys.executable, "-m", "granary", "worker", "--server", f"grpc://{GW}:{LB_WORKER_PORT}",
                           "--name", host, "--concurrency", "2", "--cache-dir", str(cache),
                           "--cache-size", "1GiB"])

    def wait_exit(self, host: str, timeout: float = 90) -> None:
        proc = self.procs[host]
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_host(host)
            proc.wait(10)
        deadline = time.monotonic() + 10
        while netns_pids(host) and time.monotonic() < deadline:
            time.sleep(0.1)

    def running_action(self, host: str) -> bool:
        """Is an action (a `sleep` of the workload) running on this worker host now?"""
        for pid in netns_pids(host):
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "sleep":
                    return True
            except OSError:
                pass
        return False

    def tmpfs(self, path: Path, size: str) -> None:
        path.mkdir(parents=True, exist_ok=True)
        sh("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
        self.mounts.append(path)

    def umount(self, path: Path) -> None:
        sh("umount", "-l", str(path), check=False)
        if path in self.mounts:
            self.mounts.remove(path)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for host in HOSTS:
            kill_host(host)
        for p in self.procs.values():
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass
        for m in list(self.mounts):
            self.umount(m)
        for what in ("proxies", "pg", "redis", "moto"):  # those that were started
            try:
                if hasattr(self, what):
                    getattr(self, what).stop()
            except Exception as e:  # noqa: BLE001 - cleanup goes on whatever one step did
                log(f"cleanup: {e}")
        teardown_network()
        self.lock.close()


# ---- memory -------------------------------------------------------------------------------------


class RssSampler:
    """Peak resident memory of the Granary processes of each host (sum over the host's processes)."""

    def __init__(self, hosts: tuple[str, ...]) -> None:
        self.hosts = hosts
        self.peak: dict[str, int] = {}
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop_event.wait(0.5):
            for host in self.hosts:
                total = 0
                for pid in netns_pids(host):
                    try:
                        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                        if b"granary" not in cmd:
                            continue
                        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                            if line.startswith("VmRSS:"):
                                total += int(line.split()[1]) * 1024
                    except OSError:
                        pass
                self.peak[host] = max(self.peak.get(host, 0), total)

    def stop(self) -> dict[str, int]:
        self.stop_event.set()
        self.thread.join(5)
        return self.peak


# ---- the workload -------------------------------------------------------------------------------

STEPS = 24
BIG_INPUTS = 4
BIG_SIZE = 6 << 20
BAZELRC = """\
build --nosandbox_debug
build --experimental_repository_disable_download
build --color=no --curses=no
"""


def make_workspace(root: Path, salt: str) -> list[Path]:
    """Genrules that each sleep 2 s (so faults land mid-action) over large inputs (so they land
    mid-upload), with large outputs and a final action that depends on all of them."""
    root.mkdir(parents=True)
    (root / "WORKSPACE").write_text('workspace(name = "cluster")\n')
    (root / ".bazelrc").write_text(BAZELRC)
    (root / ".bazelignore").write_text("bazel-bin\nbazel-out\nbazel-testlogs\nbazel-ws\n")
    (root / "salt.txt").write_text(salt + "\n")
    rnd = random.Random(salt)
    inputs = [root / "salt.txt"]
    for i in range(BIG_INPUTS):
        p = root / f"big_{i}.bin"
        p.write_bytes(rnd.randbytes(BIG_SIZE))
        inputs.append(p)
    rules = []
    for i in range(STEPS):
        big = f"big_{i % BIG_INPUTS}.bin"
        rules.append(f"""genrule(
    name = "step_{i}",
    srcs = ["salt.txt", "{big}"],
    outs = ["out_{i}.txt", "blob_{i}.bin"],
    cmd = "sleep 2; (cat $(location salt.txt); sha256sum $(location {big}) | cut -c1-64; echo step {i}) "
          + "> $(location out_{i}.txt); (cat $(location salt.txt); tail -c {1000000 + i * 4096} $(location {big})) "
          + "> $(location blob_{i}.bin)",
)
""")
    rules.append(f"""genrule(
    name = "final",
    srcs = [{", ".join(f'":out_{i}.txt"' for i in range(STEPS))}],
    outs = ["final.txt"],
    cmd = "cat $(SRCS) | sha256sum > $@",
)
""")
    (root / "BUILD").write_text("\n".join(rules))
    return inputs


def bazel(host: str | None, ws: Path, state: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    from bazelutil import BAZEL

    env = {k: v for k, v in os.environ.items() if k not in ("TEST_TMPDIR", "JAVA_HOME", "XDG_CACHE_HOME")}
    env.update(HOME=str(state / "home"), LANG="C.UTF-8", LC_ALL="C.UTF-8")
    (state / "home").mkdir(parents=True, exist_ok=True)
    prefix = ["ip", "netns", "exec", ns(host)] if host else []
    cmd = [*prefix, BAZEL or "bazel", "--batch", "--nohome_rc", f"--output_user_root={state / 'root'}",
           f"--output_base={state / 'base'}", *args]
    try:
        return subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, errors="replace",
                              timeout=timeout, stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired as e:
        return subprocess.CompletedProcess(cmd, 124, str(e.stdout or ""), f"timed out after {timeout}s")


def remote_flags(invocation: str) -> list[str]:
    return [f"--remote_executor=grpc://{GW}:{LB_CLIENT_PORT}", "--remote_timeout=60", "--remote_retries=10",
            "--spawn_strategy=remote", "--genrule_strategy=remote", "--remote_local_fallback=false",
            f"--invocation_id={invocation}", "--jobs=12"]


# ---- the checks ---------------------------------------------------------------------------------


@dataclass
class Audit:
    completed: int = 0
    lost: list[str] = field(default_factory=list)
    differing: list[str] = field(default_factory=list)


def audit(invocation: str, inputs: list[Path]) -> Audit:
    """Every result the farm acknowledged for this build (a COMPLETED operation with exit code 0)
    and every blob it names, plus the build's own input files, must be readable through both
    servers; no action may have completed twice with different outputs."""
    import grpc
    from google.longrunning import operations_pb2, operations_pb2_grpc

    from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
    from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc

    result = Audit()
    servers = [f"{addr('srvA')}:{SERVER_PORT}", f"{addr('srvB')}:{SERVER_PORT}"]
    by_action: dict[str, set[tuple]] = {}
    acknowledged: list[tuple[re_pb2.Digest, re_pb2.ActionResult]] = []
    with grpc.insecure_channel(servers[0]) as ch:
        stub = operations_pb2_grpc.OperationsStub(ch)
        token = ""
        while True:
            resp = stub.ListOperations(operations_pb2.ListOperationsRequest(
                name="", filter=f"stage = COMPLETED & invocation_id = {invocation}", page_size=500,
                page_token=token), timeout=60)
            for op in resp.operations:
                md, er = re_pb2.ExecuteOperationMetadata(), re_pb2.ExecuteResponse()
                op.metadata.Unpack(md)
                if not op.response.Unpack(er) or er.status.code != 0:
                    continue
                ar = er.result
                key = md.action_digest.hash
                outs = tuple(sorted((f.path, f.digest.hash) for f in ar.output_files))
                by_action.setdefault(key, set()).add((ar.exit_code, outs))
                if ar.exit_code == 0:
                    result.completed += 1
                    acknowledged.append((md.action_digest, ar))
            token = resp.next_page_token
            if not token:
                break
    result.differing = [k[:12] for k, v in by_action.items() if len(v) > 1]
    blobs: dict[str, re_pb2.Digest] = {}
    for p in inputs:
        data = p.read_bytes()
        blobs[hashlib.sha256(data).hexdigest()] = re_pb2.Digest(hash=hashlib.sha256(data).hexdigest(),
                                                                 size_bytes=len(data))
    for _, ar in acknowledged:
        for f in ar.output_files:
            blobs[f.digest.hash] = f.digest
        for d in (ar.stdout_digest, ar.stderr_digest):
            if d.hash and d.size_bytes:
                blobs[d.hash] = d
    for server in servers:
        with grpc.insecure_channel(server) as ch:
            cas, ac = re_grpc.ContentAddressableStorageStub(ch), re_grpc.ActionCacheStub(ch)
            missing = cas.FindMissingBlobs(re_pb2.FindMissingBlobsRequest(blob_digests=list(blobs.values())),
                                           timeout=60).missing_blob_digests
            result.lost += [f"blob {d.hash[:12]} via {server}" for d in missing]
            for digest, ar in acknowledged:
                try:
                    got = ac.GetActionResult(re_pb2.GetActionResultRequest(action_digest=digest), timeout=60)
                except grpc.RpcError as e:
                    result.lost.append(f"result {digest.hash[:12]} via {server}: {e.code().name}")
                    continue
                if [f.digest.hash for f in got.output_files] != [f.digest.hash for f in ar.output_files]:
                    result.differing.append(f"{digest.hash[:12]} (cache vs operation)")
    return result


def hash_outputs(bin_dir: Path) -> dict[str, str]:
    from bazelutil import hash_tree

    return hash_tree(bin_dir) if bin_dir.is_dir() else {}


# ---- the faults ---------------------------------------------------------------------------------


def wait_until(cond: Callable[[], bool], timeout: float = 120, stop: threading.Event | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stop is not None and stop.is_set():
            return False
        if cond():
            return True
        time.sleep(0.1)
    return False


def executing(farm: Farm) -> bool:
    return any(farm.running_action(w) for w in WORKERS)


def fault_for(name: str, farm: Farm, stop: threading.Event) -> Callable[[], str]:
    """The fault of a scenario: a function run beside the build, returning what it did."""

    def server_kill_upload() -> str:
        start = farm.proxies.upstream_bytes
        if not wait_until(lambda: farm.proxies.upstream_bytes - start > BIG_SIZE * 1.5, stop=stop):
            return "upload never seen"
        n = kill_host("srvA")
        farm.wait_exit("srvA")
        time.sleep(3)
        farm.start_server("srvA")
        return f"kill -9 srvA ({n} processes) after {(farm.proxies.upstream_bytes - start) >> 20} MiB uploaded"

    def server_kill_execute() -> str:
        if not wait_until(lambda: executing(farm), stop=stop):
            return "no action seen running"
        n = kill_host("srvA")
        farm.wait_exit("srvA")
        time.sleep(3)
        farm.start_server("srvA")
        return f"kill -9 srvA ({n} processes) mid-Execute"

    def worker_kill() -> str:
        if not wait_until(lambda: farm.running_action("w1"), stop=stop):
            return "w1 never ran an action"
        n = kill_host("w1")
        farm.wait_exit("w1")
        time.sleep(3)
        farm.start_worker("w1")
        return f"kill -9 w1 ({n} processes) mid-action; restarted after 3 s"

    def worker_partition() -> str:
        if not wait_until(lambda: farm.running_action("w2"), stop=stop):
            return "w2 never ran an action"
        sh("ip", "link", "set", "gcv-w2", "down")
        time.sleep(BOT_TIMEOUT + 8)
        sh("ip", "link", "set", "gcv-w2", "up")
        return f"w2 link down {BOT_TIMEOUT + 8} s mid-action (bot_timeout {BOT_TIMEOUT} s), then up"

    def worker_drop() -> str:
        """Packets from w2 silently dropped. tc netem is preferred; kernels without sch_netem (and
        no iptables/nft here) get a blackhole route to the farm's gateway inside w2 instead."""
        if not wait_until(lambda: farm.running_action("w2"), stop=stop):
            return "w2 never ran an action"
        w2 = ["ip", "netns", "exec", ns("w2")]
        how = "tc netem loss 100%"
        if sh(*w2, "tc", "qdisc", "add", "dev", "eth0", "root", "netem", "loss", "100%", check=False).returncode:
            how = f"blackhole route to {GW} (no sch_netem)"
            sh(*w2, "ip", "route", "add", "blackhole", f"{GW}/32")
        time.sleep(BOT_TIMEOUT + 8)
        sh(*w2, "tc", "qdisc", "del", "dev", "eth0", "root", check=False)
        sh(*w2, "ip", "route", "del", "blackhole", f"{GW}/32", check=False)
        return f"w2's packets dropped ({how}) for {BOT_TIMEOUT + 8} s mid-action, then let through"

    def redis_restart() -> str:
        if not wait_until(lambda: executing(farm), stop=stop):
            return "no action seen running"
        farm.redis.stop()
        time.sleep(3)
        farm.redis.start()
        return "redis-server stopped mid-build, empty one started 3 s later"

    def s3_faults() -> str:
        farm.proxies.s3_faults(error_rate=0.2, slow_rate=0.2, slow_seconds=2.0)
        stop.wait(600)
        farm.proxies.s3_faults()
        p = farm.proxies
        return f"S3: {p.s3_errors} injected 503s and {p.s3_slowed} 2 s stalls in {p.s3_requests} requests"

    def postgres_restart() -> str:
        if not wait_until(lambda: executing(farm), stop=stop):
            return "no action seen running"
        farm.pg.stop()
        time.sleep(3)
        farm.pg.start()
        return "PostgreSQL fast shutdown mid-build, started 3 s later"

    def rolling_restart() -> str:
        if not wait_until(lambda: executing(farm), stop=stop):
            return "no action seen running"
        took = []
        for host in ("srvA", "srvB"):
            t = time.monotonic()
            os.killpg(farm.procs[host].pid, signal.SIGTERM)
            farm.wait_exit(host)
            took.append(f"{host} drained in {time.monotonic() - t:.0f} s")
            farm.start_server(host)
            time.sleep(2)
        return "SIGTERM + restart, one host at a time: " + ", ".join(took)

    def nothing() -> str:
        return "no fault"

    return {
        "baseline": nothing, "server-kill-upload": server_kill_upload, "server-kill-execute": server_kill_execute,
        "worker-kill": worker_kill, "worker-partition": worker_partition, "worker-drop": worker_drop,
        "redis-restart": redis_restart, "s3-faults": s3_faults, "postgres-restart": postgres_restart,
        "rolling-restart": rolling_restart,
    }[name]


@dataclass
class Row:
    scenario: str
    build: str
    identical: str
    lost: str
    differing: str
    rss: str
    fault: str = ""
    detail: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        clear_failure = self.build.startswith("failed:")
        return ((self.build.startswith("ok") and self.identical == "yes") or clear_failure) \
            and self.lost == "0" and self.differing == "0"


def first_error(text: str) -> str:
    """Bazel's first ERROR line, without the workspace path, cut before its command line."""
    for line in text.splitlines():
        if line.startswith("ERROR:") and "Build did NOT complete" not in line:
            line = re.sub(r"^\S*/BUILD:\d+:\d+: ", "", line[6:].strip())
            return line.split(": error executing command")[0][:110]
    return text.strip().splitlines()[-1][:150] if text.strip() else "no output"


def run_scenario(name: str, farm: Farm, base: Path) -> Row:
    log(f"scenario {name}")
    salt = f"{name}-{uuid.uuid4().hex[:8]}"
    ws = base / name / "ws"
    inputs = make_workspace(ws, salt)
    local = bazel(None, ws, base / name / "local", "build", "--spawn_strategy=local", "--genrule_strategy=local",
                  "--jobs=12", "//...")
    if local.returncode != 0:
        raise RuntimeError(f"local reference build failed: {local.stderr[-2000:]}")
    reference = hash_outputs(base / name / "local" / "base" / "execroot" / "cluster" / "bazel-out" / "k8-fastbuild"
                             / "bin")
    disk_mount: Path | None = None
    if name == "disk-full":
        # w3's CAS cache and work dir on a 20 MiB filesystem that one input (6 MiB) and its outputs fill
        disk_mount = base / "w3-small"
        kill_host("w3")
        farm.wait_exit("w3")
        farm.tmpfs(disk_mount, "20m")
        farm.start_worker("w3", disk_mount / "cas")
        fault = fault_for("baseline", farm, threading.Event())
        fault_text = "w3's cache/work filesystem: a 20 MiB tmpfs"
    stop = threading.Event()
    rss = RssSampler(("srvA", "srvB", *WORKERS))
    done: dict[str, str] = {}
    if name != "disk-full":
        fault = fault_for(name, farm, stop)
    ended: dict[str, float] = {}

    def apply() -> None:
        done["fault"] = fault()
        ended["at"] = time.monotonic()

    worker = threading.Thread(target=apply, daemon=True)
    worker.start()
    invocation = str(uuid.uuid4())
    t0 = time.monotonic()
    remote = bazel("client", ws, base / name / "remote", "build", *remote_flags(invocation), "//...")
    t1 = time.monotonic()
    seconds = t1 - t0
    stop.set()
    worker.join(180)
    if ended.get("at", 0) > t1 + 1 and name not in ("baseline", "disk-full", "s3-faults"):
        done["fault"] = done.get("fault", "") + f" (healed {ended['at'] - t1:.0f} s after the build ended)"
    peak = rss.stop()
    if name == "disk-full":
        done["fault"] = fault_text
        if disk_mount is not None:
            kill_host("w3")
            farm.wait_exit("w3")
            farm.umount(disk_mount)
            farm.start_worker("w3")
    (base / name / "bazel.log").write_text(remote.stdout + remote.stderr)
    if remote.returncode == 0:
        build = f"ok ({seconds:.0f} s)"
        got = hash_outputs(base / name / "remote" / "base" / "execroot" / "cluster" / "bazel-out"
                           / "k8-fastbuild" / "bin")
        identical = "yes" if got == reference and reference else \
            f"NO ({len(set(got.items()) ^ set(reference.items()))} differ)"
    else:
        build = f"failed: {first_error(remote.stderr)}"
        identical = "n/a"
    time.sleep(8 if name.startswith("worker-") else 2)  # a partitioned worker reports its result late
    try:
        a = audit(invocation, inputs)
        lost, differing = str(len(a.lost)), str(len(a.differing))
        detail = [f"{a.completed} acknowledged results", *a.lost[:10], *a.differing[:10]]
    except Exception as e:  # noqa: BLE001 - an audit that cannot run is reported, not hidden
        lost = differing = f"audit failed: {e}"[:60]
        detail = []
    servers = max(peak.get("srvA", 0), peak.get("srvB", 0)) >> 20
    workers = max((peak.get(w, 0) for w in WORKERS), default=0) >> 20
    row = Row(name, build, identical, lost, differing, f"server {servers} / worker {workers} MiB",
              done.get("fault", "fault did not finish"), detail)
    log(f"  {row.fault}\n  {row.build} | identical {row.identical} | lost {row.lost} | differing {row.differing}"
        f" | {row.rss} | {'; '.join(detail)}")
    return row


def table(rows: list[Row]) -> str:
    head = ("scenario", "build result", "outputs identical", "lost blobs/results", "duplicate differing results",
            "peak RSS")
    cells = [head, *[(r.scenario, r.build, r.identical, r.lost, r.differing, r.rss) for r in rows]]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = ["| " + " | ".join(c[i].ljust(widths[i]) for i in range(len(head))) + " |" for c in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines.append("")
    lines += [f"- {r.scenario}: {r.fault}" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", help=f"comma-separated, from: {', '.join(SCENARIOS)}")
    parser.add_argument("--short", action="store_true", help=f"only {', '.join(SHORT)}")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs) after the run")
    args = parser.parse_args(argv)
    names = args.scenarios.split(",") if args.scenarios else list(SHORT if args.short else SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios {unknown}; known: {', '.join(SCENARIOS)}")
    why = netns_available()
    if why:
        print(f"cluster: cannot build the farm here: {why}", file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="granary-cluster-"))
    os.chmod(base, 0o755)
    farm: Farm | None = None

    def cleanup() -> None:
        nonlocal farm
        if farm is not None:  # a Farm that failed to start has cleaned up after itself
            farm.close()
            farm = None
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)

    atexit.register(cleanup)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, f: sys.exit(128 + s))
    rows: list[Row] = []
    try:
        log(f"farm in {base}")
        farm = Farm(base)
        for name in names:
            rows.append(run_scenario(name, farm, base))
    finally:
        if rows:
            print(table(rows), flush=True)
        cleanup()
    return 0 if all(r.passed for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
