"""Attack tests: compression bombs and oversized claims against a real `granary serve`.

Each attack asserts the REAPI refusal (status and a message naming the bad
value) and that the server's resident memory stays far below what the attack
would make it allocate.
"""

from __future__ import annotations

import hashlib
import zlib

import grpc
import pytest
from bounds_util import GiB, MiB, deflate_bomb, rss, zstd_bomb, zstd_lying_frame
from reapi import Client, bs_pb2, digest, re_pb2
from serverutil import start_granary

CONFIG = """
storage:
  mem: {type: memory, max_size: 256MiB}
action_caches:
  mem: {type: memory}
instances:
  "*": {cas: mem, action_cache: mem}
"""
BOUND = 200 * MiB  # growth allowed; each attack would otherwise allocate GiBs
FAKE = hashlib.sha256(b"ten bytes!").hexdigest()  # digest of a 10-byte blob the bombs claim to be


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_granary(tmp_path_factory.mktemp("bombs"), CONFIG, processes=1)
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    c = Client(server.address)
    yield c
    c.close()


@pytest.fixture(scope="module")
def zstd_3gib() -> bytes:
    return zstd_bomb(3 * GiB)


def write_once(client: Client, resource: str, data: bytes) -> int:
    def gen():
        yield bs_pb2.WriteRequest(resource_name=resource, write_offset=0, data=data, finish_write=True)

    return client.bs.Write(gen(), timeout=120).committed_size


def test_zstd_bytestream_bomb_is_refused_at_the_claimed_size(server, client, zstd_3gib):
    assert len(zstd_3gib) < 128 * 1024
    before = rss(server.proc.pid)
    name = f"uploads/bomb-zstd/compressed-blobs/zstd/{FAKE}/10"
    with pytest.raises(grpc.RpcError) as e:
        write_once(client, name, zstd_3gib)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"{FAKE}/10" in e.value.details() and "10 bytes" in e.value.details()
    assert rss(server.proc.pid) - before < BOUND
    # the server still serves
    (d,) = client.upload(b"after the zstd bomb")
    assert client.bs_read(d) == b"after the zstd bomb"


def test_zstd_frame_claiming_a_huge_content_size_is_not_trusted(server, client):
    frame = zstd_lying_frame(1 << 40, 20_000)  # 80 KiB whose header says 1 TiB, producing 2.5 GiB
    assert len(frame) < 100 * 1024
    before = rss(server.proc.pid)
    name = f"uploads/bomb-lying/compressed-blobs/zstd/{FAKE}/10"
    with pytest.raises(grpc.RpcError) as e:
        write_once(client, name, frame)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"{FAKE}/10" in e.value.details()
    # the same frame in a batch
    req = re_pb2.BatchUpdateBlobsRequest(requests=[re_pb2.BatchUpdateBlobsRequest.Request(
        digest=re_pb2.Digest(hash=FAKE, size_bytes=10), data=frame, compressor=re_pb2.Compressor.ZSTD)])
    (r,) = client.cas.BatchUpdateBlobs(req, timeout=120).responses
    assert r.status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert FAKE in r.status.message
    assert rss(server.proc.pid) - before < BOUND


def test_deflate_bytestream_bomb_is_refused_at_the_claimed_size(server, client):
    bomb = deflate_bomb(2 * GiB)
    before = rss(server.proc.pid)
    name = f"uploads/bomb-deflate/compressed-blobs/deflate/{FAKE}/10"
    with pytest.raises(grpc.RpcError) as e:
        write_once(client, name, bomb)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"{FAKE}/10" in e.value.details()
    assert rss(server.proc.pid) - before < BOUND


