"""What one small gRPC call costs the server: grpc.aio (what Granary runs) against grpclib.

Issue 9 asked whether Granary's gRPC layer should move to a pure-asyncio implementation
on the `h2` library. A Bazel warm rebuild is ~600 small calls (GetActionResult, ByteStream
Reads under 1 MiB) and the server's CPU per call decides, so this starts minimal servers
with the same two methods on each transport (an in-memory ActionResult, a 100-byte blob),
drives them from one grpcio client process (sequential, then 8 threads), interleaved over
--rounds, and prints the median p50 latency and the server CPU per call (from
/proc/PID/stat).

    pip install grpclib   # only for this benchmark
    python3 bench/bench_transport.py --rounds 3

Measured on the 2-core VM (2026-11-29), server CPU per GetActionResult: grpc.aio 507-543 us,
grpclib 0.4.9 837-887 us (uvloop or not); a gRPC layer written on h2 directly (one task and
one socket write per call, branch h2-transport-experiment) 627 us, of which h2's own framing
and HPACK are ~340 us per unary call. Granary therefore stays on grpc.aio.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GAR = "/build.bazel.remote.execution.v2.ActionCache/GetActionResult"
READ = "/google.bytestream.ByteStream/Read"

SERVER = r'''
import asyncio, os, sys
sys.path.insert(0, os.path.join(sys.argv[3], "src"))
from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re
from granary._proto.google.bytestream import bytestream_pb2 as bs
kind, port = sys.argv[1], int(sys.argv[2])
RESULT = re.ActionResult(exit_code=0, stdout_raw=b"x" * 100)
BLOB = b"y" * 100
if kind == "grpclib":
    from grpclib.const import Cardinality, Handler
    from grpclib.server import Server
    class Service:
        async def gar(self, stream):
            await stream.recv_message()
            await stream.send_message(RESULT)
        async def read(self, stream):
            await stream.recv_message()
            await stream.send_message(bs.ReadResponse(data=BLOB))
        def __mapping__(self):
            return {
                "%(GAR)s": Handler(self.gar, Cardinality.UNARY_UNARY, re.GetActionResultRequest, re.ActionResult),
                "%(READ)s": Handler(self.read, Cardinality.UNARY_STREAM, bs.ReadRequest, bs.ReadResponse),
            }
    async def main():
        server = Server([Service()])
        await server.start("127.0.0.1", port)
        print("ready", flush=True)
        await server.wait_closed()
else:
    import grpc
    async def gar(request, context):
        return RESULT
    async def read(request, context):
        yield bs.ReadResponse(data=BLOB)
    async def main():
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((
            grpc.method_handlers_generic_handler("build.bazel.remote.execution.v2.ActionCache", {
                "GetActionResult": grpc.unary_unary_rpc_method_handler(
                    gar, re.GetActionResultRequest.FromString, re.ActionResult.SerializeToString)}),
            grpc.method_handlers_generic_handler("google.bytestream.ByteStream", {
                "Read": grpc.unary_stream_rpc_method_handler(
                    read, bs.ReadRequest.FromString, bs.ReadResponse.SerializeToString)}),
        ))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        print("ready", flush=True)
        await server.wait_for_termination()
import uvloop
uvloop.run(main())
'''.replace("%(GAR)s", GAR).replace("%(READ)s", READ)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(kind: str, calls: int, threads: int) -> dict[str, tuple[float, float]]:
    import grpc

    sys.path.insert(0, str(REPO / "src"))
    from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re
    from granary._proto.google.bytestream import bytestream_pb2 as bs

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SERVER, kind, str(port), str(REPO)],
                            stdout=subprocess.PIPE, text=True)
    try:
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{kind} server did not start")
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        gar = channel.unary_unary(GAR, re.GetActionResultRequest.SerializeToString, re.ActionResult.FromString)
        read = channel.unary_stream(READ, bs.ReadRequest.SerializeToString, bs.ReadResponse.FromString)
        request = re.GetActionResultRequest(action_digest=re.Digest(hash="a" * 64, size_bytes=1))
        read_request = bs.ReadRequest(resource_name="blobs/" + "b" * 64 + "/100")
        ops = {
            "GetActionResult": lambda: gar(request),
            "Read 100 B": lambda: sum(len(r.data) for r in read(read_request)),
        }
        out = {}
        for name, op in ops.items():
            for _ in range(100):
                op()
            latencies: list[float] = []

            def work(n: int, op=op, latencies=latencies) -> None:
                for _ in range(n):
                    t = time.perf_counter()
                    op()
                    latencies.append(time.perf_counter() - t)

            c0 = cpu_seconds(proc.pid)
            pool = [threading.Thread(target=work, args=(calls // threads,)) for _ in range(threads)]
            for t in pool:
                t.start()
            for t in pool:
                t.join()
            c1 = cpu_seconds(proc.pid)
            out[name] = (statistics.median(latencies) * 1e6, (c1 - c0) / len(latencies) * 1e6)
        channel.close()
        return out
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    kinds = ["grpc.aio"]
    try:
        import grpclib  # noqa: F401

        kinds.append("grpclib")
    except ImportError:
        print("grpclib is not installed (pip install grpclib): measuring grpc.aio only")
    results: dict[tuple[str, str, int], list[tuple[float, float]]] = {}
    for r in range(args.rounds):
        for kind in kinds if r % 2 == 0 else kinds[::-1]:
            for threads in (1, 8):
                for op, value in measure(kind, args.calls, threads).items():
                    results.setdefault((kind, op, threads), []).append(value)
    print(f"\n{'transport':10} {'call':16} {'clients':>7} {'p50 us':>8} {'server CPU us/call':>19}")
    for (kind, op, threads), values in sorted(results.items()):
        p50 = statistics.median(v[0] for v in values)
        cpu = statistics.median(v[1] for v in values)
        print(f"{kind:10} {op:16} {threads:7d} {p50:8.0f} {cpu:19.0f}")


if __name__ == "__main__":
    main()
