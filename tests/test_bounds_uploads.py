"""Attack tests: clients that open ByteStream uploads and walk away mid-stream.

Over real gRPC, the server listens on `localhost` (both 127.0.0.1 and ::1),
so an IPv4 and an IPv6 connection are two clients with their own limits.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import uuid
from dataclasses import dataclass

import grpc
import pytest
import serverutil
from bounds_util import MiB, rss
from reapi import Client, bs_pb2, digest
from serverutil import start_granary

from granary import digest as dg
from granary.cas import bytestream
from granary.cas.cas import ContentAddressableStorage
from granary.cas.disk import DiskBlobStore
from granary.cas.memory import MemoryBlobStore
from granary.errors import ResourceExhausted
from granary.resource_names import parse_write


def config(max_size: str) -> str:
    return f"""
storage:
  mem: {{type: memory, max_size: {max_size}}}
action_caches:
  mem: {{type: memory}}
instances:
  "*": {{cas: mem, action_cache: mem}}
"""


def serve_localhost(tmp_path, cfg: str, monkeypatch) -> serverutil.GranaryProcess:
    """A server on localhost:0 reachable at both 127.0.0.1 and ::1. The port is picked for one
    address family and then taken on the other, which can fail when the other family's port is
    in use (an outgoing connection's local port): then start again on another port."""
    monkeypatch.setattr(serverutil, "LISTEN_RE", re.compile(r"grpc://(localhost):(\d+)"))
    for attempt in range(5):
        srv = start_granary(tmp_path / f"try{attempt}", cfg, "--listen", "localhost:0", processes=1)
        port = srv.address.rpartition(":")[2]
        if all(_reachable(f"{host}:{port}") for host in ("127.0.0.1", "[::1]")):
            return srv
        srv.stop()
    raise AssertionError("could not serve on both 127.0.0.1 and ::1 with one port")


def _reachable(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=5)
        except grpc.FutureTimeoutError:
            return False
    return True


def abandon(client: Client, data: bytes, claimed: int) -> int:
    """Open an upload of a blob claimed to be `claimed` bytes, send `data`, close the stream unfinished."""
    name = f"uploads/{uuid.uuid4()}/blobs/{hashlib.sha256(os.urandom(8)).hexdigest()}/{claimed}"

    def gen():
        yield bs_pb2.WriteRequest(resource_name=name, write_offset=0, data=data)

    return client.bs.Write(gen(), timeout=60).committed_size


def test_many_abandoned_uploads_from_one_client_are_limited_and_others_still_served(tmp_path, monkeypatch):
    srv = serve_localhost(tmp_path, config("256MiB"), monkeypatch)
    port = srv.address.rpartition(":")[2]
    attacker = Client(f"127.0.0.1:{port}")
    other = Client(f"[::1]:{port}")
    try:
        before = rss(srv.proc.pid)
        chunk = os.urandom(100 * 1024)
        refused = None
        for i in range(1500):
            try:
                assert abandon(attacker, chunk, 10 * MiB) == len(chunk)
            except grpc.RpcError as e:
                refused = (i, e)
                break
        assert refused is not None, "1500 abandoned uploads from one client were all kept"
        i, e = refused
        assert i == 1000, e
        assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_uploads_per_client 1000" in e.details() and "ipv4:127.0.0.1" in e.details()
        # another client is still served, by ByteStream and by batches
        blob = os.urandom(3 * MiB)
        assert other.bs_write(blob) == len(blob)
        assert other.bs_read(digest(blob)) == blob
        (d,) = other.upload(b"small")
        assert other.missing([d]) == []
        assert rss(srv.proc.pid) - before < 200 * MiB
    finally:
        attacker.close()
        other.close()
        srv.stop()


def test_bytes_of_unfinished_uploads_count_against_the_store_size(tmp_path, monkeypatch):
    srv = serve_localhost(tmp_path, config("64MiB"), monkeypatch)
    port = srv.address.rpartition(":")[2]
    attacker = Client(f"127.0.0.1:{port}")
    other = Client(f"[::1]:{port}")
    try:
        before = rss(srv.proc.pid)
        chunk = os.urandom(4 * MiB)
        refused = None
        for i in range(100):  # 400 MiB if nothing stopped it
            try:
                abandon(attacker, chunk, 8 * MiB)
            except grpc.RpcError as e:
                refused = (i, e)
                break
        assert refused is not None
        i, e = refused
        assert i == 16  # 16 x 4 MiB fill the 64 MiB store
        assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_upload_bytes" in e.details() and str(64 * MiB) in e.details()
        assert rss(srv.proc.pid) - before < 200 * MiB
        # batches do not hold bytes between calls and are still served
        (d,) = other.upload(b"still served")
        assert other.missing([d]) == []
    finally:
        attacker.close()
        other.close()
        srv.stop()


def test_abandoned_uploads_do_not_stay_in_the_disk_store_memory(tmp_path):
    """Below the pack limit the disk store buffers uploads in memory; one abandoned mid-stream moves
    to its temp file, so 1000 of them (the per-client limit) do not hold 250 MiB of RAM."""
    srv = start_granary(tmp_path, None, processes=1)  # the embedded defaults: disk CAS
    client = Client(srv.address)
    try:
        before = rss(srv.proc.pid)
        blob = os.urandom(250 * 1024 + 100)
        d = digest(blob)
        names = []
        for _ in range(1000):
            name = f"uploads/{uuid.uuid4()}/blobs/{d.hash}/{d.size_bytes}"
            names.append(name)

            def gen(name: str = name):
                yield bs_pb2.WriteRequest(resource_name=name, write_offset=0, data=blob[:250 * 1024])

            assert client.bs.Write(gen(), timeout=60).committed_size == 250 * 1024
        assert rss(srv.proc.pid) - before < 150 * MiB
        assert len(os.listdir(srv.data_dir / "cas" / "tmp")) == 1000
        # a parked upload resumes where it stopped
        status = client.bs.QueryWriteStatus(bs_pb2.QueryWriteStatusRequest(resource_name=names[-1]))
        assert status.committed_size == 250 * 1024

        def rest():
            yield bs_pb2.WriteRequest(resource_name=names[-1], write_offset=250 * 1024,
                                      data=blob[250 * 1024:], finish_write=True)

        assert client.bs.Write(rest()).committed_size == len(blob)
        assert client.bs_read(d) == blob
    finally:
        client.close()
        srv.stop()


# ---- the registry itself: process limit, expiry, temp files, eviction -----------------------------


@dataclass
class Chunk:
    resource_name: str
    write_offset: int
    data: bytes
    finish_write: bool = False


async def _abandon(cas: ContentAddressableStorage, data: bytes, claimed: int, client: str) -> str:
    name = f"uploads/{uuid.uuid4()}/blobs/{hashlib.sha256(os.urandom(8)).hexdigest()}/{claimed}"

    async def nothing():
        return None

    await bytestream.write(cas, parse_write(name), Chunk(name, 0, data), nothing, client)
    return name


def test_process_limit_counts_every_client():
    async def main():
        cas = ContentAddressableStorage(MemoryBlobStore(64 * MiB), max_uploads=5, max_uploads_per_client=3)
        for client in ("a", "a", "b", "b", "c"):
            await _abandon(cas, b"x", 10, client)
        with pytest.raises(ResourceExhausted, match="max_uploads 5"):
            await _abandon(cas, b"x", 10, "d")
        with pytest.raises(ResourceExhausted, match="max_uploads_per_client 3"):
            cas2 = ContentAddressableStorage(MemoryBlobStore(64 * MiB), max_uploads=5, max_uploads_per_client=3)
            for _ in range(4):
                await _abandon(cas2, b"x", 10, "a")

    asyncio.run(main())


def test_abandoned_uploads_expire_and_give_back_their_temp_files_and_budget(tmp_path):
    async def main():
        store = DiskBlobStore(tmp_path / "cas", 64 * MiB)
        cas = ContentAddressableStorage(store, upload_ttl=0.01, max_uploads_per_client=2)
        data = os.urandom(1 * MiB)  # above the pack limit: goes to a temp file
        await _abandon(cas, data, 2 * MiB, "a")
        await _abandon(cas, data, 2 * MiB, "a")
        assert len(os.listdir(tmp_path / "cas" / "tmp")) == 2
        assert cas.uploads.inflight_bytes == store.inflight_bytes == 2 * MiB
        with pytest.raises(ResourceExhausted):
            await _abandon(cas, data, 2 * MiB, "a")
        await asyncio.sleep(0.05)
        await cas.uploads.expire()
        assert os.listdir(tmp_path / "cas" / "tmp") == []
        assert len(cas.uploads) == 0
        assert cas.uploads.inflight_bytes == store.inflight_bytes == 0
        await _abandon(cas, data, 2 * MiB, "a")  # the client may upload again
        await store.close()

    asyncio.run(main())


def test_disk_store_evicts_to_leave_room_for_unfinished_uploads(tmp_path):
    async def main():
        store = DiskBlobStore(tmp_path / "cas", 16 * MiB)
        cas = ContentAddressableStorage(store)
        blobs = [os.urandom(MiB) for _ in range(10)]
        for b in blobs:
            await cas.put(dg.make_digest(dg.SHA256, hashlib.sha256(b).hexdigest(), len(b)), b)
        assert store.stored_bytes == 10 * MiB
        await _abandon(cas, os.urandom(8 * MiB), 9 * MiB, "a")
        last = os.urandom(MiB)
        await cas.put(dg.make_digest(dg.SHA256, hashlib.sha256(last).hexdigest(), len(last)), last)
        # stored + in flight stay within max_size
        assert store.stored_bytes + store.inflight_bytes <= 16 * MiB
        await store.close()

    asyncio.run(main())
