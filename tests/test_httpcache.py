"""The HTTP cache protocols (`http.cache`) against a real `granary serve`, request by request.

bazel-remote's /ac/ and /cas/ (with and without an instance prefix, zstd both ways, chunked
uploads, hash verification, completeness), the opaque-key caches (ccache, Gradle), limits and
malformed input, authentication and permissions, and that the data is the gRPC port's data.
Real clients are in test_bazel_httpcache.py, test_ccache.py and test_gradle_httpcache.py.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
from urllib.parse import urlsplit

import bcrypt
import grpc
import pytest
import zstandard
from obsutil import http_url
from reapi import Client, digest
from serverutil import start_granary

from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2

pytestmark = pytest.mark.timeout(120)

CONFIG = """\
storage:
  main: {type: disk, path: cas}
action_caches:
  ac: {type: disk, path: ac}
instances:
  "*": {cas: main, action_cache: ac}
http:
  cache:
    enabled: true
    max_entry_size: 8MiB
    max_action_result_size: 64KiB
    spool_memory: 64KiB
"""


def request(base: str, method: str, path: str, body=None, headers: dict[str, str] | None = None,
            chunked: bool = False) -> tuple[int, bytes, dict[str, str]]:
    u = urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
        r = conn.getresponse()
        return r.status, r.read(), {k.lower(): v for k, v in r.getheaders()}
    finally:
        conn.close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = start_granary(tmp_path_factory.mktemp("httpcache"), CONFIG)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def base(server) -> str:
    return http_url(server)


def test_cas_put_get_head_and_hash_check(base):
    data = os.urandom(3000)
    h = sha(data)
    assert request(base, "GET", f"/cas/{h}")[0] == 404
    assert request(base, "HEAD", f"/cas/{h}")[0] == 404
    assert request(base, "PUT", f"/cas/{h}", data)[0] == 200
    status, body, headers = request(base, "GET", f"/cas/{h}")
    assert status == 200 and body == data and headers["content-length"] == str(len(data))
    status, body, headers = request(base, "HEAD", f"/cas/{h}")
    assert status == 200 and body == b"" and headers["content-length"] == str(len(data))
    # a body that does not hash to its name is refused and never readable
    other = os.urandom(3000)
    wrong = sha(other[::-1])
    status, body, _ = request(base, "PUT", f"/cas/{wrong}", other)
    assert status == 400 and b"hashes to" in body
    assert request(base, "GET", f"/cas/{wrong}")[0] == 404
    # the same through a chunked upload (no Content-Length: spooled while hashed)
    assert request(base, "PUT", f"/cas/{wrong}", iter([other[:1000], other[1000:]]), chunked=True)[0] == 400
    assert request(base, "GET", f"/cas/{wrong}")[0] == 404


def test_chunked_upload_larger_than_memory(base):
    data = os.urandom(300 << 10)  # above spool_memory: goes through a temporary file
    h = sha(data)
    parts = [data[i:i + 50_000] for i in range(0, len(data), 50_000)]
    assert request(base, "PUT", f"/cas/{h}", iter(parts), chunked=True)[0] == 200
    assert request(base, "GET", f"/cas/{h}")[1] == data


def test_zstd_both_ways(base):
    data = b"granary zstd " * 5000
    h = sha(data)
    packed = zstandard.ZstdCompressor().compress(data)
    status, body, _ = request(base, "PUT", f"/cas/{h}", packed, {"Content-Encoding": "zstd"})
    assert status == 400 and b"X-Digest-SizeBytes" in body
    status, _, _ = request(base, "PUT", f"/cas/{h}", packed,
                           {"Content-Encoding": "zstd", "X-Digest-SizeBytes": str(len(data))})
    assert status == 200
    status, body, headers = request(base, "GET", f"/cas/{h}", headers={"Accept-Encoding": "gzip, zstd"})
    assert status == 200 and headers["content-encoding"] == "zstd"
    assert len(body) < len(data)
    assert zstandard.ZstdDecompressor().decompressobj().decompress(body) == data
    status, body, headers = request(base, "GET", f"/cas/{h}")
    assert status == 200 and body == data and "content-encoding" not in headers
    # a zstd body that decompresses to something else is refused
    bad = zstandard.ZstdCompressor().compress(data + b"x")
    h2 = sha(data + b"y")
    status, _, _ = request(base, "PUT", f"/cas/{h2}", bad,
                           {"Content-Encoding": "zstd", "X-Digest-SizeBytes": str(len(data) + 1)})
    assert status == 400
    assert request(base, "GET", f"/cas/{h2}")[0] == 404
    assert request(base, "PUT", f"/cas/{h2}", b"x", {"Content-Encoding": "br"})[0] == 415


def test_action_cache_entries_are_the_grpc_ones(base, server):
    out = os.urandom(500)
    action = b"an Action message, as far as the server cares"
    assert request(base, "PUT", f"/cas/{sha(out)}", out)[0] == 200
    assert request(base, "PUT", f"/cas/{sha(action)}", action)[0] == 200  # Bazel uploads the Action too
    result = re_pb2.ActionResult(exit_code=0)
    result.output_files.add(path="out.bin", digest=digest(out))
    raw = result.SerializeToString()
    assert request(base, "PUT", f"/ac/{sha(action)}", raw)[0] == 200
    status, body, _ = request(base, "GET", f"/ac/{sha(action)}")
    assert status == 200 and re_pb2.ActionResult.FromString(body) == result

    c = Client(server.address)
    try:
        assert c.missing([digest(out), digest(action)]) == []
        got = c.ac.GetActionResult(re_pb2.GetActionResultRequest(action_digest=digest(action)))
        assert got.output_files[0].digest == digest(out)
        # and the other way: a result stored over gRPC is read over HTTP
        action2 = b"another action " + os.urandom(8)
        out2 = os.urandom(100)
        c.upload(action2, out2)
        r2 = re_pb2.ActionResult(exit_code=3)
        r2.output_files.add(path="o", digest=digest(out2))
        c.ac.UpdateActionResult(re_pb2.UpdateActionResultRequest(action_digest=digest(action2), action_result=r2))
        status, body, _ = request(base, "GET", f"/ac/{sha(action2)}")
        assert status == 200 and re_pb2.ActionResult.FromString(body).exit_code == 3
        assert request(base, "GET", f"/cas/{sha(out2)}")[1] == out2
    finally:
        c.close()


def test_incomplete_action_result_is_a_miss(base):
    gone = os.urandom(64)  # never uploaded
    result = re_pb2.ActionResult()
    result.output_files.add(path="x", digest=digest(gone))
    key = sha(b"incomplete " + os.urandom(8))
    assert request(base, "PUT", f"/ac/{key}", result.SerializeToString())[0] == 200
    assert request(base, "GET", f"/ac/{key}")[0] == 404
    assert request(base, "HEAD", f"/ac/{key}")[0] == 404
    assert request(base, "PUT", f"/cas/{sha(gone)}", gone)[0] == 200
    assert request(base, "GET", f"/ac/{key}")[0] == 200


def test_instance_prefix_is_another_instance(base, server):
    data = os.urandom(200)
    h = sha(data)
    assert request(base, "PUT", f"/team/linux/cas/{h}", data)[0] == 200
    assert request(base, "GET", f"/team/linux/cas/{h}")[1] == data
    result = re_pb2.ActionResult()
    result.output_files.add(path="f", digest=digest(data))
    key = sha(b"prefixed " + os.urandom(8))
    assert request(base, "PUT", f"/team/linux/ac/{key}", result.SerializeToString())[0] == 200
    assert request(base, "GET", f"/team/linux/ac/{key}")[0] == 200
    assert request(base, "GET", f"/team/other/ac/{key}")[0] == 404
    assert request(base, "GET", f"/ac/{key}")[0] == 404
    c = Client(server.address, "team/linux")
    try:
        assert c.missing([digest(data)]) == []
    finally:
        c.close()


def test_malformed_and_oversized_requests(base):
    assert request(base, "GET", "/cas/XYZ")[0] == 400
    assert request(base, "GET", f"/cas/{'A' * 64}")[0] == 400
    assert request(base, "DELETE", f"/cas/{'a' * 64}")[0] == 405
    assert request(base, "PUT", f"/ac/{'a' * 64}", b"\xff\xff\xff not a protobuf")[0] == 400
    big = os.urandom((8 << 20) + 1)
    assert request(base, "PUT", f"/cas/{sha(big)}", big)[0] == 413
    assert request(base, "GET", f"/cas/{sha(big)}")[0] == 404
    assert request(base, "PUT", f"/cas/{sha(big)}", iter([big]), chunked=True)[0] == 413
    assert request(base, "PUT", "/cache/0123abcd", big)[0] == 413
    assert request(base, "PUT", f"/ac/{'b' * 64}", os.urandom(65 << 10))[0] == 413
    # Expect: 100-continue with an announced oversized body is refused before it is sent
    u = urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.putrequest("PUT", "/cache/fedcba98")
        conn.putheader("Content-Length", str(100 << 20))
        conn.putheader("Expect", "100-continue")
        conn.endheaders()
        assert conn.getresponse().status == 413
    finally:
        conn.close()
    assert request(base, "GET", "/ccache/not/a/subdirs/path")[0] == 400
    assert request(base, "GET", "/healthz")[0] == 200  # and the server is still fine


def test_opaque_entries_gradle_and_ccache(base, server):
    art = os.urandom(2 << 20)  # spooled to a file (above spool_memory), stored through the writer
    headers = {"Content-Type": "application/vnd.gradle.build-cache-artifact.v2"}
    assert request(base, "GET", "/cache/9f86d081884c7d65")[0] == 404
    assert request(base, "PUT", "/cache/9f86d081884c7d65", art, headers)[0] == 200
    status, body, _ = request(base, "GET", "/cache/9f86d081884c7d65")
    assert status == 200 and body == art
    assert request(base, "HEAD", "/cache/9f86d081884c7d65")[2]["content-length"] == str(len(art))
    assert request(base, "PUT", "/cache/9f86d081884c7d65", b"replaced", headers)[0] == 200
    assert request(base, "GET", "/cache/9f86d081884c7d65")[1] == b"replaced"
    assert request(base, "DELETE", "/cache/9f86d081884c7d65")[0] == 405
    # ccache: subdirs layout (the default), DELETE allowed; its namespace is not Gradle's
    assert request(base, "PUT", "/ccache/9f/86d081884c7d65", b"cc entry")[0] == 200
    assert request(base, "GET", "/ccache/9f/86d081884c7d65")[1] == b"cc entry"
    assert request(base, "GET", "/cache/9f86d081884c7d65")[1] == b"replaced"
    assert request(base, "DELETE", "/ccache/9f/86d081884c7d65")[0] == 200
    assert request(base, "GET", "/ccache/9f/86d081884c7d65")[0] == 404
    # the entry bytes are ordinary CAS blobs (size-bounded and evicted with the rest)
    c = Client(server.address)
    try:
        assert c.missing([digest(art)]) == []
    finally:
        c.close()


AUTH_CONFIG = CONFIG + """\
auth:
  htpasswd: htpasswd
  rules:
    - {identities: [reader, writer, acwriter], instance: "", permissions: [cache-read]}
    - {identities: [writer, acwriter], instance: "", permissions: [cache-write]}
    - {identities: [acwriter], instance: "", permissions: [ac-write]}
