"""Remote Asset FetchBlob: download throughput, and cached FetchBlob calls per second.

Starts a real `granary serve` (one process, disk CAS, SQLite records under a temporary data dir)
and a local HTTP origin (tests/assetutil.Origin, http.server in a thread of this process), then:

1. downloads --rounds files of --size MiB each (random, and different every round so the CAS
   really stores each one), each with its checksum.sri, and prints MB/s per round and the median;
2. asks for one already-fetched file again and again (answered from the SQL record after checking
   the CAS) for --seconds, sequentially and from --threads threads, and prints calls per second.

    PYTHONPATH=src python3 bench/bench_asset.py                # ~20 s
    PYTHONPATH=src python3 bench/bench_asset.py --size 512 --rounds 5 --seconds 10
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "src"), str(REPO / "tests")]

from assetutil import AssetClient, Origin, sri
from serverutil import start_granary

CONFIG = """\
storage:
  main: {{type: disk, path: cas, max_size: {cas_size}}}
instances:
  "": {{cas: main}}
remote_asset:
  allowed_hosts: ["127.0.0.1"]
  max_size: {max_size}
"""


def _cached_rate(address: str, uri: str, quals: dict[str, str], seconds: float, threads: int) -> float:
    calls = [0] * threads
    stop = time.monotonic() + seconds

    def loop(i: int) -> None:
        c = AssetClient(address)
        try:
            while time.monotonic() < stop:
                c.fetch_blob([uri], quals)
                calls[i] += 1
        finally:
            c.close()

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    start = time.monotonic()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(calls) / (time.monotonic() - start)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=128, help="MiB per downloaded file (default 128)")
    p.add_argument("--rounds", type=int, default=3, help="downloads (default 3)")
    p.add_argument("--seconds", type=float, default=4.0, help="seconds per cached-call measurement (default 4)")
    p.add_argument("--threads", type=int, default=4, help="client threads of the concurrent cached run")
    args = p.parse_args()

    size = args.size << 20
    base = os.urandom(size)
    files = {f"/file-{i}.bin": i.to_bytes(16, "big") + base[16:] for i in range(args.rounds)}
    cfg = CONFIG.format(cas_size=(args.rounds + 2) * size, max_size=size + 1)
    with (
        tempfile.TemporaryDirectory(prefix="granary-bench-asset-") as tmp,
        Origin(files) as origin,
        start_granary(Path(tmp), cfg) as g,
    ):
        c = AssetClient(g.address)
        rates = []
        for path, data in files.items():
            quals = {"checksum.sri": sri(data)}
            t0 = time.perf_counter()
            resp = c.fetch_blob([origin.url(path)], quals, rpc_timeout=600)
            dt = time.perf_counter() - t0
            assert resp.blob_digest.size_bytes == len(data)
            rates.append(len(data) / dt / 1e6)
            print(f"FetchBlob download {path}: {args.size} MiB in {dt:.2f} s = {rates[-1]:.0f} MB/s", flush=True)
        print(f"FetchBlob download: median {statistics.median(rates):.0f} MB/s over {len(rates)} rounds"
              f" ({args.size} MiB files, sha256 checksum.sri, disk CAS)")
        c.close()
        path, data = next(iter(files.items()))
        uri, quals = origin.url(path), {"checksum.sri": sri(data)}
        before = len(origin.requests)
        seq = _cached_rate(g.address, uri, quals, args.seconds, 1)
        par = _cached_rate(g.address, uri, quals, args.seconds, args.threads)
        assert len(origin.requests) == before, "a cached FetchBlob went to the origin"
        print(f"cached FetchBlob: {seq:.0f} calls/s sequential, {par:.0f} calls/s from {args.threads} threads")
    return 0


if __name__ == "__main__":
    sys.exit(main())
