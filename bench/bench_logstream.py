"""LogStream benchmark: how fast live output goes through Granary, and what a slow reader costs.

Starts two `granary serve` (one process each) on one queue database (SQLite by default, or
--database postgresql+psycopg://...), like two hosts, and measures over real gRPC:

  write        one writer appends --mib MiB to a stream (CreateLogStream) in 64 KiB requests:
               MB/s and requests/s; then --lines 1 KiB lines one request each: lines/s
  slow reader  a fast writer appends --mib MiB while a reader on the same server follows the
               stream with --delay ms of sleep after each ReadResponse: writer and reader MB/s,
               the reader's lag (bytes behind the writer: median and max, sampled at each
               response) and how long the reader needs after the writer finished
  latency      a line written every 50 ms, read by a follower on the writer's server (woken by
               the write) and by one on the other server (which polls the database every
               execution.logstream.poll_interval): median and p95 delay from Write to Read

    python3 bench/bench_logstream.py                   # short run (~20 s)
    python3 bench/bench_logstream.py --mib 128 --delay 20
    python3 bench/bench_logstream.py --database postgresql+psycopg://postgres@127.0.0.1:5432/bench
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from granary._proto.build.bazel.remote.logstream.v1 import remote_logstream_pb2 as ls_pb2
from granary._proto.build.bazel.remote.logstream.v1 import remote_logstream_pb2_grpc as ls_grpc
from granary._proto.google.bytestream import bytestream_pb2 as bs_pb2
from granary._proto.google.bytestream import bytestream_pb2_grpc as bs_grpc

MiB = 1 << 20
REQUEST = 64 << 10


def start(data: Path, database: str, poll: float) -> tuple[subprocess.Popen, str]:
    config = data / "granary.yaml"
    data.mkdir(parents=True, exist_ok=True)
    config.write_text(f"""
storage: {{main: {{type: disk, path: cas}}}}
instances: {{"": {{cas: main}}}}
execution:
  database: {database}
  local_workers: 0
  logstream: {{max_stream_bytes: 4GiB, max_total_bytes: 16GiB, retention: 10m, poll_interval: {poll}}}
