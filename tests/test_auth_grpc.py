"""Authentication and per-instance permissions over real gRPC, with Granary's cache servicers."""

from __future__ import annotations

import base64
import hashlib
import os
import time
import uuid
from pathlib import Path

import bcrypt
import grpc
import pytest
from authutil import AuthServer

from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from granary._proto.google.bytestream import bytestream_pb2 as bs_pb2
from granary._proto.google.bytestream import bytestream_pb2_grpc as bs_grpc
from granary.auth.identity import AuthMethod
from granary.auth.settings import AuthSettings, build_auth
from granary.auth.tokens import TokenStore

PASSWORDS = {"alice": "alice-secret", "reader": "reader-secret", "team": "team-secret", "worker": "w0rker"}


def basic(user: str, password: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()),)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def digest(data: bytes) -> re_pb2.Digest:
    return re_pb2.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


class Calls:
    """One gRPC method per permission-relevant operation, each with explicit metadata."""

    def __init__(self, channel: grpc.Channel):
        self.cas = re_grpc.ContentAddressableStorageStub(channel)
        self.ac = re_grpc.ActionCacheStub(channel)
        self.caps = re_grpc.CapabilitiesStub(channel)
        self.bs = bs_grpc.ByteStreamStub(channel)

    def find_missing(self, md, instance: str = "") -> list[re_pb2.Digest]:
        d = digest(os.urandom(32))
        req = re_pb2.FindMissingBlobsRequest(instance_name=instance, blob_digests=[d])
        return list(self.cas.FindMissingBlobs(req, metadata=md, timeout=30).missing_blob_digests)

    def batch_update(self, md, data: bytes, instance: str = "") -> None:
        req = re_pb2.BatchUpdateBlobsRequest(
            instance_name=instance, requests=[re_pb2.BatchUpdateBlobsRequest.Request(digest=digest(data), data=data)]
        )
        resp = self.cas.BatchUpdateBlobs(req, metadata=md, timeout=30)
        assert resp.responses[0].status.code == 0

    def batch_read(self, md, data: bytes, instance: str = "") -> bytes:
        req = re_pb2.BatchReadBlobsRequest(instance_name=instance, digests=[digest(data)])
        return self.cas.BatchReadBlobs(req, metadata=md, timeout=30).responses[0].data

    def bs_write(self, md, data: bytes, instance: str = "") -> int:
        d = digest(data)
        prefix = f"{instance}/" if instance else ""
        name = f"{prefix}uploads/{uuid.uuid4()}/blobs/{d.hash}/{d.size_bytes}"
        reqs = iter([bs_pb2.WriteRequest(resource_name=name, write_offset=0, data=data, finish_write=True)])
        return self.bs.Write(reqs, metadata=md, timeout=30).committed_size

    def bs_read(self, md, data: bytes, instance: str = "") -> bytes:
        d = digest(data)
        prefix = f"{instance}/" if instance else ""
        req = bs_pb2.ReadRequest(resource_name=f"{prefix}blobs/{d.hash}/{d.size_bytes}")
        return b"".join(r.data for r in self.bs.Read(req, metadata=md, timeout=30))

    def update_ac(self, md, action: re_pb2.Digest, instance: str = "") -> None:
        req = re_pb2.UpdateActionResultRequest(
            instance_name=instance, action_digest=action, action_result=re_pb2.ActionResult(exit_code=0)
        )
        self.ac.UpdateActionResult(req, metadata=md, timeout=30)

    def get_ac(self, md, action: re_pb2.Digest, instance: str = "") -> re_pb2.ActionResult:
        req = re_pb2.GetActionResultRequest(instance_name=instance, action_digest=action)
        return self.ac.GetActionResult(req, metadata=md, timeout=30)

    def capabilities(self, md, instance: str = "") -> re_pb2.ServerCapabilities:
        return self.caps.GetCapabilities(re_pb2.GetCapabilitiesRequest(instance_name=instance), metadata=md, timeout=30)


def code_of(fn, *args, **kwargs) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as exc:
        fn(*args, **kwargs)
    return exc.value.code(), exc.value.details()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp: Path = tmp_path_factory.mktemp("auth")
    lines = [f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=4)).decode()}" for u, p in PASSWORDS.items()]
    (tmp / "htpasswd").write_text("\n".join(lines) + "\n")
    settings = AuthSettings.model_validate({
        "htpasswd": str(tmp / "htpasswd"),
        "tokens": {"database": "sqlite:///tokens.sqlite", "cache_seconds": 0.5},
        "anonymous": [{"instance": "public/", "permissions": ["cache-read"]}],
        "rules": [
            {"instance": "", "identities": ["alice"], "permissions": ["cache-read", "cache-write", "ac-write"]},
            {"instance": "", "identities": ["reader"], "permissions": ["cache-read"]},
            {"instance": "team/", "identities": ["team"], "permissions": ["cache-read", "cache-write", "ac-write"]},
            {"instance": "", "identities": ["worker"], "permissions": ["worker"]},
            {"instance": "public", "identities": ["*"], "permissions": ["cache-write"]},
        ],
    })
    runtime = build_auth(settings, tmp)
    with AuthServer(runtime) as server:
        channel = grpc.insecure_channel(server.address)
        yield server, Calls(channel), runtime.authenticator.tokens, tmp
        channel.close()
    runtime.close()