"""


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_permissions_are_the_grpc_ones(tmp_path):
    data_dir = tmp_path / "granary-data"
    data_dir.mkdir()
    users = ("reader", "writer", "acwriter")
    (data_dir / "htpasswd").write_text("".join(
        f"{u}:{bcrypt.hashpw(b'pw-' + u.encode(), bcrypt.gensalt(rounds=4)).decode()}\n" for u in users))
    reader, writer, acwriter = (_basic(u, f"pw-{u}") for u in users)
    with start_granary(tmp_path, AUTH_CONFIG) as s:
        base = http_url(s)
        blob = os.urandom(100)
        h = sha(blob)
        status, _, headers = request(base, "GET", f"/cas/{h}")
        assert status == 401 and headers["www-authenticate"].startswith("Basic")
        assert request(base, "GET", f"/cas/{h}", headers=_basic("reader", "wrong"))[0] == 401
        assert request(base, "PUT", f"/cas/{h}", blob, reader)[0] == 403
        assert request(base, "PUT", f"/cas/{h}", blob, writer)[0] == 200
        assert request(base, "GET", f"/cas/{h}", headers=reader)[1] == blob
        result = re_pb2.ActionResult()
        result.output_files.add(path="f", digest=digest(blob))
        raw = result.SerializeToString()
        assert request(base, "PUT", f"/ac/{'c' * 64}", raw, writer)[0] == 403
        assert request(base, "PUT", f"/ac/{'c' * 64}", raw, acwriter)[0] == 200
        assert request(base, "GET", f"/ac/{'c' * 64}", headers=reader)[0] == 200
        # opaque entries write a blob and an index record: cache-write and ac-write
        assert request(base, "PUT", "/cache/abc123", b"g", writer)[0] == 403
        assert request(base, "PUT", "/cache/abc123", b"g", acwriter)[0] == 200
        assert request(base, "GET", "/cache/abc123", headers=reader)[1] == b"g"
        # over gRPC the same credentials mean the same: reader may not write
        c = Client(s.address)
        try:
            md = (("authorization", reader["Authorization"]),)
            with pytest.raises(grpc.RpcError) as e:
                c.cas.BatchUpdateBlobs(re_pb2.BatchUpdateBlobsRequest(requests=[
                    re_pb2.BatchUpdateBlobsRequest.Request(digest=digest(b"z"), data=b"z")]), metadata=md)
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        finally:
            c.close()


SMALL_CAS = """\
storage:
  small: {type: memory, max_size: 1MiB}
