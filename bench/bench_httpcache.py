"""HTTP cache (bazel-remote protocol, http.cache) throughput against the same work over gRPC.

Starts one `granary serve` (one process, disk CAS and Action Cache, http.cache on) and, per
size, uploads fresh random blobs and reads them back both ways, sequentially from one client
connection each (keep-alive HTTP/1.1 with http.client; gRPC ByteStream Write/Read, as Bazel
4.2.3 moves every blob, even small ones):

- small: --small-count blobs of 4 KiB (calls per second; per-call cost dominates)
- large: --large-count blobs of 100 MiB (MiB per second; streaming and hashing dominate)

    PYTHONPATH=src python3 bench/bench_httpcache.py            # short default run (< 1 min)
    PYTHONPATH=src python3 bench/bench_httpcache.py --small-count 2000 --large-count 3

Both paths hash every upload before it becomes readable, and an HTTP PUT of a blob with a known
Content-Length streams through the same ByteStream Write code. An HTTP PUT /cas/ also writes one
small index record (the blob's size, for GETs by hash alone; docs/http-cache.md), which gRPC does
not need.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from obsutil import http_url
from reapi import Client, digest
from serverutil import start_granary

MiB = 1 << 20
CONFIG = """\
storage:
  main: {type: disk, path: cas, max_size: 8GiB}
action_caches:
  ac: {type: disk, path: ac}
instances:
  "*": {cas: main, action_cache: ac}
http:
  cache: {enabled: true, max_entry_size: 1GiB}
"""


class Http:
    def __init__(self, base: str):
        u = urlsplit(base)
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)

    def put(self, data: bytes) -> None:
        self.conn.request("PUT", f"/cas/{hashlib.sha256(data).hexdigest()}", body=data)
        r = self.conn.getresponse()
        r.read()
        assert r.status == 200, r.status

    def get(self, data_hash: str) -> int:
        self.conn.request("GET", f"/cas/{data_hash}")
        r = self.conn.getresponse()
        n = 0
        while True:
            block = r.read(MiB)
            if not block:
                break
            n += len(block)
        assert r.status == 200, r.status
        return n


def _blobs(count: int, size: int) -> list[bytes]:
    if size <= 64 << 10:
        return [os.urandom(size) for _ in range(count)]
    base = os.urandom(size)  # large: one random body, each made unique by its first bytes
    return [os.urandom(16) + base[16:] for _ in range(count)]


def _timed(fn, items) -> float:
    start = time.perf_counter()
    for item in items:
        fn(item)
    return time.perf_counter() - start


def run(label: str, size: int, count: int, rounds: int, base: str, address: str) -> None:
    results: dict[str, list[float]] = {k: [] for k in ("http put", "http get", "grpc put", "grpc get")}
    for _ in range(rounds):
        h = Http(base)
        c = Client(address)
        try:
            for way in ("http", "grpc"):
                blobs = _blobs(count, size)
                hashes = [hashlib.sha256(b).hexdigest() for b in blobs]
                if way == "http":
                    put = _timed(h.put, blobs)
                    get = _timed(h.get, hashes)
                else:
                    digests = [digest(b) for b in blobs]
                    put = _timed(c.bs_write, blobs)
                    get = _timed(c.bs_read, digests)
                results[f"{way} put"].append(put)
                results[f"{way} get"].append(get)
                del blobs
        finally:
            h.conn.close()
            c.close()
    for name, times in results.items():
        t = statistics.median(times)
        if size < MiB:
            print(f"{label:>8} {name:9}: {count / t:9.0f} calls/s  ({t / count * 1e6:7.0f} us/call)")
        else:
            print(f"{label:>8} {name:9}: {count * size / MiB / t:9.0f} MiB/s  ({t / count:6.2f} s/blob)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small-count", type=int, default=500)
    p.add_argument("--large-count", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="repeat each measurement; the median is shown")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-httpcache-") as tmp:
        server = start_granary(Path(tmp), CONFIG)
        try:
            base = http_url(server)
            run("4 KiB", 4096, args.small_count, args.rounds, base, server.address)
            run("100 MiB", 100 * MiB, args.large_count, args.rounds, base, server.address)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
