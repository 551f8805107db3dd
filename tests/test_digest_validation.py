"""Every digest a client sends is validated before any cache of presence or absence is consulted:
a hash already remembered as absent (or present) must not let a malformed digest through."""

from __future__ import annotations

import hashlib
import uuid

import grpc
import pytest
from reapi import Client, bs_pb2, digest, re_pb2
from serverutil import start_granary

MEMORY = """
storage:
  mem: {type: memory, max_size: 64MiB}
action_caches:
  mem: {type: memory}
instances:
  "*": {cas: mem, action_cache: mem}
"""


@pytest.fixture(scope="module", params=["disk", "memory"])
def server(request, tmp_path_factory):
    srv = start_granary(tmp_path_factory.mktemp(request.param), None if request.param == "disk" else MEMORY)
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    c = Client(server.address)
    yield c
    c.close()


def absent_hash() -> str:
    return hashlib.sha256(uuid.uuid4().bytes).hexdigest()


def invalid(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        call()
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value
    return e.value


def test_negative_size_of_a_hash_remembered_as_absent(client):
    h = absent_hash()
    assert [d.hash for d in client.missing([re_pb2.Digest(hash=h, size_bytes=5)])] == [h]
    err = invalid(lambda: client.missing([re_pb2.Digest(hash=h, size_bytes=-1)]))
    assert f"{h}/-1" in err.details()
    # asked again, in a batch with good digests, it is still refused
    err = invalid(lambda: client.missing([re_pb2.Digest(hash=h, size_bytes=5), re_pb2.Digest(hash=h, size_bytes=-7)]))
    assert f"{h}/-7" in err.details()


def test_negative_size_of_a_present_blob(client):
    data = uuid.uuid4().bytes * 4
    [d] = client.upload(data)
    assert client.missing([d]) == []
    err = invalid(lambda: client.missing([re_pb2.Digest(hash=d.hash, size_bytes=-len(data))]))
    assert d.hash in err.details()


def test_hash_of_the_wrong_length_for_the_named_function(client):
    data = uuid.uuid4().bytes * 3
    [d] = client.upload(data)  # a SHA256 blob, now present
    h = absent_hash()
    client.missing([re_pb2.Digest(hash=h, size_bytes=9)])  # now remembered as absent
    for known in (d.hash, h):
        request = re_pb2.FindMissingBlobsRequest(
            blob_digests=[re_pb2.Digest(hash=known, size_bytes=9)], digest_function=re_pb2.DigestFunction.SHA1
        )
        err = invalid(lambda r=request: client.cas.FindMissingBlobs(r))
        assert repr(known) in err.details()


def test_uppercase_hash_remembered_as_absent_in_lowercase(client):
    h = absent_hash()
    client.missing([re_pb2.Digest(hash=h, size_bytes=5)])
    err = invalid(lambda: client.missing([re_pb2.Digest(hash=h.upper(), size_bytes=5)]))
    assert repr(h.upper()) in err.details()


def test_every_api_refuses_a_negative_size_after_the_hash_was_seen(client):
    h = absent_hash()
    client.missing([re_pb2.Digest(hash=h, size_bytes=5)])
    bad = re_pb2.Digest(hash=h, size_bytes=-1)

    def per_blob(statuses) -> None:
        [status] = statuses
        assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0], status
        assert f"{h}/-1" in status.message

    read = client.cas.BatchReadBlobs(re_pb2.BatchReadBlobsRequest(digests=[bad]))
    per_blob([r.status for r in read.responses])
    update = client.cas.BatchUpdateBlobs(
        re_pb2.BatchUpdateBlobsRequest(requests=[re_pb2.BatchUpdateBlobsRequest.Request(digest=bad, data=b"x")])
    )
    per_blob([r.status for r in update.responses])
    err = invalid(lambda: list(client.cas.GetTree(re_pb2.GetTreeRequest(root_digest=bad))))
    assert f"{h}/-1" in err.details()
    err = invalid(lambda: client.ac.GetActionResult(re_pb2.GetActionResultRequest(action_digest=bad)))
    assert f"{h}/-1" in err.details()
    result = re_pb2.ActionResult(stdout_digest=bad)
    good = digest(uuid.uuid4().bytes)
    err = invalid(lambda: client.ac.UpdateActionResult(
        re_pb2.UpdateActionResultRequest(action_digest=good, action_result=result)
    ))
    assert f"{h}/-1" in err.details()
    name = f"blobs/{h}/-1"
    err = invalid(lambda: b"".join(r.data for r in client.bs.Read(bs_pb2.ReadRequest(resource_name=name))))
    assert name in err.details()


@pytest.mark.parametrize("size", ["-1", "\u0661\u0662", "+5", " 5"])
def test_resource_name_sizes_are_plain_decimal(client, size):
    data = uuid.uuid4().bytes
    [d] = client.upload(data)
    name = f"blobs/{d.hash}/{size}"
    err = invalid(lambda: b"".join(r.data for r in client.bs.Read(bs_pb2.ReadRequest(resource_name=name))))
    assert repr(size) in err.details()
