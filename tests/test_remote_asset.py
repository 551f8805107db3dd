"""Remote Asset API (Fetch, Push) against a real `granary serve` and a local HTTP origin."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
import zipfile

import grpc
import pytest
from assetutil import AssetClient, Origin, sri
from google.rpc import error_details_pb2, status_pb2
from reapi import Client, digest
from serverutil import start_granary

from granary._proto.build.bazel.remote.asset.v1 import remote_asset_pb2 as ra_pb2
from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2

pytestmark = pytest.mark.timeout(300)

CONFIG = """\
storage:
  main: {{type: disk, path: cas}}
instances:
  "": {{cas: main}}
remote_asset:
  allowed_hosts: ["127.0.0.1"]
  max_size: {max_size}
  archive_max_ratio: 100
{extra}"""


def config(max_size: str = "1MiB", extra: str = "") -> str:
    return CONFIG.format(max_size=max_size, extra=extra)


@pytest.fixture
def origin():
    with Origin() as o:
        yield o


@pytest.fixture
def granary(tmp_path):
    with start_granary(tmp_path / "g", config()) as g:
        yield g


@pytest.fixture
def client(granary):
    c = AssetClient(granary.address)
    yield c
    c.close()


def _read(address: str, d: re_pb2.Digest) -> bytes:
    c = Client(address)
    try:
        resp = c.cas.BatchReadBlobs(re_pb2.BatchReadBlobsRequest(digests=[d]))
        assert resp.responses[0].status.code == 0, resp.responses[0].status
        return resp.responses[0].data
    finally:
        c.close()


def _error(e: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    return e.code(), e.details()


# ---- FetchBlob ----------------------------------------------------------------------


def test_fetch_blob_then_served_from_records_without_origin(tmp_path, origin):
    data = os.urandom(300_000)
    origin.files["/f.bin"] = data
    with start_granary(tmp_path / "g", config()) as g:
        c = AssetClient(g.address)
        resp = c.fetch_blob([origin.url("/f.bin")], {"checksum.sri": sri(data)})
        assert resp.status.code == 0
        assert resp.uri == origin.url("/f.bin")
        assert resp.blob_digest == digest(data)
        assert resp.digest_function == re_pb2.DigestFunction.SHA256
        assert _read(g.address, resp.blob_digest) == data
        assert len(origin.requests) == 1
        c.close()
    url = origin.url("/f.bin")
    origin.stop()
    # a new server process on the same data directory: the record (SQLite) and the blob (disk CAS) remain
    with start_granary(tmp_path / "g", config()) as g:
        c = AssetClient(g.address)
        again = c.fetch_blob([url], {"checksum.sri": sri(data)})
        assert again.blob_digest == digest(data)
        # content obtained before oldest_content_accepted does not count: the origin is asked, and is gone
        with pytest.raises(grpc.RpcError) as e:
            c.fetch_blob([url], {"checksum.sri": sri(data)}, oldest=time.time() + 3600)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        # other qualifiers are another record
        with pytest.raises(grpc.RpcError) as e:
            c.fetch_blob([url], {"checksum.sri": sri(data), "bazel.canonical_id": "other"})
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        c.close()


def test_server_processes_share_the_records(tmp_path, origin, database):
    """`database` (conftest): the default SQLite file, then a PostgreSQL database."""
    data = b"shared by processes"
    origin.files["/s"] = data
    extra = f'  database: "{database}"\n' if database else ""
    with start_granary(tmp_path / "g", config(extra=extra), processes=2) as g:
        c = AssetClient(g.address)
        assert c.fetch_blob([origin.url("/s")], {"checksum.sri": sri(data)}).blob_digest == digest(data)
        c.close()
        url = origin.url("/s")
        origin.stop()
        # new connections land on either process (SO_REUSEPORT); each must answer from the shared record
        for _ in range(12):
            c = AssetClient(g.address)
            assert c.fetch_blob([url], {"checksum.sri": sri(data)}).blob_digest == digest(data)
            c.close()


def test_record_whose_blob_left_the_cas_is_not_returned(tmp_path, origin):
    data = b"evicted content " * 100
    origin.files["/e"] = data
    cfg = CONFIG.replace("{type: disk, path: cas}", "{type: memory}").format(max_size="1MiB", extra="")
    with start_granary(tmp_path / "g", cfg) as g:
        c = AssetClient(g.address)
        assert c.fetch_blob([origin.url("/e")], {"checksum.sri": sri(data)}).blob_digest == digest(data)
        c.close()
    with start_granary(tmp_path / "g", cfg) as g:  # memory CAS: the blob is gone, the record is not
        c = AssetClient(g.address)
        assert c.fetch_blob([origin.url("/e")], {"checksum.sri": sri(data)}).blob_digest == digest(data)
        assert len(origin.requests) == 2  # downloaded again
        assert _read(g.address, digest(data)) == data
        c.close()


def test_mirrors_are_tried_in_order(client, origin):
    data = b"mirrored"
    origin.files["/m"] = data
    resp = client.fetch_blob([origin.url("/missing"), origin.url("/m")], {"checksum.sri": sri(data)})
    assert resp.uri == origin.url("/m")
    assert resp.blob_digest == digest(data)
    with pytest.raises(grpc.RpcError) as e:
        client.fetch_blob([origin.url("/missing"), origin.url("/missing2")])
    code, message = _error(e.value)
    assert code == grpc.StatusCode.NOT_FOUND
    assert "/missing:" in message and "/missing2:" in message


def test_sri_mismatch_is_aborted_naming_both_hashes(client, granary, origin):
    data = b"the real content"
    origin.files["/x"] = data
    wanted = sri(b"something else")
    with pytest.raises(grpc.RpcError) as e:
        client.fetch_blob([origin.url("/x")], {"checksum.sri": wanted})
    code, message = _error(e.value)
    assert code == grpc.StatusCode.ABORTED
    assert wanted in message and sri(data) in message
    # nothing recorded: the right checksum still downloads
    assert client.fetch_blob([origin.url("/x")], {"checksum.sri": sri(data)}).blob_digest == digest(data)
    # sha384 and sha512 are checked too
    assert client.fetch_blob([origin.url("/x")], {"checksum.sri": sri(data, "sha512")}).blob_digest == digest(data)
    with pytest.raises(grpc.RpcError) as e:
        client.fetch_blob([origin.url("/x")], {"checksum.sri": sri(b"nope", "sha384")})
    assert e.value.code() == grpc.StatusCode.ABORTED


def test_disallowed_hosts_schemes_and_redirects(client, origin):
    origin.files["/ok"] = b"ok"
    for uri in (
        origin.url("/ok", host="localhost"),  # only 127.0.0.1 is allowed
        "file:///etc/passwd",
        "ftp://127.0.0.1/x",
        origin.url("/redirect?to=" + origin.url("/ok", host="localhost")),
        origin.url("/redirect?to=file:///etc/passwd"),
    ):
        with pytest.raises(grpc.RpcError) as e:
            client.fetch_blob([uri])
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED, (uri, e.value.details())
    assert all("localhost" not in h.get("Host", "") for _, h in origin.requests)
    # a redirect to an allowed host is followed
    resp = client.fetch_blob([origin.url("/redirect?to=" + origin.url("/ok"))], {"checksum.sri": sri(b"ok")})
    assert resp.blob_digest == digest(b"ok")


def test_no_allowed_hosts_refuses_every_download(tmp_path, origin):
    origin.files["/ok"] = b"ok"
    with start_granary(tmp_path / "g", "instances: {'': {cas: {type: memory}}}\nremote_asset:\n") as g:
        c = AssetClient(g.address)
        with pytest.raises(grpc.RpcError) as e:
            c.fetch_blob([origin.url("/ok")])
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "allowed_hosts" in e.value.details()
        c.close()
    assert origin.requests == []


@pytest.mark.parametrize("path", ["/big", "/chunked/big"])
def test_oversized_download_is_refused_and_nothing_is_readable(client, granary, origin, path):
    data = os.urandom((1 << 20) + 1)  # max_size is 1 MiB
    origin.files["/big"] = data
    with pytest.raises(grpc.RpcError) as e:
        client.fetch_blob([origin.url(path)])
    code, message = _error(e.value)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_size" in message
    c = Client(granary.address)
    try:
        assert c.missing([digest(data)]) == [digest(data)]
        prefix = digest(data[: 1 << 20])  # not even the part that came before the limit
        assert c.missing([prefix]) == [prefix]
    finally:
        c.close()
    spool = granary.data_dir / "remote-asset-spool"
    assert not spool.exists() or list(spool.iterdir()) == []


def test_timeout_gives_deadline_exceeded(client, origin):
    origin.files["/t"] = b"late"
    with pytest.raises(grpc.RpcError) as e:
        client.fetch_blob([origin.url("/slow/t")], timeout=0.3)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_bad_qualifiers_are_invalid_argument(client, origin):
    origin.files["/q"] = b"q"
    with pytest.raises(grpc.RpcError) as e:
        client.fetch_blob([origin.url("/q")], {"vcs.commit": "abc", "checksum.sri": sri(b"q"), "resource_type": "x"})
    code, message = _error(e.value)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "'vcs.commit'" in message and "'resource_type'" in message
    status = status_pb2.Status()
    status.ParseFromString(dict(e.value.trailing_metadata())["grpc-status-details-bin"])
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("qualifiers.name", '"vcs.commit" not supported'),
        ("qualifiers.name", '"resource_type" not supported'),
    ]
    for quals in (
        [("checksum.sri", sri(b"q")), ("checksum.sri", sri(b"q"))],  # names must be unique
        [("checksum.sri", "md5-AAAA")],
        [("checksum.sri", "sha256-not base64!")],
        [("checksum.sri", "sha256-" + sri(b"q", "sha512")[7:])],  # wrong length
        [("http_header_url:x:Auth", "v")],
        [("http_header:Bad Name", "v")],
    ):
        with pytest.raises(grpc.RpcError) as e:
            client.fetch_blob([origin.url("/q")], quals)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, quals
    with pytest.raises(grpc.RpcError) as e:
        client.fetch_blob([])
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert origin.requests == []


def test_headers_reach_the_origin(client, origin):
    origin.files["/h"] = b"h"
    uris = [origin.url("/missing"), origin.url("/h")]
    quals = {
        "http_header:X-Everyone": "all",
        "http_header_url:1:X-Second": "second",
        "bazel.auth_headers": json.dumps({origin.url("/h"): {"Authorization": "Bearer t"}}),
        "bazel.canonical_id": "canon",
    }
    assert client.fetch_blob(uris, quals).blob_digest == digest(b"h")
    first, second = origin.requests
    assert first[1].get("X-Everyone") == "all" and "X-Second" not in first[1] and "Authorization" not in first[1]
    assert second[1].get("X-Second") == "second" and second[1].get("Authorization") == "Bearer t"


def test_errors_in_the_response_status_when_configured(tmp_path, origin):
    origin.files["/r"] = b"r"
    with start_granary(tmp_path / "g", config(extra="  fetch_errors: response\n")) as g:
        c = AssetClient(g.address)
        resp = c.fetch_blob([origin.url("/r")], {"checksum.sri": sri(b"not r")})
        assert resp.status.code == grpc.StatusCode.ABORTED.value[0]
        assert resp.uri == origin.url("/r")
        assert not resp.HasField("blob_digest")
        c.close()


# ---- FetchDirectory -----------------------------------------------------------------


def _tar_gz(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes, mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    return info, data


def _link(name: str, target: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info, None


def _tree(address: str, root: re_pb2.Digest) -> dict[str, object]:
    """root digest -> {path: bytes | ('link', target) | ('exec', bytes)} read back through the CAS."""
    c = Client(address)
    try:
        dirs = {}
        for page in c.cas.GetTree(re_pb2.GetTreeRequest(root_digest=root)):
            for d in page.directories:
                dirs[hashlib.sha256(d.SerializeToString()).hexdigest()] = d
        out: dict[str, object] = {}

        def walk(d: re_pb2.Directory, prefix: str) -> None:
            for f in d.files:
                data = _read(address, f.digest)
                out[prefix + f.name] = ("exec", data) if f.is_executable else data
            for s in d.symlinks:
                out[prefix + s.name] = ("link", s.target)
            for sub in d.directories:
                walk(dirs[sub.digest.hash], prefix + sub.name + "/")

        walk(dirs[root.hash], "")
        return out
    finally:
        c.close()


def test_fetch_directory_tar_gz(client, granary, origin):
    archive = _tar_gz([
        _file("pkg/README", b"hello\n"),
        _file("pkg/bin/tool", b"#!/bin/sh\necho hi\n", 0o755),
        _file("pkg/empty", b""),
        _link("pkg/bin/alias", "tool"),
        _link("pkg/up", "bin/../README"),
    ])
    origin.files["/a.tar.gz"] = archive
    resp = client.fetch_directory([origin.url("/a.tar.gz")], {"checksum.sri": sri(archive)})
    assert resp.status.code == 0
    assert _tree(granary.address, resp.root_directory_digest) == {
        "pkg/README": b"hello\n",
        "pkg/empty": b"",
        "pkg/bin/tool": ("exec", b"#!/bin/sh\necho hi\n"),
        "pkg/bin/alias": ("link", "tool"),
        "pkg/up": ("link", "bin/../README"),
    }
    # recorded: the same request is answered without the origin
    again = client.fetch_directory([origin.url("/a.tar.gz")], {"checksum.sri": sri(archive)})
    assert again.root_directory_digest == resp.root_directory_digest
    assert len(origin.requests) == 1


def test_fetch_directory_zip(client, granary, origin):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("top/a.txt", b"a" * 1000)
        z.writestr("top/sub/", b"")
    origin.files["/download"] = buf.getvalue()
    resp = client.fetch_directory([origin.url("/download")], {"resource_type": "application/zip"})
    assert _tree(granary.address, resp.root_directory_digest) == {"top/a.txt": b"a" * 1000}


def _zip(name: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("fine.txt", b"fine")
        z.writestr(name, b"escaped")
    return buf.getvalue()


@pytest.mark.parametrize(
    "archive, why",
    [
        (_zip("../evil.txt"), "'..'"),
        (_zip("a/../../evil.txt"), "'..'"),
        (_zip("/etc/evil"), "absolute"),
        (_tar_gz([_file("/abs", b"x")]), "absolute"),
        (_tar_gz([_link("out", "../../etc/passwd")]), "leaves the archive's root"),
        (_tar_gz([_link("abs", "/etc/passwd")]), "absolute"),
        (_tar_gz([_link("d", "."), _file("d/x", b"x")]), "through the symlink"),
        (_tar_gz([_file("big", b"\0" * (8 << 20))]), "archive_max_ratio"),
    ],
    ids=["zip-dotdot", "zip-dotdot-deep", "zip-absolute", "tar-absolute", "symlink-escape", "symlink-absolute",
         "through-symlink", "bomb"],
)
def test_fetch_directory_refuses_unsafe_archives(client, origin, archive, why):
    origin.files["/bad.archive"] = archive
    with pytest.raises(grpc.RpcError) as e:
        client.fetch_directory([origin.url("/bad.archive")])
    code, message = _error(e.value)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert why in message, message


# ---- Push ---------------------------------------------------------------------------


def test_push_blob_then_fetch_without_network(client, granary):
    data = b"pushed content"
    reapi = Client(granary.address)
    try:
        d = digest(data)
        uri = "https://unreachable.invalid/thing.bin"  # neither allowed nor resolvable: only the record answers
        quals = client.qualifiers({"vcs.commit": "abc123", "checksum.sri": sri(data)})
        with pytest.raises(grpc.RpcError) as e:  # not in the CAS yet
            client.push.PushBlob(ra_pb2.PushBlobRequest(uris=[uri], qualifiers=quals, blob_digest=d))
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        reapi.upload(data)
        client.push.PushBlob(ra_pb2.PushBlobRequest(uris=[uri, "urn:x:thing"], qualifiers=quals, blob_digest=d))
        for u in (uri, "urn:x:thing"):
            resp = client.fetch.FetchBlob(ra_pb2.FetchBlobRequest(uris=[u], qualifiers=quals))
            assert resp.blob_digest == d and resp.uri == u
        # different qualifiers are not that record; an unknown qualifier then cannot be downloaded
        with pytest.raises(grpc.RpcError) as e:
            client.fetch.FetchBlob(ra_pb2.FetchBlobRequest(uris=[uri], qualifiers=quals[:1]))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # expire_at in the past: no longer returned
        past = ra_pb2.PushBlobRequest(uris=["urn:x:old"], blob_digest=d)
        past.expire_at.FromSeconds(int(time.time()) - 10)
        client.push.PushBlob(past)
        with pytest.raises(grpc.RpcError) as e:
            client.fetch.FetchBlob(ra_pb2.FetchBlobRequest(uris=["urn:x:old"]))
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED  # urn: is not downloadable
    finally:
        reapi.close()


def test_push_directory_checks_the_whole_tree(client, granary):
    reapi = Client(granary.address)
    try:
        content = b"file in a pushed tree"
        root = re_pb2.Directory(files=[re_pb2.FileNode(name="f", digest=digest(content))])
        root_bytes = root.SerializeToString()
        reapi.upload(root_bytes)
        req = ra_pb2.PushDirectoryRequest(uris=["urn:tree"], root_directory_digest=digest(root_bytes))
        with pytest.raises(grpc.RpcError) as e:
            client.push.PushDirectory(req)
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert digest(content).hash in e.value.details()
        reapi.upload(content)
        client.push.PushDirectory(req)
        resp = client.fetch.FetchDirectory(ra_pb2.FetchDirectoryRequest(uris=["urn:tree"]))
        assert resp.root_directory_digest == digest(root_bytes)
    finally:
        reapi.close()


def test_services_are_off_without_the_section(tmp_path):
    with start_granary(tmp_path / "g", "instances: {'': {cas: {type: memory}}}\n") as g:
        c = AssetClient(g.address)
        with pytest.raises(grpc.RpcError) as e:
            c.fetch_blob(["http://127.0.0.1/x"])
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
        c.close()


def test_auth_fetch_needs_cache_read_and_push_needs_ac_write(tmp_path, origin):
    origin.files["/a"] = b"a"
    cfg = config(extra='auth:\n  anonymous: [{instance: "", permissions: [cache-read]}]\n')
    with start_granary(tmp_path / "g", cfg) as g:
        c = AssetClient(g.address)
        assert c.fetch_blob([origin.url("/a")], {"checksum.sri": sri(b"a")}).blob_digest == digest(b"a")
        with pytest.raises(grpc.RpcError) as e:
            c.push.PushBlob(ra_pb2.PushBlobRequest(uris=["urn:a"], blob_digest=digest(b"a")))
        assert e.value.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
        assert "ac-write" in e.value.details()
        c.close()
