"""The disk store directly: persistence, eviction, corruption, crashes, several processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap

import pytest

from granary import digest as dg
from granary.cas.disk import DiskBlobStore


def blob(n: int = 4096, tag: bytes = b"") -> tuple[dg.BlobDigest, bytes]:
    data = (tag + os.urandom(16)) * (n // 16 + 1)
    data = data[:n]
    return dg.compute(dg.SHA256, data), data


def run(coro):
    return asyncio.run(coro)


async def read_all(store, d, offset=0, limit=0) -> bytes:
    return b"".join([c async for c in await store.read(d, offset, limit)])


async def write_stream(store, d, data, chunk=1 << 20):
    w = await store.open_writer(d)
    for i in range(0, len(data), chunk):
        await w.write(data[i : i + chunk])
    await w.commit()


def test_small_and_large_blobs_survive_restart(tmp_path):
    small = [blob(100 + i) for i in range(50)]
    large = blob(6 << 20)

    async def first():
        s = DiskBlobStore(tmp_path, 1 << 30)
        await s.put_many(small)
        await write_stream(s, *large)
        await s.close()

    async def second():
        s = DiskBlobStore(tmp_path, 1 << 30)
        assert await s.find_missing([d for d, _ in small] + [large[0]]) == []
        got = await s.get_many([d for d, _ in small])
        assert all(got[d] == data for d, data in small)
        assert await read_all(s, large[0]) == large[1]
        assert await read_all(s, large[0], 4097, 3 << 20) == large[1][4097 : 4097 + (3 << 20)]
        assert s.stored_bytes == sum(d.size for d, _ in small) + large[0].size
        await s.close()

    run(first())
    run(second())


def test_eviction_keeps_recently_used(tmp_path):
    async def go():
        s = DiskBlobStore(tmp_path, 400_000, pack_file_bytes=64 << 10)
        old = [blob(10_000) for _ in range(20)]
        await s.put_many(old)
        # make the first five recently used, then fill past the cap
        s._db.execute("UPDATE blobs SET atime = atime - 1000")
        s._touched.clear()
        assert await s.find_missing([d for d, _ in old[:5]]) == []
        s._maybe_flush_atimes(force=True)
        new = [blob(10_000) for _ in range(30)]
        for b in new:
            await s.put_many([b])
        assert s.stored_bytes <= 400_000
        # 50 blobs of 10 kB into 400 kB: two evictions of 5 each, both from the 15 untouched old ones
        assert await s.find_missing([d for d, _ in old[:5]]) == []
        assert len(await s.find_missing([d for d, _ in old[5:]])) == 10
        assert await s.find_missing([d for d, _ in new]) == []
        # packs whose blobs are all gone are deleted or compacted away
        packs = os.listdir(tmp_path / "packs")
        assert len(packs) <= s._db.execute("SELECT count(*) FROM packs").fetchone()[0]
        live = s._db.execute("SELECT sum(live) FROM packs").fetchone()[0]
        assert live == s.stored_bytes
        await s.close()

    run(go())


def test_blob_larger_than_the_store_is_refused(tmp_path):
    from granary.errors import ResourceExhausted

    async def go():
        s = DiskBlobStore(tmp_path, 1000)
        with pytest.raises(ResourceExhausted):
            await s.put_many([blob(5000)])
        await s.close()

    run(go())


def test_corrupt_packed_bytes_read_as_missing(tmp_path):
    d, data = blob(5000)

    async def store():
        s = DiskBlobStore(tmp_path, 1 << 30)
        await s.put_many([(d, data)])
        await s.close()

    run(store())
    (pack,) = (tmp_path / "packs").iterdir()
    pack.write_bytes(b"\0" * 5000)  # what a power cut without fsync can leave

    async def go():
        s = DiskBlobStore(tmp_path, 1 << 30)
        assert await s.get_many([d]) == {}
        assert await s.find_missing([d]) == [d]  # and the entry is gone
        await s.close()

    run(go())


def test_aborted_and_crashed_writes_leave_nothing(tmp_path):
    d, data = blob(9 << 20)

    async def go():
        s = DiskBlobStore(tmp_path, 1 << 30)
        w = await s.open_writer(d)
        await w.write(data[: 5 << 20])
        assert await s.find_missing([d]) == [d]
        await w.abort()
        assert os.listdir(tmp_path / "tmp") == []
        await s.close()

    run(go())
    # a process killed mid-write leaves a temp file; the next start removes it
    script = textwrap.dedent(
        f"""
        import asyncio, os, sys
        from granary.cas.disk import DiskBlobStore
        from granary import digest as dg
        async def go():
            s = DiskBlobStore({str(tmp_path)!r}, 1 << 30)
            data = os.urandom(9 << 20)
            w = await s.open_writer(dg.compute(dg.SHA256, data))
            await w.write(data[: 6 << 20])
            print("written", flush=True)
            os._exit(0)
        asyncio.run(go())
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert "written" in out.stdout
    assert len(os.listdir(tmp_path / "tmp")) == 1
    run(DiskBlobStore(tmp_path, 1 << 30).close())
    assert os.listdir(tmp_path / "tmp") == []


