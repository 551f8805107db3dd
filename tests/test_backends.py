"""The same BlobStore and ActionCacheStore tests against every backend and composition.

Real Redis, PostgreSQL, moto's S3 server and a second `granary serve` (for
the remote backends) are started by backend_fixtures.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time

import pytest
from backend_fixtures import *
from backend_fixtures import AC_LAYOUTS, CAS_LAYOUTS, Backends, StoreHarness, run, uniq

from granary import digest as dg
from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from granary.actioncache.actioncache import ActionCache
from granary.cas.blobstore import BlobStore
from granary.cas.cas import ContentAddressableStorage
from granary.cas.memory import MemoryBlobStore
from granary.cas.tiered import TieredBlobStore
from granary.digest import BlobDigest
from granary.errors import BlobNotFound, NotFound, ResourceExhausted

MiB = 1 << 20


def blob(n: int) -> bytes:
    seed = os.urandom(16)
    return (seed * (n // 16 + 1))[:n]


def dig(data: bytes, function: int = dg.SHA256) -> BlobDigest:
    return dg.compute(function, data)


async def read_all(store: BlobStore, d: BlobDigest, offset: int = 0, limit: int = 0) -> bytes:
    return b"".join([chunk async for chunk in await store.read(d, offset, limit)])


async def settle(store: BlobStore) -> None:
    """Let deferred fallback writes finish (no-op for other stores)."""
    if isinstance(store, TieredBlobStore):
        await store.flush()


@pytest.fixture(params=list(CAS_LAYOUTS))
def cas_layout(request, backends: Backends) -> dict:
    return CAS_LAYOUTS[request.param](backends)


@pytest.fixture(params=list(AC_LAYOUTS))
def ac_layout(request, backends: Backends) -> dict:
    return AC_LAYOUTS[request.param](backends)


# ---- BlobStore conformance ----------------------------------------------------


def test_find_missing_keeps_order_and_checks_size(cas_layout, tmp_path):
    async def scenario(h: StoreHarness) -> None:
        store = h.blob_store(cas_layout)
        present = [blob(100 + i) for i in range(5)]
        await store.put_many([(dig(b), b) for b in present])
        absent = [dig(blob(50)) for _ in range(3)]
        query = [absent[0], dig(present[0]), absent[1], dig(present[3]), absent[2]]
        assert await store.find_missing(query) == [absent[0], absent[1], absent[2]]
        wrong_size = BlobDigest(dg.SHA256, dig(present[1]).hash, len(present[1]) + 1)
        assert await store.find_missing([wrong_size]) == [wrong_size]
        assert await store.find_missing([]) == []
        many = [blob(40) for _ in range(3000)]
        await store.put_many([(dig(b), b) for b in many[:1000]])
        assert await store.find_missing([dig(b) for b in many]) == [dig(b) for b in many[1000:]]

    run(tmp_path, scenario)


def test_put_get_many_and_single(cas_layout, tmp_path):
    async def scenario(h: StoreHarness) -> None:
        store = h.blob_store(cas_layout)
        blobs = {dig(b): b for b in (blob(1), blob(700), blob(5000), blob(300_000))}
        await store.put_many(list(blobs.items()))
        await store.put_many(list(blobs.items()))  # idempotent
        got = await store.get_many(list(blobs) + [dig(blob(10))])
        assert got == blobs
        d, data = next(iter(blobs.items()))
        assert await store.get(d) == data
        assert await store.has(d)
        with pytest.raises(BlobNotFound):
            await store.get(dig(blob(33)))
        b3 = b"blake3 blob " * 10
        d3 = dig(b3, dg.BLAKE3)
        await store.put_many([(d3, b3)])
        assert await store.get(d3) == b3
        assert await store.find_missing([d3]) == []

    run(tmp_path, scenario)


def test_streaming_read_with_offset_and_limit(cas_layout, tmp_path):
    async def scenario(h: StoreHarness) -> None:
        store = h.blob_store(cas_layout)
        data = blob(3 * MiB + 5)
        d = dig(data)
        await store.put_many([(d, data)])
        assert await read_all(store, d) == data
        assert await read_all(store, d, MiB + 3, 100) == data[MiB + 3 : MiB + 103]
        assert await read_all(store, d, len(data) - 10) == data[-10:]
        assert await read_all(store, d, 7, len(data) * 2) == data[7:]
        assert await read_all(store, d, 0, 1) == data[:1]
        with pytest.raises(BlobNotFound):
            await store.read(dig(blob(99)))  # raised before any chunk is asked for

    run(tmp_path, scenario)


def test_writer_commit_makes_visible_and_abort_leaves_nothing(cas_layout, tmp_path):
    async def scenario(h: StoreHarness) -> None:
        store = h.blob_store(cas_layout)
        for size in (10, 200_000, 3 * MiB):
            data = blob(size)
            d = dig(data)
            w = await store.open_writer(d)
            for start in range(0, size, 64 * 1024):
                await w.write(data[start : start + 64 * 1024])
            assert await store.find_missing([d]) == [d]
            await w.commit()
            await settle(store)
            assert await store.find_missing([d]) == []
            assert await read_all(store, d) == data

            other = blob(size)
            od = dig(other)
            w = await store.open_writer(od)
            await w.write(other[: size // 2])
            await w.abort()
            await settle(store)
            assert await store.find_missing([od]) == [od]
            assert od not in await store.get_many([od])
            with pytest.raises(BlobNotFound):
                await store.read(od)

    run(tmp_path, scenario)


def test_large_blob_streams_through_writer_and_reader(cas_layout, tmp_path):
    async def scenario(h: StoreHarness) -> None:
        store = h.blob_store(cas_layout)
        size = 17 * MiB + 123  # several 8 MiB multipart parts on S3
        data = blob(size)
        d = dig(data)
        w = await store.open_writer(d)
        for start in range(0, size, MiB):
            await w.write(data[start : start + MiB])
        await w.commit()
        await settle(store)
        h_out = hashlib.sha256()
        largest = 0
        async for chunk in await store.read(d):
            h_out.update(chunk)
            largest = max(largest, len(chunk))
        assert h_out.hexdigest() == d.hash
        assert largest <= 4 * MiB  # streamed, not handed over whole
        assert await read_all(store, d, 9 * MiB - 1, 2) == data[9 * MiB - 1 : 9 * MiB + 1]

    run(tmp_path, scenario)


def test_delete_and_iterate(cas_layout, tmp_path):
    async def scenario(h: StoreHarness) -> None:
        store = h.blob_store(cas_layout)
        blobs = [blob(100 + i) for i in range(4)] + [blob(2 * MiB)]
        digests = [dig(b) for b in blobs]
        await store.put_many(list(zip(digests, blobs)))
        await settle(store)
        if store.supports_listing:
            listed = {info.digest.key: info for info in [i async for i in store.iterate()]}
            for d in digests:
                assert listed[d.key].digest.size == d.size
                assert listed[d.key].atime > time.time() - 3600
        if not store.supports_delete:
            pytest.skip(f"{store.name} cannot delete (REAPI has no delete)")
        await store.delete(digests[:2] + [dig(blob(5))])
        assert await store.find_missing(digests) == digests[:2]
        assert set(await store.get_many(digests)) == set(digests[2:])

    run(tmp_path, scenario)


# ---- backend-specific behaviour -------------------------------------------------


def test_redis_refuses_blobs_past_max_blob_size(backends, tmp_path):
    async def scenario(h: StoreHarness) -> None:
        store = h.blob_store(backends.redis(max_blob_size="1KiB"))
        big = blob(2000)
        with pytest.raises(ResourceExhausted, match="max_blob_size"):
            await store.put_many([(dig(big), big)])
        with pytest.raises(ResourceExhausted, match="max_blob_size"):
            await store.open_writer(dig(big))

    run(tmp_path, scenario)


def test_tiered_routes_blobs_the_cache_refuses_to_the_fallback(backends, tmp_path):
    async def scenario(h: StoreHarness) -> None:
        store = h.blob_store({"type": "tiered", "cache": backends.redis(max_blob_size="1KiB"),
                              "fallback": backends.s3()})
        assert isinstance(store, TieredBlobStore)
        small, big = blob(100), blob(3 * MiB)
        await store.put_many([(dig(small), small), (dig(big), big)])
        assert await store.cache.find_missing([dig(small), dig(big)]) == [dig(big)]
        assert await store.fallback.find_missing([dig(small), dig(big)]) == []
        assert await read_all(store, dig(big)) == big

    run(tmp_path, scenario)


def test_tiered_reads_fill_the_cache(backends, tmp_path):
    async def scenario(h: StoreHarness) -> None:
        store = h.blob_store({"type": "tiered", "cache": backends.redis(), "fallback": backends.s3()})
        assert isinstance(store, TieredBlobStore)
        small, large = blob(500), blob(5 * MiB)
        await store.fallback.put_many([(dig(small), small), (dig(large), large)])
        assert await store.cache.find_missing([dig(small), dig(large)]) == [dig(small), dig(large)]
        assert await store.find_missing([dig(small), dig(large)]) == []
        assert await store.get_many([dig(small)]) == {dig(small): small}
        # partial: verifying it fetches the whole blob from S3, which fills the cache on the way
        assert await read_all(store, dig(large), 10, 10) == large[10:20]
        assert await store.cache.find_missing([dig(small), dig(large)]) == []
        assert await read_all(store, dig(large)) == large

    run(tmp_path, scenario)


def test_tiered_deferred_writes_survive_a_burst_and_report_backlog(backends, tmp_path):
    async def scenario(h: StoreHarness) -> None:
        store = h.blob_store({
            "type": "tiered", "cache": backends.memory(), "fallback": backends.s3(),
            "defer_fallback_writes": True, "queue_max_blobs": 8, "queue_max_bytes": "64KiB",
            "queue_workers": 2,
        })
        assert isinstance(store, TieredBlobStore)
        blobs = [blob(4000 + i) for i in range(200)]
        backlog_seen = 0

        async def burst(part: list[bytes]) -> None:
            nonlocal backlog_seen
            for b in part:
                await store.put_many([(dig(b), b)])
                backlog_seen = max(backlog_seen, store.backlog)
                assert await store.find_missing([dig(b)]) == []  # visible at once, from the cache

        await asyncio.gather(*(burst(blobs[i::4]) for i in range(4)))
        assert 0 < backlog_seen <= 8 + 2 * 8  # bounded: the queue plus one batch per worker
        await store.flush()
        assert store.backlog == 0
        assert await store.fallback.find_missing([dig(b) for b in blobs]) == []
        assert store.queue is not None and store.queue.lost == 0

    run(tmp_path, scenario)


def test_sizesplit_routes_by_size(backends, tmp_path):
    async def scenario(h: StoreHarness) -> None:
        store = h.blob_store(CAS_LAYOUTS["sizesplit"](backends))
        tiny, mid, big = blob(500), blob(100_000), blob(3 * MiB)
        await store.put_many([(dig(b), b) for b in (tiny, mid, big)])
        memory, redis, s3 = store.stores  # type: ignore[attr-defined]
        assert await memory.find_missing([dig(tiny), dig(mid), dig(big)]) == [dig(mid), dig(big)]
        assert await redis.find_missing([dig(tiny), dig(mid), dig(big)]) == [dig(tiny), dig(big)]
        assert await s3.find_missing([dig(tiny), dig(mid), dig(big)]) == [dig(tiny), dig(mid)]

    run(tmp_path, scenario)


def test_sharded_spreads_by_weight_and_moves_little_when_a_shard_goes(tmp_path):
    from granary.cas.sharded import ShardedBlobStore

    stores = [MemoryBlobStore(1 << 30) for _ in range(3)]
    three = ShardedBlobStore([("a", 1, stores[0]), ("b", 2, stores[1]), ("c", 1, stores[2])])
    two = ShardedBlobStore([("a", 1, stores[0]), ("b", 2, stores[1])])
    keys = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(20_000)]
    counts = [0, 0, 0]
    moved = 0
    for k in keys:
        i = three.shard_index(k)
        counts[i] += 1
        if i != 2 and two.shard_index(k) != i:
            moved += 1
    assert 0.22 < counts[0] / len(keys) < 0.28
    assert 0.46 < counts[1] / len(keys) < 0.54
    assert moved == 0  # only shard c's blobs move when c is removed
    reordered = ShardedBlobStore([("c", 1, stores[2]), ("a", 1, stores[0]), ("b", 2, stores[1])])
    assert all(reordered.stores[reordered.shard_index(k)] is three.stores[three.shard_index(k)] for k in keys[:500])


def test_indexed_answers_find_missing_from_the_index_and_batches_access_times(backends, tmp_path):
    from granary.cas.indexed import IndexedBlobStore

    async def scenario(h: StoreHarness) -> None:
        store = h.blob_store({"type": "indexed", "url": backends.postgres_url(), "table": uniq("idx"),
                              "store": backends.redis()})
        assert isinstance(store, IndexedBlobStore)
        blobs = [blob(100 + i) for i in range(10)]
        digests = [dig(b) for b in blobs]
        await store.put_many(list(zip(digests, blobs)))
        assert await store.stored_bytes() == sum(len(b) for b in blobs)
        # the index, not the store, answers: a blob removed behind its back still "exists"
        await store.store.delete(digests[:1])
        assert await store.find_missing(digests) == []
        # ...until a read finds it gone, which drops it from the index
        with pytest.raises(BlobNotFound):
            await store.read(digests[0])
        assert await store.find_missing(digests) == digests[:1]
        # access times are remembered and written in one batch
        store.touch_interval = 0
        before = {k: a async for k, _, a in store.by_age()}
        await asyncio.sleep(1.1)
        await store.find_missing(digests[5:])
        await store.flush()
        after = {k: a async for k, _, a in store.by_age()}
        assert all(after[d.key] > before[d.key] for d in digests[5:])
        assert all(after[d.key] == before[d.key] for d in digests[1:5])
        order = [k async for k, _, _ in store.by_age()]
        assert set(order[:4]) == {d.key for d in digests[1:5]}  # least recently used first

    run(tmp_path, scenario)


def test_remote_store_splits_batches_by_the_remotes_limit(backends, tmp_path):
    from granary.cas.remote import RemoteBlobStore

    async def scenario(h: StoreHarness) -> None:
        store = h.blob_store(backends.remote(instance_name=uniq("inst")))
        assert isinstance(store, RemoteBlobStore)
        assert await store.batch_budget() == MiB  # the second server's max_batch_size
        blobs = [blob(300_000) for _ in range(10)] + [blob(2 * MiB)]
        await store.put_many([(dig(b), b) for b in blobs])  # 3 MB of batches + one ByteStream write
        got = await store.get_many([dig(b) for b in blobs])
        assert got == {dig(b): b for b in blobs}

    run(tmp_path, scenario)


# ---- Action Cache conformance ---------------------------------------------------


def ac_key(namespace: str = "") -> str:
    d = dig(blob(64))
    return f"{namespace}\x00{d.key}/{d.size}"


def result_bytes(code: int) -> bytes:
    return re_pb2.ActionResult(exit_code=code).SerializeToString(deterministic=True)


def test_action_cache_store_get_put_delete(ac_layout, tmp_path):
    async def scenario(h: StoreHarness) -> None:
        store = h.ac_store(ac_layout)
        ns = uniq("ns")
        k1, k2 = ac_key(ns), ac_key(ns)
        assert await store.get(k1) is None
        await store.put(k1, result_bytes(1))
        assert await store.get(k1) == result_bytes(1)
        await store.put(k1, result_bytes(2))
        assert await store.get(k1) == result_bytes(2)
        assert await store.put_if_absent(k1, result_bytes(3)) == result_bytes(2)
        assert await store.put_if_absent(k2, result_bytes(4)) is None
        assert await store.get(k2) == result_bytes(4)
        blake = f"{ns}\x00b3-{dig(b'x', dg.BLAKE3).hash}/1"
        await store.put(blake, result_bytes(5))
        assert await store.get(blake) == result_bytes(5)
        if store.name == "remote":
            return  # REAPI can neither delete nor list action results
        await store.delete(k1)
        assert await store.get(k1) is None
        listed = {k: v async for k, v, _ in store.iterate()}
        assert listed[k2] == result_bytes(4) and k1 not in listed

    run(tmp_path, scenario)


@pytest.mark.parametrize("layout", ["sql-sqlite", "sql-postgres", "redis", "s3"])
def test_action_cache_store_max_age(layout, backends, tmp_path):
    async def scenario(h: StoreHarness) -> None:
        # 3 s: the put and the first get must both land inside it, also on a loaded machine
        store = h.ac_store({**AC_LAYOUTS[layout](backends), "max_age": 3})
        k = ac_key()
        await store.put(k, result_bytes(1))
        assert await store.get(k) == result_bytes(1)
        await asyncio.sleep(4.2)
        assert await store.get(k) is None
        assert await store.put_if_absent(k, result_bytes(2)) is None  # expired counts as absent
        assert await store.get(k) == result_bytes(2)

    run(tmp_path, scenario)


def test_action_cache_never_returns_results_with_missing_blobs(ac_layout, backends, tmp_path):
    async def scenario(h: StoreHarness) -> None:
        store = h.ac_store(ac_layout)
        # a remote action cache checks its results against its own CAS, so use that one
        blobs = h.blob_store(backends.remote()) if store.name == "remote" else MemoryBlobStore(1 << 30)
        cas = ContentAddressableStorage(blobs)
        ac = ActionCache(store, cas, namespace=uniq("ns"))
        present, gone = blob(100), blob(200)
        await cas.store.put_many([(dig(present), present)])
        ok_action, bad_action = dig(blob(32)), dig(blob(32))
        ok = re_pb2.ActionResult(output_files=[re_pb2.OutputFile(
            path="a", digest=re_pb2.Digest(hash=dig(present).hash, size_bytes=len(present)))])
        bad = re_pb2.ActionResult(output_files=[re_pb2.OutputFile(
            path="b", digest=re_pb2.Digest(hash=dig(gone).hash, size_bytes=len(gone)))])
        await ac.update(ok_action, ok)
        await ac.update(bad_action, bad)
        assert (await ac.get(ok_action)).output_files[0].path == "a"
        with pytest.raises(NotFound):
            await ac.get(bad_action)

    run(tmp_path, scenario)
