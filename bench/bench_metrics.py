"""What metrics (and request logs) cost per request: GetActionResult with them on and off.

Issue 9 found gRPC's per-call cost to dominate Bazel builds, so observability must stay cheap. Two
measurements, both printed:

1. In-process, precise: the Python path the request interceptor adds to one unary call
   (intercept_service, the wrapped deserializer, handler and serializer, the metrics writes into
   prometheus_client's multiprocess files), against the same call without it; median of --rounds.
2. End to end, real servers: three `granary serve` processes (one server process each, disk stores):
   `off` (http.enabled: false: no interceptor at all), `metrics` (the default) and `metrics+logs`
   (--log-level info: one log line per call). A grpcio client with 8 threads sends GetActionResult
   hits to each in turn, interleaved over --rounds; printed are requests/s and the server's CPU per
   request (from /proc/PID/stat), medians, and the difference to `off`.

    PYTHONPATH=src python3 bench/bench_metrics.py --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
GAR = "/build.bazel.remote.execution.v2.ActionCache/GetActionResult"
LISTEN_RE = re.compile(r"grpc://([0-9.]+):(\d+)")
CONFIG = """
storage: {main: {type: disk, path: cas}}
action_caches: {main: {type: disk, path: ac}}
instances: {"*": {cas: main, action_cache: main}}
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---- 1. the interceptor in process --------------------------------------------------------------


class Details:
    method = GAR
    invocation_metadata = ()


class FakeContext:
    def code(self):
        return None

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    def invocation_metadata(self):
        return ()


def interceptor_cost(calls: int, rounds: int) -> tuple[float, float]:
    """(us per call without the interceptor, with it); metrics in multiprocess mode, logs off."""
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="bench-metrics-")
    import grpc

    from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
    from granary.observability import metrics
    from granary.observability.interceptor import InstanceLabels, RequestObserver

    request = re_pb2.GetActionResultRequest(action_digest=re_pb2.Digest(hash="a" * 64, size_bytes=1))
    raw = request.SerializeToString()
    result = re_pb2.ActionResult(exit_code=0, stdout_raw=b"x" * 100)

    async def behavior(req, context):
        return result

    handler = grpc.unary_unary_rpc_method_handler(
        behavior, request_deserializer=re_pb2.GetActionResultRequest.FromString,
        response_serializer=re_pb2.ActionResult.SerializeToString)
    observer = RequestObserver(InstanceLabels([""], True, 100), metrics, logging_on=False)
    details = Details()
    context = FakeContext()

    async def continuation(_details):
        return handler

    async def plain() -> None:
        h = await continuation(details)
        h.response_serializer(await h.unary_unary(h.request_deserializer(raw), context))

    async def observed() -> None:
        h = await observer.intercept_service(continuation, details)
        h.response_serializer(await h.unary_unary(h.request_deserializer(raw), context))

    async def run(fn) -> float:
        loop = asyncio.get_running_loop()
        start = time.process_time()  # this process's CPU: other processes' load does not count
        for _ in range(calls):
            await loop.create_task(fn())  # a task per call, as grpc.aio runs them
        return (time.process_time() - start) / calls * 1e6

    async def main() -> tuple[float, float]:
        await run(plain)
        await run(observed)
        base, with_obs = [], []
        for _ in range(rounds * 3):
            base.append(await run(plain))
            with_obs.append(await run(observed))
        return statistics.median(base), statistics.median(with_obs)

    return asyncio.run(main())


# ---- 2. real servers --------------------------------------------------------------------------


class Server:
    def __init__(self, name: str, root: Path, config: str, *args: str):
        self.name = name
        root.mkdir(parents=True)
        (root / "granary.yaml").write_text(config)
        cmd = [sys.executable, "-m", "granary", "serve", "--listen", "127.0.0.1:0", "--data-dir", str(root / "data"),
               "--processes", "1", "--config", str(root / "granary.yaml"), *args]
        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        self.log = open(root / "server.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, env=env)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        m = LISTEN_RE.search(line)
        if not m:
            raise RuntimeError(f"{name}: granary serve did not start: {line}")
        self.address = f"{m.group(1)}:{m.group(2)}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)
        self.log.close()


def load(server: Server, calls: int, threads: int) -> tuple[float, float]:
    """(requests/s, server CPU us per request) for `calls` GetActionResult hits from `threads` threads."""
    import grpc

    from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
    from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc

    channel = grpc.insecure_channel(server.address)
    ac = re_grpc.ActionCacheStub(channel)
    action = re_pb2.Digest(hash="a" * 64, size_bytes=1)
    ac.UpdateActionResult(re_pb2.UpdateActionResultRequest(
        action_digest=action, action_result=re_pb2.ActionResult(exit_code=0, stdout_raw=b"x" * 100)))
    request = re_pb2.GetActionResultRequest(action_digest=action, inline_stdout=True)
    for _ in range(200):
        ac.GetActionResult(request)

    def work(n: int) -> None:
        for _ in range(n):
            ac.GetActionResult(request)

    c0, t0 = cpu_seconds(server.proc.pid), time.perf_counter()
    pool = [threading.Thread(target=work, args=(calls // threads,)) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    seconds, cpu = time.perf_counter() - t0, cpu_seconds(server.proc.pid) - c0
    channel.close()
    done = calls // threads * threads
    return done / seconds, cpu / done * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=3000, help="GetActionResult calls per server per round")
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()

    base, observed = interceptor_cost(10_000, args.rounds)
    print(f"in process: one unary call {base:.1f} us without the interceptor, {observed:.1f} us with it"
          f" (metrics on, logs off): +{observed - base:.1f} us per call")

    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp:
        root = Path(tmp)
        servers = [
            Server("off", root / "off", CONFIG + "http: {enabled: false}\n"),
            Server("metrics", root / "metrics", CONFIG),
            Server("metrics+logs", root / "logs", CONFIG, "--log-level", "info"),
        ]
        try:
            results: dict[str, list[tuple[float, float]]] = {s.name: [] for s in servers}
            for r in range(args.rounds):
                order = servers[r % len(servers):] + servers[:r % len(servers)]
                for server in order:
                    results[server.name].append(load(server, args.calls, args.threads))
        finally:
            for s in servers:
                s.stop()
    off_cpu = statistics.median(v[1] for v in results["off"])
    off_rps = statistics.median(v[0] for v in results["off"])
    print(f"\nGetActionResult hits, {args.threads} client threads, {args.calls} calls x {args.rounds} rounds"
          " (medians; the machine is noisy: compare within one run)")
    print(f"{'server':14} {'requests/s':>11} {'vs off':>8} {'server CPU us/req':>18} {'vs off':>8}")
    for name, values in results.items():
        rps = statistics.median(v[0] for v in values)
        cpu = statistics.median(v[1] for v in values)
        print(f"{name:14} {rps:11.0f} {(rps / off_rps - 1) * 100:+7.1f}% {cpu:18.0f} {cpu - off_cpu:+8.0f}")


if __name__ == "__main__":
    main()