def test_two_processes_share_one_store(tmp_path):
    d1, data1 = blob(3000, b"one")
    d2, data2 = blob(3000, b"two")
    helper = textwrap.dedent(
        f"""
        import asyncio, sys
        from granary.cas.disk import DiskBlobStore
        from granary import digest as dg
        async def go():
            s = DiskBlobStore({str(tmp_path)!r}, 1 << 30)
            for line in sys.stdin:
                cmd, arg = line.split()
                if cmd == "put":
                    data = bytes.fromhex(arg)
                    await s.put_many([(dg.compute(dg.SHA256, data), data)])
                    print("ok", flush=True)
                elif cmd == "has":
                    h, size = arg.split("/")
                    print(not await s.find_missing([dg.BlobDigest(dg.SHA256, h, int(size))]), flush=True)
                elif cmd == "delete":
                    h, size = arg.split("/")
                    await s.delete([dg.BlobDigest(dg.SHA256, h, int(size))])
                    print("ok", flush=True)
            await s.close()
        asyncio.run(go())
        """
    )
    other = subprocess.Popen(
        [sys.executable, "-c", helper], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )

    def ask(line: str) -> str:
        other.stdin.write(line + "\n")
        other.stdin.flush()
        return other.stdout.readline().strip()

    async def go():
        s = DiskBlobStore(tmp_path, 1 << 30)
        # the other process answers "missing" first, then sees our write at once
        assert ask(f"has {d1.hash}/{d1.size}") == "False"
        await s.put_many([(d1, data1)])
        assert ask(f"has {d1.hash}/{d1.size}") == "True"
        # we cached d2 as missing; the other process's insert must invalidate that
        assert await s.find_missing([d2]) == [d2]
        assert ask(f"put {data2.hex()}") == "ok"
        assert await s.find_missing([d2]) == []
        assert (await s.get_many([d2]))[d2] == data2
        # a delete there is seen here, even though we had the location cached
        assert ask(f"delete {d2.hash}/{d2.size}") == "ok"
        assert await s.find_missing([d2]) == [d2]
        await s.close()

    try:
        run(go())
    finally:
        other.stdin.close()
        other.wait(10)


def test_same_hash_with_another_size_is_missing_even_in_one_call(tmp_path):
    d, data = blob(3000)
    wrong = dg.BlobDigest(d.function, d.hash, d.size + 1)

    async def go():
        s = DiskBlobStore(tmp_path, 1 << 30)
        await s.put_many([(d, data)])
        for _ in range(2):  # first from SQL, then from the location cache
            assert await s.find_missing([d, wrong]) == [wrong]
            assert await s.find_missing([wrong, d]) == [wrong]
            assert list(await s.get_many([wrong, d])) == [d]
        await s.close()

    run(go())


def test_many_processes_opening_a_new_store_at_once(tmp_path):
    # server processes start together on a fresh data directory: none may fail with
    # "database is locked" while another is switching the files to WAL mode
    script = textwrap.dedent(
        f"""
        import asyncio, sys, time
        from granary.cas.disk import DiskBlobStore
        from granary.actioncache.store import SqliteActionCacheStore
        start = float(sys.argv[1])
        while time.time() < start:
            pass
        for i in range(20):  # twenty fresh directories, opened by every process at once
            s = DiskBlobStore({str(tmp_path)!r} + f"/cas{{i}}", 1 << 30)
            a = SqliteActionCacheStore({str(tmp_path)!r} + f"/ac{{i}}/ac.sqlite")
            asyncio.run(s.close())
            asyncio.run(a.close())
        print("ok")
        """
    )
    import time

    start = time.time() + 2
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(start)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(8)
    ]
    results = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in results if err]


def test_a_batch_racing_another_process_for_some_keys_counts_only_its_own(tmp_path):
    # another process indexed some of the batch's blobs between this one's check and its insert
    ours = [blob(3000, b"ours%d" % i) for i in range(3)]
    theirs = ours[1]

    async def go():
        a = DiskBlobStore(tmp_path, 1 << 30)
        b = DiskBlobStore(tmp_path, 1 << 30)
        await b.put_many([theirs])
        a._new_pack()
        offset = 0
        rows = []
        for d, data in ours:
            os.pwrite(a._pack_fd, data, offset)
            rows.append((d.key, d.size, a._pack_id, offset))
            offset += d.size
        a._pack_size = offset
        a._insert(rows, pack_growth=offset)
        assert a.stored_bytes == sum(d.size for d, _ in ours)  # theirs counted once
        assert a._locations.get(theirs[0].key) is None  # not claimed at this pack's offset
        for s in (a, b):
            got = await s.get_many([d for d, _ in ours])
            assert all(got[d] == data for d, data in ours)
        await a.close()
        await b.close()

    run(go())
