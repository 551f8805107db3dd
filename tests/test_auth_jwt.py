"""OIDC/JWT bearer tokens over real gRPC, with the issuer's discovery document and JWKS
served from a local HTTP server."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import jwt
import pytest
from authutil import AuthServer, JwtIssuer
from cryptography.hazmat.primitives import serialization

from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from granary.auth.identity import AuthMethod
from granary.auth.settings import AuthSettings, build_auth


class IdentityProvider:
    """/.well-known/openid-configuration and /jwks.json on a loopback port; counts JWKS fetches."""

    def __init__(self) -> None:
        self.jwks: dict = {"keys": []}
        self.jwks_fetches = 0
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/.well-known/openid-configuration":
                    body = {"issuer": provider.issuer, "jwks_uri": provider.issuer + "/jwks.json"}
                elif self.path == "/jwks.json":
                    provider.jwks_fetches += 1
                    body = provider.jwks
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def find_missing(stub, token: str | None, instance: str = "") -> int:
    d = re_pb2.Digest(hash=hashlib.sha256(os.urandom(8)).hexdigest(), size_bytes=8)
    md = (("authorization", f"Bearer {token}"),) if token is not None else ()
    req = re_pb2.FindMissingBlobsRequest(instance_name=instance, blob_digests=[d])
    return len(stub.FindMissingBlobs(req, metadata=md, timeout=30).missing_blob_digests)


def refused(stub, token: str, instance: str = "") -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as exc:
        find_missing(stub, token, instance)
    return exc.value.code(), exc.value.details()


@pytest.fixture(scope="module")
def idp():
    p = IdentityProvider()
    yield p
    p.stop()


@pytest.fixture(scope="module")
def setup(idp, tmp_path_factory):
    signer = JwtIssuer(idp.issuer)
    idp.jwks = signer.jwks()
    settings = AuthSettings.model_validate({
        "jwt": {"issuer": idp.issuer, "audience": "granary", "groups_claim": "groups", "refetch_min_seconds": 0},
        "rules": [
            {"instance": "ci/", "groups": ["builders"], "permissions": ["cache-read"]},
            {"instance": "repo/", "claims": {"repository": ["org/app", "org/lib"]}, "permissions": ["cache-read"]},
            {"instance": "", "identities": ["admin-job"], "permissions": ["admin"]},
        ],
    })
    runtime = build_auth(settings, tmp_path_factory.mktemp("jwt"))
    with AuthServer(runtime) as server:
        channel = grpc.insecure_channel(server.address)
        yield server, re_grpc.ContentAddressableStorageStub(channel), signer
        channel.close()


def test_valid_jwt_names_the_caller_and_its_groups_match_rules(setup):
    server, stub, signer = setup
    assert find_missing(stub, signer.token("job-1", groups=["builders"]), "ci/linux") == 1
    who = server.seen[-1]
    assert (who.name, who.method, who.groups) == ("job-1", AuthMethod.JWT, frozenset({"builders"}))
    code, msg = refused(stub, signer.token("job-1", groups=["builders"]), "other")
    assert code == grpc.StatusCode.PERMISSION_DENIED and "'job-1' (jwt)" in msg
    code, _ = refused(stub, signer.token("job-2", groups=["visitors"]), "ci/linux")
    assert code == grpc.StatusCode.PERMISSION_DENIED
    # claim rules: any listed value matches
    assert find_missing(stub, signer.token("job-3", repository="org/lib"), "repo/x") == 1
    assert refused(stub, signer.token("job-3", repository="org/evil"), "repo/x")[0] == grpc.StatusCode.PERMISSION_DENIED
    # admin implies every permission
    assert find_missing(stub, signer.token("admin-job"), "anything") == 1


@pytest.mark.parametrize(
    "make, phrase",
    [
        (lambda s: s.token(audience="someone-else"), "audience"),
        (lambda s: s.token(issuer="https://evil.example"), "issuer"),
        (lambda s: s.token(expires_in=-120), "expired"),
        (lambda s: s.token(expires_in=-600, groups=["builders"]), "expired"),
    ],
)
def test_wrong_claims_are_unauthenticated(setup, make, phrase):
    _, stub, signer = setup
    code, msg = refused(stub, make(signer), "ci/linux")
    assert code == grpc.StatusCode.UNAUTHENTICATED and phrase in msg


def test_expiry_within_leeway_is_accepted(setup):
    _, stub, signer = setup
    assert find_missing(stub, signer.token("late", expires_in=-5, groups=["builders"]), "ci/x") == 1


def test_bad_signature_alg_none_and_hmac_confusion_are_refused(setup):
    _, stub, signer = setup
    impostor = JwtIssuer(signer.issuer, kid=signer.kid)  # same key id, different key
    code, msg = refused(stub, impostor.token(groups=["builders"]), "ci/x")
    assert code == grpc.StatusCode.UNAUTHENTICATED and "signature" in msg

    good = signer.token(groups=["builders"])
    header, payload, _ = good.split(".")
    none_header = base64.urlsafe_b64encode(json.dumps({"alg": "none", "kid": signer.kid}).encode()).rstrip(b"=")
    code, msg = refused(stub, f"{none_header.decode()}.{payload}.", "ci/x")
    assert code == grpc.StatusCode.UNAUTHENTICATED and "'none'" in msg

    # HS256 keyed with the public key, the classic algorithm confusion
    public_pem = signer.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    claims = jwt.decode(good, options={"verify_signature": False})
    forged = _hs256(claims, public_pem, signer.kid)
    code, msg = refused(stub, forged, "ci/x")
    assert code == grpc.StatusCode.UNAUTHENTICATED and "HS256" in msg

    # tampered payload with the original signature
    tampered = json.loads(base64.urlsafe_b64decode(payload + "=="))
    tampered["sub"] = "admin-job"
    body = base64.urlsafe_b64encode(json.dumps(tampered).encode()).rstrip(b"=").decode()
    code, _ = refused(stub, f"{header}.{body}.{good.split('.')[2]}", "ci/x")
    assert code == grpc.StatusCode.UNAUTHENTICATED


def _hs256(claims: dict, secret: bytes, kid: str) -> str:
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode()) + "." + b64(
        json.dumps(claims).encode()
    )
    sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(sig)


def test_key_rotation_refetches_the_jwks_for_an_unknown_kid(setup, idp):
    _, stub, signer = setup
    rotated = JwtIssuer(signer.issuer, kid="key-2")
    idp.jwks = {"keys": signer.jwks()["keys"] + rotated.jwks()["keys"]}
    before = idp.jwks_fetches
    assert find_missing(stub, rotated.token("job-r", groups=["builders"]), "ci/x") == 1
    assert idp.jwks_fetches == before + 1
    # unknown key ids: one fetch each at most (refetch_min_seconds is 0 here), then refused
    stranger = JwtIssuer(signer.issuer, kid="key-unknown")
    code, msg = refused(stub, stranger.token(groups=["builders"]), "ci/x")
    assert code == grpc.StatusCode.UNAUTHENTICATED and "key-unknown" in msg


def test_unknown_kid_refetch_is_rate_limited(idp, tmp_path):
    signer = JwtIssuer(idp.issuer, kid="rl-1")
    idp.jwks = signer.jwks()
    settings = AuthSettings.model_validate({
        "jwt": {"issuer": idp.issuer, "audience": "granary", "refetch_min_seconds": 3600},
        "rules": [{"instance": "", "identities": ["*"], "permissions": ["cache-read"]}],
    })
    with AuthServer(build_auth(settings, tmp_path)) as server:
        channel = grpc.insecure_channel(server.address)
        stub = re_grpc.ContentAddressableStorageStub(channel)
        assert find_missing(stub, signer.token()) == 1
        fetched = idp.jwks_fetches
        stranger = JwtIssuer(idp.issuer, kid="nobody-knows")
        for _ in range(5):
            assert refused(stub, stranger.token())[0] == grpc.StatusCode.UNAUTHENTICATED
        assert idp.jwks_fetches == fetched  # within refetch_min_seconds of the first fetch
        channel.close()


def test_jwks_from_a_file(tmp_path):
    signer = JwtIssuer("https://issuer.invalid")
    (tmp_path / "jwks.json").write_text(json.dumps(signer.jwks()))
    settings = AuthSettings.model_validate({
        "jwt": {"issuer": signer.issuer, "audience": ["granary", "other"], "jwks_file": "jwks.json",
                "name_claim": "email"},
        "rules": [{"instance": "", "identities": ["dev@example.com"], "permissions": ["cache-read"]}],
    })
    with AuthServer(build_auth(settings, tmp_path)) as server:
        channel = grpc.insecure_channel(server.address)
        stub = re_grpc.ContentAddressableStorageStub(channel)
        assert find_missing(stub, signer.token(email="dev@example.com")) == 1
        assert server.seen[-1].name == "dev@example.com"
        code, msg = refused(stub, signer.token())  # no email claim
        assert code == grpc.StatusCode.UNAUTHENTICATED and "'email'" in msg
        channel.close()


def test_settings_refuse_unsafe_algorithms():
    for algs in (["none"], ["HS256"], []):
        with pytest.raises(ValueError, match="not allowed"):
            AuthSettings.model_validate({"jwt": {"issuer": "i", "audience": "a", "algorithms": algs}})


def test_a_remembered_token_still_expires(tmp_path):
    import asyncio
    import time

    from granary.auth.jwt_auth import JwtOptions, JwtVerifier
    from granary.errors import Unauthenticated

    signer = JwtIssuer("https://issuer.invalid")
    (tmp_path / "jwks.json").write_text(json.dumps(signer.jwks()))
    verifier = JwtVerifier(JwtOptions(issuer=signer.issuer, audience="granary", jwks_file=tmp_path / "jwks.json",
                                      leeway=0))
    token = signer.token("short", expires_in=2)
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]

    async def twice() -> None:
        assert (await verifier.authenticate(token, "authorization")).name == "short"
        assert (await verifier.authenticate(token, "authorization")).name == "short"  # remembered
        while time.time() < exp + 0.1:
            await asyncio.sleep(0.1)
        with pytest.raises(Unauthenticated, match="expired"):
            await verifier.authenticate(token, "authorization")

    asyncio.run(twice())
