"""TLS and mTLS over real sockets, with certificates made by the test."""

from __future__ import annotations

import base64
import hashlib
import os
import time
from pathlib import Path

import bcrypt
import grpc
import pytest
from authutil import AuthServer, Pki, issue, make_ca

from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from granary.auth.identity import AuthMethod
from granary.auth.settings import AuthSettings, TlsSettings, build_auth
from granary.errors import ConfigError


def find_missing(channel: grpc.Channel, md=(), instance: str = "") -> int:
    d = re_pb2.Digest(hash=hashlib.sha256(os.urandom(8)).hexdigest(), size_bytes=8)
    stub = re_grpc.ContentAddressableStorageStub(channel)
    req = re_pb2.FindMissingBlobsRequest(instance_name=instance, blob_digests=[d])
    return len(stub.FindMissingBlobs(req, metadata=md, timeout=30).missing_blob_digests)


def update_blob(channel: grpc.Channel, md=()) -> None:
    data = os.urandom(16)
    d = re_pb2.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))
    stub = re_grpc.ContentAddressableStorageStub(channel)
    req = re_pb2.BatchUpdateBlobsRequest(requests=[re_pb2.BatchUpdateBlobsRequest.Request(digest=d, data=data)])
    stub.BatchUpdateBlobs(req, metadata=md, timeout=30)


def tls_channel(address: str, ca: bytes, client=None) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca,
        private_key=client.key_pem if client else None,
        certificate_chain=client.cert_pem if client else None,
    )
    return grpc.secure_channel(address, creds)


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki.create()


def _settings(tmp: Path, **extra) -> AuthSettings:
    (tmp / "htpasswd").write_text(f"bob:{bcrypt.hashpw(b'bob-pw', bcrypt.gensalt(rounds=4)).decode()}\n")
    return AuthSettings.model_validate({
        "htpasswd": "htpasswd",
        "rules": [
            {"instance": "", "identities": ["bob", "alice"], "permissions": ["cache-read"]},
            {"instance": "", "identities": ["spiffe://granary.test/alice"], "permissions": ["cache-read", "cache-write"]},
        ],
        **extra,
    })


def test_tls_with_basic_credentials(tmp_path, pki):
    cert, key = pki.server.write(tmp_path, "server")
    tls = TlsSettings(cert=cert, key=key).files(tmp_path)
    with AuthServer(build_auth(_settings(tmp_path), tmp_path), tls) as server:
        channel = tls_channel(server.address, pki.ca.cert_pem)
        md = (("authorization", "Basic " + base64.b64encode(b"bob:bob-pw").decode()),)
        assert find_missing(channel, md) == 1
        assert server.seen[-1].name == "bob" and server.seen[-1].method == AuthMethod.BASIC
        with pytest.raises(grpc.RpcError) as exc:
            find_missing(channel)
        assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
        channel.close()
        # a client that trusts another CA does not talk to this server
        wrong = tls_channel(server.address, pki.other_ca.cert_pem)
        with pytest.raises(grpc.RpcError) as exc:
            find_missing(wrong, md)
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
        wrong.close()
        # plaintext to a TLS port fails too
        plain = grpc.insecure_channel(server.address)
        with pytest.raises(grpc.RpcError) as exc:
            find_missing(plain, md)
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
        plain.close()


@pytest.mark.parametrize("field, name", [("common_name", "alice"),
                                         ("subject_alternative_name", "spiffe://granary.test/alice")])
def test_mtls_identity_from_the_client_certificate(tmp_path, pki, field, name):
    cert, key = pki.server.write(tmp_path, "server")
    (tmp_path / "ca.pem").write_bytes(pki.ca.cert_pem)
    tls = TlsSettings(cert=cert, key=key, client_ca=Path("ca.pem")).files(tmp_path)
    mtls = {"identity": field, "san_prefix": "spiffe://" if field != "common_name" else ""}
    with AuthServer(build_auth(_settings(tmp_path, mtls=mtls), tmp_path), tls) as server:
        channel = tls_channel(server.address, pki.ca.cert_pem, pki.alice)
        assert find_missing(channel) == 1
        assert (server.seen[-1].name, server.seen[-1].method) == (name, AuthMethod.MTLS)
        if field == "common_name":  # alice may only read
            with pytest.raises(grpc.RpcError) as exc:
                update_blob(channel)
            assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "'alice' (mtls)" in exc.value.details()
        else:
            update_blob(channel)
        # header credentials name the caller even on an mTLS connection
        md = (("authorization", "Basic " + base64.b64encode(b"bob:bob-pw").decode()),)
        assert find_missing(channel, md) == 1
        assert server.seen[-1].name == "bob"
        channel.close()

        # a certificate from another CA: the handshake fails, no call is made
        seen = len(server.seen)
        wrong = tls_channel(server.address, pki.ca.cert_pem, pki.mallory)
        with pytest.raises(grpc.RpcError) as exc:
            find_missing(wrong)
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
        wrong.close()
        # no client certificate at all: refused as well
        bare = tls_channel(server.address, pki.ca.cert_pem)
        with pytest.raises(grpc.RpcError) as exc:
            find_missing(bare)
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
        bare.close()
        assert len(server.seen) == seen


def test_certificates_are_reloaded_when_the_files_change(tmp_path, pki):
    cert, key = pki.server.write(tmp_path, "server")
    tls = TlsSettings(cert=cert, key=key).files(tmp_path)
    md = (("authorization", "Basic " + base64.b64encode(b"bob:bob-pw").decode()),)
    with AuthServer(build_auth(_settings(tmp_path), tmp_path), tls) as server:
        first = tls_channel(server.address, pki.ca.cert_pem)
        assert find_missing(first, md) == 1
        first.close()
        new_ca = make_ca("Renewed CA")
        renewed = issue(new_ca, "granary-server", server=True)
        renewed.write(tmp_path, "server")
        os.utime(cert, ns=(0, os.stat(cert).st_mtime_ns + 5_000_000_000))
        deadline = time.monotonic() + 30
        while True:  # each new connection asks for the current certificate
            ch = tls_channel(server.address, new_ca.cert_pem)
            try:
                assert find_missing(ch, md) == 1
                break
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.UNAVAILABLE
                assert time.monotonic() < deadline, "renewed certificate never served"
                time.sleep(0.2)
            finally:
                ch.close()


def test_unusable_certificate_files_are_one_line_config_errors(tmp_path):
    from granary.auth.tls import server_credentials

    (tmp_path / "cert.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match=r"tls.cert: .*cert.pem is not a PEM file"):
        server_credentials(TlsSettings(cert=Path("cert.pem"), key=Path("key.pem")).files(tmp_path))
    with pytest.raises(ConfigError, match=r"tls.key: cannot read .*nokey.pem"):
        (tmp_path / "c.pem").write_text("-----BEGIN CERTIFICATE-----\n")
        server_credentials(TlsSettings(cert=Path("c.pem"), key=Path("nokey.pem")).files(tmp_path))
