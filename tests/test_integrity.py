"""Storage integrity (issue 12): what the index says is there can be read, every write is checked,
`fsync: true` means durable, eviction never deletes a fresh copy, and a blob whose bytes are gone
reads as missing at once, in every process sharing the store.

Two store objects on one directory are what two server processes are (each has its own SQLite
connection, caches and mapped change token), so races between processes are played out with two
objects and a hook that runs the other one's work at the exact moment the race needs.
"""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
import threading
from pathlib import Path

import pytest
from backend_fixtures import *
from backend_fixtures import uniq

from granary import digest as dg
from granary.cas.disk import DiskBlobStore
from granary.errors import BlobNotFound, ResourceExhausted

MiB = 1 << 20


def blob(n: int = 4096) -> tuple[dg.BlobDigest, bytes]:
    data = (os.urandom(16) * (n // 16 + 1))[:n]
    return dg.compute(dg.SHA256, data), data


async def read_all(store, d, offset=0, limit=0) -> bytes:
    return b"".join([c async for c in await store.read(d, offset, limit)])


def files_under(root: Path, sub: str) -> list[Path]:
    return [p for p in (root / sub).rglob("*") if p.is_file()]


# ---- phantom blobs ---------------------------------------------------------------------------


def test_deleted_blob_file_reads_missing_in_every_process(tmp_path):
    """A large blob whose file is gone: the first failed read drops it, for this and other processes."""

    async def scenario():
        a = DiskBlobStore(tmp_path, 1 << 30, pack_max_blob=1024)
        b = DiskBlobStore(tmp_path, 1 << 30, pack_max_blob=1024)
        d, data = blob(64 * 1024)
        await a.put_many([(d, data)])
        assert await b.find_missing([d]) == []  # b now remembers where it is
        (path,) = files_under(tmp_path, "blobs")
        path.unlink()
        assert await a.get_many([d]) == {}
        assert await a.find_missing([d]) == [d]
        assert await b.find_missing([d]) == [d]
        assert a.stored_bytes == 0
        # and a re-upload works again
        await b.put_many([(d, data)])
        assert await read_all(a, d) == data
        await a.close()
        await b.close()

    asyncio.run(scenario())


def test_streamed_read_of_deleted_or_short_file_drops_it(tmp_path):
    async def scenario():
        a = DiskBlobStore(tmp_path, 1 << 30, pack_max_blob=1024)
        b = DiskBlobStore(tmp_path, 1 << 30, pack_max_blob=1024)
        gone, gone_data = blob(3 * MiB)
        short, short_data = blob(3 * MiB)
        await a.put_many([(gone, gone_data), (short, short_data)])
        assert await b.find_missing([gone, short]) == []
        for p in files_under(tmp_path, "blobs"):
            if p.name.startswith(gone.hash):
                p.unlink()
            else:
                os.truncate(p, MiB)
        with pytest.raises(BlobNotFound):
            await a.read(gone)
        with pytest.raises(BlobNotFound):
            await a.read(short)
        assert await b.find_missing([gone, short]) == [gone, short]
        assert await a.find_missing([gone, short]) == [gone, short]
        await a.close()
        await b.close()

    asyncio.run(scenario())


def test_truncated_pack_drops_the_lost_blobs_only(tmp_path):
    async def scenario():
        a = DiskBlobStore(tmp_path, 1 << 30)
        b = DiskBlobStore(tmp_path, 1 << 30)
        blobs = [blob(1000) for _ in range(10)]
        await a.put_many(blobs)
        await a.close()  # seals the pack
        a = DiskBlobStore(tmp_path, 1 << 30)
        assert await b.find_missing([d for d, _ in blobs]) == []
        (pack,) = files_under(tmp_path, "packs")
        os.truncate(pack, 4500)  # the first four blobs survive
        got = await a.get_many([d for d, _ in blobs])
        assert set(got) == {d for d, _ in blobs[:4]}
        assert await b.find_missing([d for d, _ in blobs]) == [d for d, _ in blobs[4:]]
        assert a.stored_bytes == 4000
        await a.close()
        await b.close()

    asyncio.run(scenario())


def test_deleted_pack_reads_missing(tmp_path):
    async def scenario():
        a = DiskBlobStore(tmp_path, 1 << 30)
        blobs = [blob(500) for _ in range(5)]
        await a.put_many(blobs)
        await a.close()
        a = DiskBlobStore(tmp_path, 1 << 30)
        for p in files_under(tmp_path, "packs"):
            p.unlink()
        for d, _ in blobs:
            with pytest.raises(BlobNotFound):
                await a.read(d)
        assert await a.find_missing([d for d, _ in blobs]) == [d for d, _ in blobs]
        await a.close()

    asyncio.run(scenario())


# ---- eviction racing a re-upload ---------------------------------------------------------------


def test_eviction_never_deletes_a_concurrent_reupload(tmp_path):
    """Process A evicts blob X; between A's commit and A's unlink, process B re-uploads X.

    B sees no row (A's delete is committed), so it publishes a fresh copy and indexes it. A's
    unlink must not hit that copy: afterwards X must be readable, in both processes.
    """
    d, data = blob(64 * 1024)
    committed, republished = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def evictor() -> None:
        async def main():
            a = DiskBlobStore(tmp_path, 1 << 30, pack_max_blob=1024)
            await a.put_many([(d, data)])
            unlink = a._unlink_files

            def racing_unlink(*args, **kwargs):
                committed.set()
                assert republished.wait(30)
                return unlink(*args, **kwargs)

            a._unlink_files = racing_unlink
            a.evict(0)
            await a.close()

        try:
            asyncio.run(main())
        except BaseException as e:  # noqa: BLE001 - reported by the test thread
            errors.append(e)
            committed.set()

    async def reuploader():
        t = threading.Thread(target=evictor)
        t.start()
        await asyncio.to_thread(committed.wait, 30)
        b = DiskBlobStore(tmp_path, 1 << 30, pack_max_blob=1024)
        assert await b.find_missing([d]) == [d]
        await b.put_many([(d, data)])
        republished.set()
        await asyncio.to_thread(t.join, 30)
        assert not errors, errors
        assert await b.find_missing([d]) == []
        assert await read_all(b, d) == data
        c = DiskBlobStore(tmp_path, 1 << 30, pack_max_blob=1024)
        assert await read_all(c, d) == data
        await b.close()
        await c.close()

    asyncio.run(reuploader())


def test_eviction_and_reupload_racing_in_two_processes(tmp_path):
    """The same race with real processes and no hooks: one evicts everything over and over while
    the other re-uploads the same blobs; every blob the index names must be readable after."""
    script = f"""
import asyncio, os, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from granary.cas.disk import DiskBlobStore
from granary import digest as dg

blobs = [(b"%d" % i) * 8000 for i in range(20)]
role = sys.argv[1]

async def main():
    s = DiskBlobStore({str(tmp_path)!r}, 1 << 30, pack_max_blob=1024)
    for _ in range(60):
        if role == "evict":
            s.evict(0)
        else:
            await s.put_many([(dg.compute(dg.SHA256, b), b) for b in blobs])
    await s.close()

asyncio.run(main())
"""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    procs = [subprocess.Popen(["python3", "-c", script, role], env=env) for role in ("evict", "upload")]
    assert [p.wait(120) for p in procs] == [0, 0]

    async def check():
        s = DiskBlobStore(tmp_path, 1 << 30, pack_max_blob=1024)
        blobs = [(b"%d" % i) * 8000 for i in range(20)]
        digests = [dg.compute(dg.SHA256, b) for b in blobs]
        present = [d for d in digests if d not in await s.find_missing(digests)]
        for d, data in zip(digests, blobs):
            if d in present:
                assert await read_all(s, d) == data, "the index names a blob whose file was deleted"
        await s.close()

    asyncio.run(check())


# ---- writes and durability -------------------------------------------------------------------


def test_short_pack_write_is_finished_not_indexed_short(tmp_path, monkeypatch):
    """os.pwrite may write less than asked (a signal, a nearly full disk): the rest must follow
    before the index names the blobs."""
    real = os.pwrite

    def half_pwrite(fd, data, offset):
        data = bytes(data)
        return real(fd, data[: max(1, len(data) // 2)], offset)

    async def scenario():
        s = DiskBlobStore(tmp_path, 1 << 30)
        blobs = [blob(1000) for _ in range(8)]
        monkeypatch.setattr(os, "pwrite", half_pwrite)
        await s.put_many(blobs)
        monkeypatch.setattr(os, "pwrite", real)
        await s.close()
        s = DiskBlobStore(tmp_path, 1 << 30)
        got = await s.get_many([d for d, _ in blobs])
        assert got == dict(blobs)
        await s.close()

    asyncio.run(scenario())


@pytest.fixture
def tiny_fs(tmp_path):
    """A 2 MiB tmpfs (we are root in the test machine); skipped where mounting is not allowed."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                      capture_output=True, check=False).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_fails_the_write_and_indexes_nothing(tiny_fs):
    async def scenario():
        s = DiskBlobStore(tiny_fs / "store", 1 << 30, pack_max_blob=64 * 1024)
        big, big_data = blob(3 * MiB)  # larger than the file system
        with pytest.raises(ResourceExhausted):
            await s.put_many([(big, big_data)])
        assert files_under(tiny_fs / "store", "tmp") == []  # the partial file is gone
        with pytest.raises(ResourceExhausted):
            w = await s.open_writer(big)
            for i in range(0, big.size, MiB):
                await w.write(big_data[i : i + MiB])
            await w.commit()
        await w.abort()
        small = [blob(60 * 1024) for _ in range(50)]  # 3 MB of packed blobs, in batches of ten
        stored = []
        with pytest.raises(ResourceExhausted):
            for i in range(0, 50, 10):
                await s.put_many(small[i : i + 10])
                stored += small[i : i + 10]
        assert await s.find_missing([big]) == [big]
        present = [d for d, _ in small if d not in await s.find_missing([d for d, _ in small])]
        assert set(present) == {d for d, _ in stored}
        got = await s.get_many(present)
        assert got == {d: data for d, data in small if d in present}
        await s.close()

    asyncio.run(scenario())


class FsyncLog:
    """Records what is fsynced (by path), calling the real functions."""

    def __init__(self, monkeypatch):
        self.events: list[tuple[str, str]] = []
        for name in ("fsync", "fdatasync"):
            real = getattr(os, name)
            monkeypatch.setattr(os, name, self._wrap(name, real))
        real_unlink = os.unlink

        def unlink(path, *a, **kw):
            self.events.append(("unlink", str(path)))
            return real_unlink(path, *a, **kw)

        monkeypatch.setattr(os, "unlink", unlink)

    def _wrap(self, name, real):
        def call(fd):
            self.events.append((name, os.readlink(f"/proc/self/fd/{fd}")))
            return real(fd)

        return call

    def synced(self) -> set[str]:
        return {p for kind, p in self.events if kind in ("fsync", "fdatasync")}


def test_fsync_makes_directory_entries_and_index_durable(tmp_path, monkeypatch):
    async def scenario():
        log = FsyncLog(monkeypatch)
        s = DiskBlobStore(tmp_path, 1 << 30, pack_max_blob=1024, fsync=True)
        assert s._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        big, big_data = blob(10_000)
        small, small_data = blob(100)
        await s.put_many([(big, big_data), (small, small_data)])
        (path,) = files_under(tmp_path, "blobs")
        synced = log.synced()
        assert any(p.startswith(str(tmp_path / "tmp") + "/") for p in synced)  # the bytes, before the rename
        assert str(path.parent) in synced  # the renamed entry
        assert str(tmp_path / "packs") in synced  # the new pack's entry
        (pack,) = files_under(tmp_path, "packs")
        assert str(pack) in synced
        await s.close()

    asyncio.run(scenario())


def test_compaction_makes_the_new_pack_durable_before_deleting_the_old(tmp_path, monkeypatch):
    async def scenario():
        s = DiskBlobStore(tmp_path, 1 << 30, fsync=True)
        blobs = [blob(1000) for _ in range(10)]
        await s.put_many(blobs)
        await s.close()  # pack 1 sealed
        s = DiskBlobStore(tmp_path, 1 << 30, fsync=True)
        await s.delete([d for d, _ in blobs[:8]])  # pack 1 is mostly dead
        log = FsyncLog(monkeypatch)
        s._compact()
        old = str(tmp_path / "packs" / "1.pack")
        assert ("unlink", old) in log.events
        gone_at = log.events.index(("unlink", old))
        new_packs = {str(p) for p in files_under(tmp_path, "packs")}
        assert new_packs and old not in new_packs
        assert any(kind in ("fsync", "fdatasync") and p in new_packs for kind, p in log.events[:gone_at])
        got = await s.get_many([d for d, _ in blobs[8:]])
        assert got == dict(blobs[8:])
        await s.close()

    asyncio.run(scenario())


def test_enospc_in_a_thread_write_is_resource_exhausted(tmp_path, monkeypatch):
    """A streamed upload whose chunk write fails with ENOSPC: RESOURCE_EXHAUSTED, nothing indexed."""
    real = os.write

    def full(fd, data):
        if len(data) >= 256 * 1024:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    async def scenario():
        s = DiskBlobStore(tmp_path, 1 << 30)
        d, data = blob(2 * MiB)
        monkeypatch.setattr(os, "write", full)
        w = await s.open_writer(d)
        with pytest.raises(ResourceExhausted):
            for i in range(0, d.size, MiB):
                await w.write(data[i : i + MiB])
            await w.commit()
        await w.abort()
        monkeypatch.setattr(os, "write", real)
        assert await s.find_missing([d]) == [d]
        assert files_under(tmp_path, "tmp") == []
        await s.close()

    asyncio.run(scenario())


# ---- granary fsck --------------------------------------------------------------------------------

FSCK_CONFIG = """
storage:
  main:
    type: tiered
    cache: {type: disk, path: cas, pack_max_blob: 1KiB}
    fallback: {type: memory}
action_caches: {main: {type: sqlite, path: ac.sqlite}}
instances: {"*": {cas: main, action_cache: main}}
"""


def granary(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    return subprocess.run(["python3", "-m", "granary", *args], env=env, capture_output=True, text=True,
                          check=False, cwd=cwd, timeout=120)


def test_fsck_rehashes_every_blob_and_repairs_the_index(tmp_path):
    """Damage no read notices (same size, other bytes in a large file), damage a read would notice
    (a flipped byte in a pack), and a file no row names: fsck finds all three, fixes the index and
    exits 1; a second run finds nothing and exits 0."""
    root = tmp_path / "data" / "cas"
    small = [blob(500) for _ in range(20)]
    large = [blob(8000) for _ in range(5)]

    async def fill():
        s = DiskBlobStore(root, 1 << 30, pack_max_blob=1024)
        await s.put_many(small + large)
        await s.close()

    asyncio.run(fill())
    (pack,) = files_under(root, "packs")
    raw = bytearray(pack.read_bytes())
    raw[3 * 500 + 7] ^= 0xFF  # the fourth small blob
    pack.write_bytes(bytes(raw))
    rotten = next(p for p in files_under(root, "blobs") if p.name.startswith(large[2][0].hash))
    raw = bytearray(rotten.read_bytes())
    raw[100] ^= 0xFF
    rotten.write_bytes(bytes(raw))
    orphan = rotten.parent / f"{large[0][0].hash}.1234"
    orphan.write_bytes(large[0][1])
    os.utime(orphan, (1, 1))  # long ago: not a publish in progress
    config = tmp_path / "granary.yaml"
    config.write_text(FSCK_CONFIG)

    first = granary("fsck", "--config", str(config), "--data-dir", str(tmp_path / "data"))
    assert first.returncode == 1, first.stderr
    assert "storage.main.cache: checked 25 blobs" in first.stdout
    assert "2 damaged or missing (dropped)" in first.stdout
    assert "1 unindexed files removed" in first.stdout
    assert "granary fsck: storage.main.cache: checking blobs" in first.stderr  # the plain progress lines
    assert not orphan.exists()

    async def check():
        s = DiskBlobStore(root, 1 << 30, pack_max_blob=1024)
        digests = [d for d, _ in small + large]
        assert await s.find_missing(digests) == [small[3][0], large[2][0]]
        assert s.stored_bytes == 19 * 500 + 4 * 8000
        await s.close()

    asyncio.run(check())
    second = granary("fsck", "--config", str(config), "--data-dir", str(tmp_path / "data"), "-q")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "storage.main.cache: checked 23 blobs" in second.stdout and second.stderr == ""


# ---- Redis: a streamed write whose temporary key expired -------------------------------------------


def test_redis_streamed_write_with_expired_temp_key_fails(backend_redis):
    """The temporary key of a streamed write expires (here: deleted, as expiry would) between two
    chunks: the APPEND after it would start a new key, and the commit must not rename that
    truncated value into place."""
    from granary.cas.redis import RedisBlobStore

    async def scenario():
        store = RedisBlobStore(backend_redis.url, prefix=uniq("cas") + ":")
        d, data = blob(3 * MiB)
        w = await store.open_writer(d)
        await w.write(data[:MiB])  # flushed to the temporary key
        (tmp,) = [k async for k in store.redis.scan_iter(match=store.prefix + "~tmp:*")]
        await store.redis.delete(tmp)
        with pytest.raises(Exception):  # noqa: B017 - any failure, as long as nothing commits
            await w.write(data[MiB : 2 * MiB])
            await w.write(data[2 * MiB :])
            await w.commit()
        await w.abort()
        assert await store.redis.exists(store._key(d)) == 0
        assert await store.find_missing([d]) == [d]
        # a write that finishes in time still works
        w = await store.open_writer(d)
        for i in range(0, d.size, MiB):
            await w.write(data[i : i + MiB])
        await w.commit()
        assert await read_all(store, d) == data
        await store.close()

    asyncio.run(scenario())


# ---- bytes from other stores are verified ------------------------------------------------------


def same_size_garbage(data: bytes) -> bytes:
    return bytes(b ^ 0x5A for b in data[:64]) + data[64:]


def test_tiered_never_serves_or_caches_wrong_bytes_from_redis(backend_redis, tmp_path, caplog):
    from granary.cas.redis import RedisBlobStore
    from granary.cas.tiered import TieredBlobStore

    async def scenario():
        cache = DiskBlobStore(tmp_path / "cache", 1 << 30, pack_max_blob=64 * 1024)
        redis = RedisBlobStore(backend_redis.url, prefix=uniq("cas") + ":")
        store = TieredBlobStore(cache, redis)
        small, small_data = blob(1000)
        large, large_data = blob(3 * MiB)
        good, good_data = blob(2 * MiB)
        await redis.redis.set(redis._key(small), same_size_garbage(small_data))
        await redis.redis.set(redis._key(large), same_size_garbage(large_data))
        await redis.put_many([(good, good_data)])
        assert await store.get_many([small]) == {}
        with pytest.raises(BlobNotFound):
            await store.read(large)
        with pytest.raises(BlobNotFound):
            await store.read(large, 10, 100)
        with pytest.raises(BlobNotFound):  # the backend alone verifies too
            await redis.read(large)
        assert await cache.find_missing([small, large]) == [small, large]  # nothing wrong was cached
        assert await read_all(store, good) == good_data  # and right bytes still flow, and are cached
        assert await cache.find_missing([good]) == []
        warnings = [r for r in caplog.records if large.hash in r.getMessage()]
        assert len(warnings) == 1  # logged once
        await store.close()
        await cache.close()
        await redis.close()

    asyncio.run(scenario())


def test_s3_reads_verify_bytes(backend_s3, tmp_path):
    from backend_fixtures import S3_BUCKET, S3_CREDENTIALS

    from granary.cas.s3 import S3BlobStore
    from granary.s3_client import S3Connection

    async def scenario():
        creds = {"access_key_id": S3_CREDENTIALS["access_key_id"],
                 "secret_access_key": S3_CREDENTIALS["secret_access_key"], "region": S3_CREDENTIALS["region"]}
        conn = S3Connection(bucket=S3_BUCKET, endpoint_url=backend_s3.endpoint, create_bucket=True, **creds)
        s3 = S3BlobStore(conn, prefix=uniq("cas") + "/")
        small, small_data = blob(1000)
        large, large_data = blob(3 * MiB)
        client = await conn.client()
        for d, data in ((small, small_data), (large, large_data)):
            await client.put_object(Bucket=S3_BUCKET, Key=s3._key(d), Body=same_size_garbage(data))
        assert await s3.get_many([small]) == {}
        with pytest.raises(BlobNotFound):
            await s3.read(large)
        with pytest.raises(BlobNotFound):
            await s3.read(small, 5, 10)
        await s3.close()

    asyncio.run(scenario())


REMOTE_DISK = """
storage: {main: {type: disk, path: cas, pack_max_blob: 1KiB}}
action_caches: {main: {type: memory}}
instances: {"*": {cas: main, action_cache: main}}
"""


def test_remote_reads_verify_bytes(tmp_path):
    """A remote REAPI server whose disk rotted (same size, other bytes: its reads do not notice):
    a remote store in front of it must not pass those bytes on."""
    from serverutil import start_granary

    from granary.cas.remote import RemoteBlobStore
    from granary.remote_endpoint import RemoteEndpoint

    large, large_data = blob(3 * MiB)
    with start_granary(tmp_path / "remote", REMOTE_DISK) as server:
        async def scenario():
            remote = RemoteBlobStore(RemoteEndpoint(server.url))
            await remote.put_many([(large, large_data)])
            (path,) = files_under(server.data_dir / "cas", "blobs")
            path.write_bytes(same_size_garbage(large_data))
            with pytest.raises(BlobNotFound):
                await remote.read(large)
            assert await remote.get_many([large]) == {}
            await remote.close()

        asyncio.run(scenario())


# ---- deferred fallback writes survive a crash ------------------------------------------------------

DEFERRED = """
storage:
  main:
    type: tiered
    cache: {{type: disk, path: cas}}
    fallback: {{type: redis, url: "redis://127.0.0.1:{port}/0", prefix: "fb:"}}
    defer_fallback_writes: true
action_caches: {{main: {{type: memory}}}}
instances: {{"*": {{cas: main, action_cache: main}}}}
"""


def test_deferred_fallback_copies_survive_sigkill(tmp_path):
    """Blobs acknowledged while the fallback (Redis) is down sit in the copy backlog; the server is
    SIGKILLed; after a restart with Redis up, every one of them reaches Redis."""
    import shutil
    import signal
    import time

    import redis as redis_sync
    from reapi import Client
    from serverutil import start_granary
    from services import free_port

    port = free_port()
    config = DEFERRED.format(port=port)
    blobs = [os.urandom(1000 + i) for i in range(30)] + [os.urandom(300_000)]
    server = start_granary(tmp_path, config)
    try:
        client = Client(server.address)
        client.upload(*blobs)
        client.close()
    finally:
        server.stop(signal.SIGKILL)
    redis_server = subprocess.Popen(
        [shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        r = redis_sync.Redis(port=port)
        deadline = time.monotonic() + 30
        while True:
            try:
                r.ping()
                break
            except redis_sync.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.1)
        keys = [b"fb:" + dg.compute(dg.SHA256, b).hash.encode() for b in blobs]
        assert r.exists(*keys) == 0  # nothing reached the fallback before the crash
        with start_granary(tmp_path, config):
            deadline = time.monotonic() + 60
            while r.exists(*keys) < len(keys) and time.monotonic() < deadline:
                time.sleep(0.2)
        assert [r.get(k) for k in keys] == blobs
        r.close()
    finally:
        redis_server.terminate()
        redis_server.wait(20)


# ---- write_once is atomic on every action cache backend --------------------------------------------

WRITE_ONCE_REMOTE = """
storage: {mem: {type: memory}}
action_caches: {mem: {type: memory}}
instances: {"*": {cas: mem, action_cache: mem, write_once: true}}
"""


@pytest.fixture(scope="module")
def write_once_remote(tmp_path_factory):
    from serverutil import start_granary

    server = start_granary(tmp_path_factory.mktemp("write-once-remote"), WRITE_ONCE_REMOTE)
    yield server
    server.stop()


@pytest.mark.parametrize("layout", ["disk", "sqlite", "sql-sqlite", "sql-postgres", "redis", "s3", "remote"])
def test_write_once_has_exactly_one_winner(layout, backends, tmp_path, request):
    """Eight writers, each with its own store object (its own connection: as eight server
    processes), race to store different results for one action: exactly one wins, and every
    other one is told the winner's result, which is what stays stored."""
    from backend_fixtures import AC_LAYOUTS, StoreHarness

    from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2

    if layout == "disk":
        spec = {"type": "disk", "path": str(tmp_path / "ac")}
    elif layout == "remote":
        spec = {"type": "remote", "address": request.getfixturevalue("write_once_remote").url}
    else:
        spec = AC_LAYOUTS[layout](backends)
    d, _ = blob(64)
    key = f"{uniq('ns')}\x00{d.key}/{d.size}"
    values = [re_pb2.ActionResult(exit_code=i + 1).SerializeToString(deterministic=True) for i in range(8)]

    async def scenario():
        harnesses = [StoreHarness(tmp_path) for _ in values]
        stores = [h.ac_store(spec) for h in harnesses]
        try:
            answers = await asyncio.gather(*(s.put_if_absent(key, v) for s, v in zip(stores, values)))
            winners = [v for v, a in zip(values, answers) if a is None]
            assert len(winners) == 1, answers
            assert all(a == winners[0] for a in answers if a is not None)
            assert await stores[0].get(key) == winners[0]
        finally:
            for h in harnesses:
                await h.close()

    asyncio.run(scenario())