def test_basic_credentials_accepted_and_identity_reaches_the_handler(setup):
    server, calls, _, _ = setup
    before = len(server.seen)
    assert len(calls.find_missing(basic("alice", "alice-secret"))) == 1
    seen = server.seen[before:]
    assert [(i.name, i.method) for i in seen] == [("alice", AuthMethod.BASIC)]


def test_wrong_password_is_unauthenticated(setup):
    _, calls, _, _ = setup
    code, msg = code_of(calls.find_missing, basic("alice", "wrong"))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "alice" in msg and "authorization" in msg
    code, _ = code_of(calls.find_missing, basic("nobody", "alice-secret"))
    assert code == grpc.StatusCode.UNAUTHENTICATED


def test_missing_credentials_are_unauthenticated(setup):
    _, calls, _, _ = setup
    code, msg = code_of(calls.find_missing, ())
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "cache-read" in msg and "needs credentials" in msg


@pytest.mark.parametrize(
    "md, named",
    [
        ((("authorization", "Basic !!!"),), "authorization"),
        ((("authorization", "Basic " + base64.b64encode(b"no-colon").decode()),), "authorization"),
        ((("authorization", "Basic " + base64.b64encode(b"\xff\xfe:\x80junk").decode()),), "authorization"),
        ((("authorization", "Bearer"),), "authorization"),
        ((("authorization", "Bearer    "),), "authorization"),
        ((("authorization", "Bearer not.a.jwt"),), "authorization"),
        ((("authorization", "Bearer gnr_" + "x" * 52),), "authorization"),
        ((("authorization", "Negotiate abc"),), "authorization"),
        ((("authorization", ""),), "authorization"),
        ((("x-granary-token", "%%%~~~###"),), "x-granary-token"),
        ((("x-granary-token", "notatoken"),), "x-granary-token"),
        ((("authorization", "Basic a"), ("authorization", "Basic b")), "authorization"),
    ],
)
def test_garbage_credentials_are_unauthenticated_naming_the_header(setup, md, named):
    _, calls, _, _ = setup
    code, msg = code_of(calls.find_missing, md, instance="public/x")
    assert code == grpc.StatusCode.UNAUTHENTICATED, msg
    assert named in msg


def test_binary_junk_in_a_bin_header_is_ignored_and_junk_token_bytes_refused(setup):
    _, calls, _, _ = setup
    # binary metadata that is not a credential header changes nothing
    md = (("x-whatever-bin", os.urandom(64)),) + basic("reader", "reader-secret")
    assert len(calls.find_missing(md)) == 1
    junk = base64.b85encode(os.urandom(48)).decode().replace(" ", "")
    for md in [(("authorization", junk),), (("authorization", "Bearer " + junk),), (("x-granary-token", junk),)]:
        code, msg = code_of(calls.find_missing, md)
        assert code == grpc.StatusCode.UNAUTHENTICATED, msg


def test_read_only_identity_reads_but_cannot_write(setup):
    _, calls, _, _ = setup
    writer, reader = basic("alice", "alice-secret"), basic("reader", "reader-secret")
    data = os.urandom(100)
    calls.batch_update(writer, data)
    action = digest(os.urandom(20))
    calls.update_ac(writer, action)

    assert len(calls.find_missing(reader)) == 1
    assert calls.batch_read(reader, data) == data
    assert calls.bs_read(reader, data) == data
    assert calls.get_ac(reader, action).exit_code == 0
    for fn, args in [
        (calls.batch_update, (reader, os.urandom(10))),
        (calls.bs_write, (reader, os.urandom(10))),
        (calls.update_ac, (reader, digest(os.urandom(20)))),
    ]:
        code, msg = code_of(fn, *args)
        assert code == grpc.StatusCode.PERMISSION_DENIED, msg
        assert "'reader'" in msg and "instance ''" in msg