http: {{enabled: false}}
""")
    cmd = [sys.executable, "-m", "granary", "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data),
           "--processes", "1", "--config", str(config)]
    env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src")}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True, env=env)
    assert proc.stdout is not None
    for raw in proc.stdout:
        m = re.search(r"grpc://([0-9.]+:\d+)", raw.decode(errors="replace"))
        if m:
            return proc, m.group(1)
    raise SystemExit(f"granary serve did not start (exit {proc.wait()})")


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


class Client:
    def __init__(self, address: str):
        self.channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 * MiB)])
        self.bs = bs_grpc.ByteStreamStub(self.channel)
        self.ls = ls_grpc.LogStreamServiceStub(self.channel)

    def create(self) -> ls_pb2.LogStream:
        return self.ls.CreateLogStream(ls_pb2.CreateLogStreamRequest(parent=""))


def write_requests(name: str, pieces, progress: list[int] | None = None, pause: float = 0.0):
    """WriteRequests for `pieces`, the last one finishing the stream; progress[0]: bytes handed over."""
    at = 0
    pieces = list(pieces)
    for i, data in enumerate(pieces):
        yield bs_pb2.WriteRequest(resource_name=name if i == 0 else "", write_offset=at, data=data,
                                  finish_write=i == len(pieces) - 1)
        at += len(data)
        if progress is not None:
            progress[0] = at
        if pause:
            time.sleep(pause)


def bench_write(client: Client, mib: int, lines: int) -> None:
    stream = client.create()
    blob = os.urandom(REQUEST)
    n = mib * MiB // REQUEST
    t0 = time.perf_counter()
    committed = client.bs.Write(write_requests(stream.write_resource_name, [blob] * n)).committed_size
    dt = time.perf_counter() - t0
    assert committed == n * REQUEST
    print(f"write        {mib} MiB in 64 KiB requests: {committed / dt / 1e6:7.1f} MB/s, {n / dt:7.0f} requests/s")
    stream = client.create()
    line = b"x" * 1023 + b"\n"
    t0 = time.perf_counter()
    client.bs.Write(write_requests(stream.write_resource_name, [line] * lines))
    dt = time.perf_counter() - t0
    print(f"write        {lines} lines of 1 KiB, one request each: {lines / dt:7.0f} lines/s")


def bench_slow_reader(writer: Client, reader: Client, mib: int, delay: float) -> None:
    stream = writer.create()
    blob = os.urandom(REQUEST)
    n = mib * MiB // REQUEST
    written = [0]
    lags: list[int] = []
    got = [0]
    times: dict[str, float] = {}

    def read() -> None:
        for r in reader.bs.Read(bs_pb2.ReadRequest(resource_name=stream.name), timeout=600):
            got[0] += len(r.data)
            lags.append(written[0] - got[0])
            if delay:
                time.sleep(delay)
        times["read"] = time.perf_counter()

    t = threading.Thread(target=read)
    t0 = time.perf_counter()
    t.start()
    writer.bs.Write(write_requests(stream.write_resource_name, [blob] * n, written))
    times["write"] = time.perf_counter()
    t.join()
    assert got[0] == n * REQUEST, (got[0], n * REQUEST)
    w, r = times["write"] - t0, times["read"] - t0
    print(f"slow reader  {mib} MiB, reader sleeps {delay * 1000:g} ms per response ({len(lags)} responses):")
    print(f"             writer {n * REQUEST / w / 1e6:7.1f} MB/s, reader {got[0] / r / 1e6:7.1f} MB/s;"
          f" lag median {statistics.median(lags) / MiB:.1f} MiB, max {max(lags) / MiB:.1f} MiB;"
          f" reader done {r - w:.2f} s after the writer")


def bench_latency(writer: Client, same: Client, other: Client, count: int) -> None:
    stream = writer.create()
    sent: list[float] = []
    arrivals: dict[str, list[float]] = {"same server": [], "other server": []}
    ready = threading.Barrier(3)

    def follow(client: Client, key: str) -> None:
        call = client.bs.Read(bs_pb2.ReadRequest(resource_name=stream.name), timeout=120)
        ready.wait()
        buf = b""
        for r in call:
            now = time.perf_counter()
            buf += r.data
            while b"\n" in buf:
                _, buf = buf.split(b"\n", 1)
                arrivals[key].append(now)

    # the stream must exist and be followed before the first line
    writer.bs.Write(iter([bs_pb2.WriteRequest(resource_name=stream.write_resource_name, write_offset=0)]))
    threads = [threading.Thread(target=follow, args=(c, k)) for c, k in ((same, "same server"), (other, "other server"))]
    for t in threads:
        t.start()
    ready.wait()
    time.sleep(0.3)
    at = 0
    for i in range(count):
        line = b"line %04d\n" % i
        sent.append(time.perf_counter())
        writer.bs.Write(iter([bs_pb2.WriteRequest(resource_name=stream.write_resource_name, write_offset=at,
                                                  data=line, finish_write=i == count - 1)]))
        at += len(line)
        time.sleep(0.05)
    for t in threads:
        t.join()
    for key, got in arrivals.items():
        delays = sorted((g - s) * 1000 for g, s in zip(got, sent))
        p95 = delays[int(len(delays) * 0.95) - 1]
        print(f"latency      {key:12s}: median {statistics.median(delays):6.1f} ms, p95 {p95:6.1f} ms"
              f" ({len(delays)} lines)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=32, help="MiB written by the throughput runs (default 32)")
    ap.add_argument("--lines", type=int, default=2000, help="1 KiB lines written one request each (default 2000)")
    ap.add_argument("--delay", type=float, default=5.0, help="ms the slow reader sleeps per response (default 5)")
    ap.add_argument("--poll", type=float, default=0.2, help="execution.logstream.poll_interval, s (default 0.2)")
    ap.add_argument("--database", default="", help="queue database URL (default: a fresh SQLite file)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="granary-bench-logstream-") as tmp:
        database = args.database or f"sqlite:///{Path(tmp) / 'queue.sqlite'}"
        a, addr_a = start(Path(tmp) / "a", database, args.poll)
        b, addr_b = start(Path(tmp) / "b", database, args.poll)
        try:
            print(f"granary serve x2 on {database.split('://')[0]}, poll_interval {args.poll:g} s")
            ca, ca2, cb = Client(addr_a), Client(addr_a), Client(addr_b)
            bench_write(ca, args.mib, args.lines)
            bench_slow_reader(ca, ca2, args.mib, args.delay / 1000)
            bench_latency(ca, ca2, cb, 60)
        finally:
            stop(a)
            stop(b)


if __name__ == "__main__":
    main()
