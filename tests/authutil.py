"""Test helpers for authentication: certificates, signing keys, and a real gRPC server
with Granary's cache servicers behind the auth interceptor, run in a thread."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from granary._proto.google.bytestream import bytestream_pb2 as bs_pb2
from granary.actioncache.actioncache import ActionCache
from granary.actioncache.store import MemoryActionCacheStore
from granary.auth.identity import Identity, current_identity
from granary.auth.interceptor import AuthInterceptor
from granary.auth.settings import AuthRuntime
from granary.auth.tls import TlsFiles, server_credentials
from granary.cas.cas import ContentAddressableStorage
from granary.cas.memory import MemoryBlobStore
from granary.instance import Instance, Instances
from granary.services.ac_service import ActionCacheService
from granary.services.bytestream_service import ByteStreamService
from granary.services.capabilities_service import CapabilitiesService
from granary.services.cas_service import CasService
from granary.services.registry import add_servicer

# ---- certificates ---------------------------------------------------------------------


def _pem_key(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass
class Cert:
    cert_pem: bytes
    key_pem: bytes
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        c, k = directory / f"{stem}.crt", directory / f"{stem}.key"
        c.write_bytes(self.cert_pem)
        k.write_bytes(self.key_pem)
        return c, k


def make_ca(cn: str) -> Cert:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    return Cert(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key), cert, key)


def issue(ca: Cert, cn: str, *, server: bool = False, sans: list[x509.GeneralName] | None = None) -> Cert:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH if server else x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    names = list(sans or [])
    if server:
        names += [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    return Cert(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key), cert, key)


@dataclass
class Pki:
    ca: Cert
    server: Cert
    alice: Cert  # client certificate, CN alice, SAN spiffe://granary.test/alice
    other_ca: Cert
    mallory: Cert  # client certificate from other_ca

    @classmethod
    def create(cls) -> Pki:
        ca = make_ca("Granary Test CA")
        other = make_ca("Some Other CA")
        alice = issue(ca, "alice", sans=[x509.UniformResourceIdentifier("spiffe://granary.test/alice")])
        return cls(ca, issue(ca, "granary-server", server=True), alice, other, issue(other, "alice"))


# ---- JWT ------------------------------------------------------------------------------


class JwtIssuer:
    """An RSA signing key, its JWKS, and tokens signed with it."""

    def __init__(self, issuer: str, kid: str = "key-1"):
        self.issuer = issuer
        self.kid = kid
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwks(self) -> dict:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update({"kid": self.kid, "use": "sig", "alg": "RS256"})
        return {"keys": [jwk]}

    def token(self, sub: str = "ci-job", *, audience: str = "granary", issuer: str | None = None,
              expires_in: float = 300, kid: str | None = None, **claims) -> str:
        now = int(time.time())
        payload = {"sub": sub, "aud": audience, "iss": issuer or self.issuer, "iat": now, "exp": now + int(expires_in)}
        payload.update(claims)
        return jwt.encode(payload, self.key, algorithm="RS256", headers={"kid": kid or self.kid})


# ---- the server --------------------------------------------------------------------------


def memory_instances(store: MemoryActionCacheStore | None = None) -> Instances:
    cas = ContentAddressableStorage(MemoryBlobStore(64 << 20))
    store = store or MemoryActionCacheStore()

    def make(name: str) -> Instance:
        return Instance(name, cas, ActionCache(store, cas, namespace=name))

    return Instances({}, make)


class RecordingCas(CasService):
    """Granary's CAS servicer that also records the identity its FindMissingBlobs saw."""

    seen: list[Identity]

    async def FindMissingBlobs(self, request, context):
        self.seen.append(current_identity())
        return await super().FindMissingBlobs(request, context)

    async def GetTree(self, request, context):  # a server-streaming method
        async for response in super().GetTree(request, context):
            self.seen.append(current_identity())
            yield response


class AuthServer:
    """grpc.aio server on a loopback port, in its own thread and event loop."""

    def __init__(
        self,
        runtime: AuthRuntime | None,
        tls: TlsFiles | None = None,
        interceptor: bool = True,
        extra: Callable[[grpc.aio.Server], None] | None = None,
    ):
        self.runtime = runtime
        self.extra = extra
        self.tls = tls
        self.use_interceptor = interceptor and runtime is not None
        self.seen: list[Identity] = []
        self.ac_store = MemoryActionCacheStore()
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> AuthServer:  # noqa: PYI034
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("test server did not start")
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def action_results(self) -> int:
        """How many action results the server holds."""

        async def count() -> int:
            return len([k async for k, _, _ in self.ac_store.iterate()])

        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(count(), self._loop).result(30)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as e:  # noqa: BLE001 - reported to the test thread
            self._error = e
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        interceptors = []
        if self.use_interceptor:
            assert self.runtime is not None
            interceptors.append(AuthInterceptor(self.runtime.authenticator, self.runtime.policy))
        server = grpc.aio.server(interceptors=interceptors)
        instances = memory_instances(self.ac_store)
        cas = RecordingCas(instances)
        cas.seen = self.seen
        services = re_pb2.DESCRIPTOR.services_by_name
        add_servicer(server, cas, services["ContentAddressableStorage"])
        add_servicer(server, ActionCacheService(instances), services["ActionCache"])
        add_servicer(server, CapabilitiesService(instances), services["Capabilities"])
        add_servicer(server, ByteStreamService(instances), bs_pb2.DESCRIPTOR.services_by_name["ByteStream"])
        if self.extra is not None:
            self.extra(server)
        if self.tls is None:
            self.port = server.add_insecure_port("127.0.0.1:0")
        else:
            self.port = server.add_secure_port("127.0.0.1:0", server_credentials(self.tls))
        await server.start()
        self._ready.set()
        await self._stop.wait()
        await server.stop(grace=1)