def test_each_permission_is_checked_per_instance_prefix(setup):
    _, calls, _, _ = setup
    team = basic("team", "team-secret")
    data = os.urandom(64)
    calls.batch_update(team, data, instance="team/linux")
    assert calls.bs_write(team, data, instance="team") == len(data)
    calls.update_ac(team, digest(data), instance="team/linux")
    assert calls.get_ac(team, digest(data), instance="team/linux").exit_code == 0
    for fn, args in [
        (calls.find_missing, (team,)),
        (calls.batch_update, (team, data)),
        (calls.bs_write, (team, data, "teammates")),
        (calls.bs_read, (team, data, "other")),
        (calls.get_ac, (team, digest(data), "other")),
        (calls.update_ac, (team, digest(data), "teamx/linux")),
    ]:
        code, msg = code_of(fn, *args)
        assert code == grpc.StatusCode.PERMISSION_DENIED, (fn, msg)
    # the worker permission grants nothing on the cache
    code, msg = code_of(calls.find_missing, basic("worker", "w0rker"))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "cache-read" in msg


def test_anonymous_grant_per_instance_prefix(setup):
    server, calls, _, _ = setup
    before = len(server.seen)
    assert len(calls.find_missing((), instance="public/linux")) == 1
    assert server.seen[before].method == AuthMethod.ANONYMOUS
    code, _ = code_of(calls.batch_update, (), os.urandom(10), "public/linux")
    assert code == grpc.StatusCode.UNAUTHENTICATED
    code, _ = code_of(calls.find_missing, (), instance="private")
    assert code == grpc.StatusCode.UNAUTHENTICATED
    # "*" in a rule: any authenticated caller may write there
    calls.batch_update(basic("reader", "reader-secret"), os.urandom(10), "public/linux")


def test_capabilities_are_public_but_wrong_credentials_still_refused(setup):
    _, calls, _, _ = setup
    assert calls.capabilities(()).cache_capabilities.max_batch_total_size_bytes > 0
    assert calls.capabilities(basic("reader", "reader-secret")).cache_capabilities.digest_functions
    code, _ = code_of(calls.capabilities, basic("reader", "nope"))
    assert code == grpc.StatusCode.UNAUTHENTICATED


def test_malformed_request_still_gets_invalid_argument(setup):
    server, _, _, _ = setup
    channel = grpc.insecure_channel(server.address)
    try:
        call = channel.unary_unary(
            "/build.bazel.remote.execution.v2.ContentAddressableStorage/FindMissingBlobs",
            request_serializer=None, response_deserializer=None,
        )
        with pytest.raises(grpc.RpcError) as exc:
            call(b"\xff\xff\xff", metadata=basic("reader", "reader-secret"), timeout=30)
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "FindMissingBlobsRequest" in exc.value.details()
        # without credentials, for a permission anonymous callers have nowhere: refused first
        update = channel.unary_unary(
            "/build.bazel.remote.execution.v2.ContentAddressableStorage/BatchUpdateBlobs",
            request_serializer=None, response_deserializer=None,
        )
        with pytest.raises(grpc.RpcError) as exc:
            update(b"\xff\xff\xff", timeout=30)
        assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        channel.close()


def test_bad_resource_name_is_invalid_argument(setup):
    _, calls, _, _ = setup
    req = bs_pb2.ReadRequest(resource_name="no/such/shape")
    with pytest.raises(grpc.RpcError) as exc:
        list(calls.bs.Read(req, metadata=basic("reader", "reader-secret"), timeout=30))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no/such/shape" in exc.value.details()


def test_tokens_bearer_and_header_scopes_expiry_revocation(setup):
    server, calls, tokens, _ = setup
    assert isinstance(tokens, TokenStore)
    _, secret = tokens.create("alice", ["cache-read"], 3600)
    before = len(server.seen)
    assert len(calls.find_missing(bearer(secret))) == 1
    assert len(calls.find_missing((("x-granary-token", secret),))) == 1
    got = server.seen[before]
    assert (got.name, got.method, got.scopes) == ("alice", AuthMethod.TOKEN, frozenset({"cache-read"}))
    # alice could write, but this token is limited to cache-read
    code, msg = code_of(calls.batch_update, bearer(secret), os.urandom(10))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "scopes [cache-read]" in msg
    # a token whose owner has no rule gets nothing
    _, stranger = tokens.create("stranger", ["cache-read"], 3600)
    assert code_of(calls.find_missing, bearer(stranger))[0] == grpc.StatusCode.PERMISSION_DENIED
    # expired
    _, old = tokens.create("alice", ["cache-read"], -1)
    code, msg = code_of(calls.find_missing, bearer(old))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "expired" in msg
    # limited to an instance prefix
    _, scoped = tokens.create("alice", ["cache-read", "cache-write"], 3600, instance_prefix="team")
    calls.batch_update(bearer(scoped), os.urandom(10), "team/linux")
    assert code_of(calls.find_missing, bearer(scoped))[0] == grpc.StatusCode.PERMISSION_DENIED
    # revoked: honoured within the cache bound (0.5 s here)
    info, doomed = tokens.create("alice", ["cache-read"], None)
    assert len(calls.find_missing(bearer(doomed))) == 1
    assert tokens.revoke(info.id) == 1
    deadline = time.monotonic() + 30
    while True:
        try:
            calls.find_missing(bearer(doomed))
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAUTHENTICATED and "revoked" in e.details()
            break
        assert time.monotonic() < deadline, "revocation never took effect"
        time.sleep(0.1)