def test_a_compressed_upload_that_truly_is_large_is_accepted(client):
    """The bound is the claimed size, not a ratio: 200 MiB from 200 KiB of deflate is stored."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    segment = c.compress(bytes(MiB)) + c.flush(zlib.Z_FULL_FLUSH)
    bomb = segment * 200 + zlib.compressobj(9, zlib.DEFLATED, -15).flush()  # 200 MiB of zeros
    claimed = digest(bytes(200 * MiB))
    name = f"uploads/big-deflate/compressed-blobs/deflate/{claimed.hash}/{claimed.size_bytes}"
    assert write_once(client, name, bomb) == len(bomb)
    assert client.missing([claimed]) == []


def test_batch_update_bomb_fails_alone(server, client, zstd_3gib):
    good = b"a good blob next to a bomb"
    before = rss(server.proc.pid)
    req = re_pb2.BatchUpdateBlobsRequest(requests=[
        re_pb2.BatchUpdateBlobsRequest.Request(
            digest=re_pb2.Digest(hash=FAKE, size_bytes=10), data=zstd_3gib, compressor=re_pb2.Compressor.ZSTD),
        re_pb2.BatchUpdateBlobsRequest.Request(digest=digest(good), data=good),
    ])
    bomb, ok = client.cas.BatchUpdateBlobs(req, timeout=120).responses
    assert bomb.status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert ok.status.code == 0
    assert rss(server.proc.pid) - before < BOUND


def test_batch_update_claiming_more_than_the_batch_limit_is_refused_before_any_work(server, client, zstd_3gib):
    limit = client.caps.GetCapabilities(re_pb2.GetCapabilitiesRequest()).cache_capabilities.max_batch_total_size_bytes
    per_blob = 3 * GiB
    req = re_pb2.BatchUpdateBlobsRequest(requests=[
        re_pb2.BatchUpdateBlobsRequest.Request(
            digest=re_pb2.Digest(hash=hashlib.sha256(bytes(per_blob)).hexdigest() if i == 0 else FAKE,
                                 size_bytes=per_blob),
            data=zstd_3gib, compressor=re_pb2.Compressor.ZSTD)
        for i in range(3)
    ])
    before = rss(server.proc.pid)
    with pytest.raises(grpc.RpcError) as e:
        client.cas.BatchUpdateBlobs(req, timeout=120)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert str(3 * per_blob) in e.value.details() and str(limit) in e.value.details()
    assert rss(server.proc.pid) - before < BOUND


def test_batch_read_claiming_more_than_the_batch_limit_is_refused(client):
    req = re_pb2.BatchReadBlobsRequest(digests=[re_pb2.Digest(hash=FAKE, size_bytes=1 << 40)])
    with pytest.raises(grpc.RpcError) as e:
        client.cas.BatchReadBlobs(req)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert str(1 << 40) in e.value.details()


@pytest.mark.parametrize("rpc", ["FindMissingBlobs", "BatchReadBlobs"])
def test_too_many_digests_in_one_request_are_refused(client, rpc):
    digests = [re_pb2.Digest(hash=f"{i:064x}", size_bytes=0) for i in range(100_001)]
    if rpc == "FindMissingBlobs":
        call = lambda: client.cas.FindMissingBlobs(re_pb2.FindMissingBlobsRequest(blob_digests=digests))
    else:
        call = lambda: client.cas.BatchReadBlobs(re_pb2.BatchReadBlobsRequest(digests=digests))
    with pytest.raises(grpc.RpcError) as e:
        call()
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "100001" in e.value.details() and "100000" in e.value.details()
    # one digest under the limit is fine
    assert len(client.cas.FindMissingBlobs(
        re_pb2.FindMissingBlobsRequest(blob_digests=digests[:100_000])).missing_blob_digests) == 100_000


def test_bytestream_claim_above_the_store_capacity_is_refused_up_front(server, client):
    huge = 1 << 40
    name = f"uploads/too-big/blobs/{FAKE}/{huge}"

    def gen():
        yield bs_pb2.WriteRequest(resource_name=name, write_offset=0, data=b"x" * 1024)

    with pytest.raises(grpc.RpcError) as e:
        client.bs.Write(gen())
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert str(huge) in e.value.details() and str(256 * MiB) in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        client.bs.QueryWriteStatus(bs_pb2.QueryWriteStatusRequest(resource_name=name))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