instances:
  "*": {cas: small, action_cache: {type: memory}}
http:
  cache: {enabled: true}
"""


def test_opaque_entries_share_the_cas_bound_and_eviction(tmp_path):
    """Entries live in the CAS: past its max_size the least recently used go, and their keys then
    miss (404) instead of answering with missing bytes; an entry larger than the CAS is a 413."""
    with start_granary(tmp_path, SMALL_CAS) as s:
        base = http_url(s)
        first, second = os.urandom(600 << 10), os.urandom(600 << 10)
        assert request(base, "PUT", "/cache/aaaa", first)[0] == 200
        assert request(base, "GET", "/cache/aaaa")[1] == first
        assert request(base, "PUT", "/ccache/bb/bbbb", second)[0] == 200  # pushes `first` out
        assert request(base, "GET", "/cache/aaaa")[0] == 404
        assert request(base, "HEAD", "/cache/aaaa")[0] == 404
        assert request(base, "GET", "/ccache/bb/bbbb")[1] == second
        assert request(base, "PUT", "/cache/cccc", os.urandom((1 << 20) + 1))[0] == 413
        assert request(base, "GET", "/healthz")[0] == 200


def test_several_server_processes_share_entries(tmp_path):
    """With two server processes on the port (SO_REUSEPORT), any may answer: a blob or entry one
    stored is found by the other (the size and key records are in the shared Action Cache)."""
    server = start_granary(tmp_path, CONFIG, processes=2)
    try:
        base = http_url(server)
        blobs = [os.urandom(1000 + i) for i in range(24)]
        for i, b in enumerate(blobs):  # a new connection each: either process may take it
            assert request(base, "PUT", f"/cas/{sha(b)}", b)[0] == 200
            assert request(base, "PUT", f"/cache/k{i}", b)[0] == 200
        for i, b in enumerate(blobs):
            assert request(base, "GET", f"/cas/{sha(b)}")[1] == b
            assert request(base, "GET", f"/cache/k{i}")[1] == b
    finally:
        server.stop()
