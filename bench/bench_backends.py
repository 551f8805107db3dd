"""Throughput of every CAS backend through the BlobStore interface.

Starts its own Redis, PostgreSQL, moto S3 server and a second `granary serve`
(the `remote` rows go through real gRPC to it), then prints per backend:
FindMissingBlobs digests/s (half present), small-blob (4 KiB) writes/s in
batches of 100, and large-blob MB/s written through a BlobWriter in 1 MiB
chunks and read back through read().

    python bench/bench_backends.py [--only NAME,NAME] [--large-mib 64]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from backend_fixtures import REMOTE_CONFIG, S3_BUCKET, S3_CREDENTIALS, StoreHarness, uniq
from serverutil import start_granary
from services import PostgresServer, RedisServer, S3Server

from granary import digest as dg
from granary.cas.blobstore import BlobStore
from granary.cas.tiered import TieredBlobStore

MiB = 1 << 20


def layouts(tmp: Path, redis_url: str, s3_endpoint: str, pg_url: str, remote: str) -> dict[str, dict]:
    def disk() -> dict:
        return {"type": "disk", "path": str(tmp / uniq("disk")), "max_size": "20GiB"}

    def redis() -> dict:
        return {"type": "redis", "url": redis_url, "prefix": uniq("b") + ":"}

    def s3() -> dict:
        return {"type": "s3", "bucket": S3_BUCKET, "endpoint_url": s3_endpoint, "create_bucket": True,
                "prefix": uniq("b") + "/", **S3_CREDENTIALS}

    return {
        "memory": {"type": "memory", "max_size": "4GiB"},
        "disk": disk(),
        "redis": redis(),
        "s3 (moto)": s3(),
        "remote (gRPC)": {"type": "remote", "address": remote},
        "tiered redis+s3": {"type": "tiered", "cache": redis(), "fallback": s3()},
        "tiered redis+s3 deferred": {"type": "tiered", "cache": redis(), "fallback": s3(),
                                     "defer_fallback_writes": True},
        "sizesplit mem/redis/disk": {"type": "sizesplit", "fallback": disk(), "stores": [
            {"max_size": "1KiB", "store": {"type": "memory"}}, {"max_size": "1MiB", "store": redis()}]},
        "sharded 3x disk": {"type": "sharded", "shards": [{"store": disk()} for _ in range(3)]},
        "indexed sqlite+disk": {"type": "indexed", "url": f"sqlite:///{tmp / uniq('i')}.sqlite", "store": disk()},
        "indexed postgres+redis": {"type": "indexed", "url": pg_url, "table": uniq("i"), "store": redis()},
    }


def make_blobs(n: int, size: int) -> list[tuple[dg.BlobDigest, bytes]]:
    out = []
    for _ in range(n):
        data = os.urandom(16) * (size // 16)
        out.append((dg.compute(dg.SHA256, data), data))
    return out


async def bench_one(store: BlobStore, slow: bool, large_mib: int) -> tuple[float, float, float, float]:
    n_small = 300 if slow else 3000
    small = make_blobs(n_small, 4096)
    t = time.perf_counter()
    for i in range(0, n_small, 100):
        await store.put_many(small[i : i + 100])
    writes = n_small / (time.perf_counter() - t)
    if isinstance(store, TieredBlobStore):
        await store.flush()

    n_fmb = 1000 if slow else 10_000
    query = [d for d, _ in small[: n_fmb // 2]] + [d for d, _ in make_blobs(n_fmb - min(n_fmb // 2, n_small), 64)]
    rounds = 2 if slow else 5
    t = time.perf_counter()
    for _ in range(rounds):
        for i in range(0, len(query), 10_000):
            await store.find_missing(query[i : i + 10_000])
    fmb = rounds * len(query) / (time.perf_counter() - t)

    size = (large_mib // 2 if slow else large_mib) * MiB
    data = os.urandom(MiB) * (size // MiB)
    d = dg.compute(dg.SHA256, data)
    t = time.perf_counter()
    w = await store.open_writer(d)
    for i in range(0, size, MiB):
        await w.write(data[i : i + MiB])
    await w.commit()
    if isinstance(store, TieredBlobStore):
        await store.flush()
    write_mbs = size / MiB / (time.perf_counter() - t)
    t = time.perf_counter()
    n = 0
    async for chunk in await store.read(d):
        n += len(chunk)
    read_mbs = size / MiB / (time.perf_counter() - t)
    assert n == size
    return fmb, writes, write_mbs, read_mbs


async def run_all(specs: dict[str, dict], tmp: Path, large_mib: int) -> None:
    print(f"{'backend':28} {'FMB digests/s':>14} {'4KiB writes/s':>14} {'large write MB/s':>17}"
          f" {'large read MB/s':>16}", flush=True)
    for name, spec in specs.items():
        h = StoreHarness(tmp)
        try:
            store = h.blob_store(spec)
            fmb, writes, wmb, rmb = await bench_one(store, "s3" in name, large_mib)
            print(f"{name:28} {fmb:14,.0f} {writes:14,.0f} {wmb:17,.0f} {rmb:16,.0f}", flush=True)
        except Exception as e:  # noqa: BLE001 - report and go on with the others
            print(f"{name:28} failed: {type(e).__name__}: {e}", flush=True)
        finally:
            await h.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", help="comma-separated backend names (default: all)")
    ap.add_argument("--large-mib", type=int, default=64)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="granary-bench-"))
    redis, s3, pg = RedisServer(), S3Server(), PostgresServer()
    remote = start_granary(tmp / "remote", REMOTE_CONFIG.replace("max_batch_size: 1MiB", "max_batch_size: 4MiB"))
    try:
        specs = layouts(tmp, redis.url, s3.endpoint, pg.url, remote.url)
        if args.only:
            wanted = set(args.only.split(","))
            specs = {k: v for k, v in specs.items() if k in wanted}
        asyncio.run(run_all(specs, tmp, args.large_mib))
    finally:
        remote.stop()
        for server in (redis, s3, pg):
            server.stop()


if __name__ == "__main__":
    main()