def test_htpasswd_reloads_when_the_file_changes(setup):
    _, calls, _, tmp = setup
    path = tmp / "htpasswd"
    original = path.read_text()
    try:
        assert code_of(calls.find_missing, basic("reader", "new-pass"))[0] == grpc.StatusCode.UNAUTHENTICATED
        lines = [ln for ln in original.splitlines() if not ln.startswith("reader:")]
        lines.append(f"reader:{bcrypt.hashpw(b'new-pass', bcrypt.gensalt(rounds=4)).decode()}")
        path.write_text("\n".join(lines) + "\n")
        os.utime(path, ns=(0, os.stat(path).st_mtime_ns + 10_000_000_000))
        deadline = time.monotonic() + 30
        while True:
            try:
                calls.find_missing(basic("reader", "new-pass"))
                break
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.UNAUTHENTICATED
                assert time.monotonic() < deadline, "htpasswd never reloaded"
                time.sleep(0.2)
        assert code_of(calls.find_missing, basic("reader", "reader-secret"))[0] == grpc.StatusCode.UNAUTHENTICATED
    finally:
        path.write_text(original)
        os.utime(path, ns=(0, os.stat(path).st_mtime_ns + 20_000_000_000))


async def _identify(authenticator, md):
    return await authenticator.identify(md)


def test_non_ascii_bytes_in_credential_headers_are_unauthenticated(setup):
    # gRPC clients refuse to send such values; a hand-made HTTP/2 client could, and the
    # authenticator must refuse them with the header's name instead of failing.
    import asyncio

    from granary.errors import Unauthenticated

    server, _, _, _ = setup
    authenticator = server.runtime.authenticator
    for md, named in [
        ((("authorization", b"\xff\x00\x80"),), "authorization"),
        ((("x-granary-token", os.urandom(40) + b"\xff"),), "x-granary-token"),
        ((("authorization", "Basic " + base64.b64encode(os.urandom(30) + b"\xff").decode()),), "authorization"),
    ]:
        with pytest.raises(Unauthenticated) as exc:
            asyncio.run(_identify(authenticator, md))
        assert named in exc.value.message


def test_identity_is_visible_in_a_streaming_handler(setup):
    server, calls, _, _ = setup
    root = re_pb2.Directory().SerializeToString()
    md = basic("alice", "alice-secret")
    calls.batch_update(md, root)
    before = len(server.seen)
    responses = list(calls.cas.GetTree(re_pb2.GetTreeRequest(root_digest=digest(root)), metadata=md, timeout=30))
    assert responses and [(i.name, i.method) for i in server.seen[before:]] == [("alice", AuthMethod.BASIC)]
    with pytest.raises(grpc.RpcError) as exc:
        list(calls.cas.GetTree(re_pb2.GetTreeRequest(root_digest=digest(root)), timeout=30))
    assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_broken_token_database_is_unavailable_not_a_crash(tmp_path):
    from sqlalchemy import text

    settings = AuthSettings.model_validate({
        "tokens": {"database": "sqlite:///t.sqlite", "cache_seconds": 0},
        "rules": [{"instance": "", "identities": ["x"], "permissions": ["cache-read"]}],
    })
    runtime = build_auth(settings, tmp_path)
    tokens = runtime.authenticator.tokens
    assert tokens is not None
    _, secret = tokens.create("x", ["cache-read"], 60)
    with AuthServer(runtime) as server, grpc.insecure_channel(server.address) as channel:
        calls = Calls(channel)
        assert len(calls.find_missing(bearer(secret))) == 1
        with tokens.engine.begin() as conn:
            conn.execute(text("DROP TABLE granary_tokens"))
        code, msg = code_of(calls.find_missing, bearer(secret))
        assert code == grpc.StatusCode.UNAVAILABLE and "cannot check credentials" in msg
        code, _ = code_of(calls.find_missing, ())  # still answers the next call
        assert code == grpc.StatusCode.UNAUTHENTICATED
    runtime.close()


def test_empty_write_stream(setup):
    _, calls, _, _ = setup
    code, _ = code_of(calls.bs.Write, iter([]), timeout=30)
    assert code == grpc.StatusCode.UNAUTHENTICATED
    code, msg = code_of(calls.bs.Write, iter([]), metadata=basic("alice", "alice-secret"), timeout=30)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "first request" in msg
