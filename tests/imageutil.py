"""A real registry (Debian's docker-registry) on loopback, and images the tests build themselves.

Images are root filesystems made from busybox-static (/bin/busybox and its applet links), packed
into gzip tar layers and an OCI/Docker v2 manifest by the code below and pushed with the Registry
HTTP API v2 (monolithic blob uploads, manifest PUT).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import shutil
import socket
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
BUSYBOX = "/bin/busybox"
APPLETS = ("sh", "cat", "echo", "ls", "mkdir", "cp", "env", "pwd", "test", "true", "false", "id", "rm", "touch")


def have_registry() -> bool:
    return shutil.which("docker-registry") is not None and Path(BUSYBOX).is_file()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Registry:
    host: str  # 127.0.0.1:PORT
    storage: Path  # the registry's filesystem storage
    basic: str = ""  # Authorization header for pushes ("" when the registry needs none)
    log: Path | None = None  # the registry's access log

    def blob_gets(self, digest: str) -> int:
        """How many times the registry has served the blob (GET /v2/REPO/blobs/DIGEST), from its access log."""
        assert self.log is not None
        return sum(1 for line in self.log.read_text().splitlines()
                   if '"GET /v2/' in line and f"/blobs/{digest} " in line and '" 200 ' in line)

    def _open(self, req: urllib.request.Request):
        if self.basic:
            req.add_header("Authorization", self.basic)
        return urllib.request.urlopen(req)

    def corrupt(self, digest: str) -> None:
        """Alter a stored blob in place (same size): the registry serves it as it is, unchecked."""
        hexd = digest.partition(":")[2]
        data = self.storage / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"
        blob = bytearray(data.read_bytes())
        blob[len(blob) // 2] ^= 0xFF
        data.write_bytes(bytes(blob))

    def url(self, path: str) -> str:
        return f"http://{self.host}/v2/{path}"

    def push_blob(self, repo: str, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        req = urllib.request.Request(self.url(f"{repo}/blobs/uploads/"), method="POST", data=b"")
        with self._open(req) as r:
            location = r.headers["Location"]
        if location.startswith("/"):
            location = f"http://{self.host}{location}"
        sep = "&" if "?" in location else "?"
        req = urllib.request.Request(f"{location}{sep}digest={digest}", method="PUT", data=data,
                                     headers={"Content-Type": "application/octet-stream"})
        with self._open(req):
            pass
        return digest

    def push_manifest(self, repo: str, ref: str, body: bytes, media_type: str) -> str:
        req = urllib.request.Request(self.url(f"{repo}/manifests/{ref}"), method="PUT", data=body,
                                     headers={"Content-Type": media_type})
        with self._open(req):
            pass
        return "sha256:" + hashlib.sha256(body).hexdigest()

    def push_image(self, repo: str, tag: str, layers: list[bytes], env: list[str] | None = None,
                   workdir: str = "") -> str:
        """Push layers (gzip tars), a config and a manifest; returns the manifest digest."""
        descs = []
        for layer in layers:
            digest = self.push_blob(repo, layer)
            descs.append({"mediaType": DOCKER_LAYER, "size": len(layer), "digest": digest})
        config = json.dumps({
            "architecture": "amd64", "os": "linux",
            "config": {"Env": env or [], "WorkingDir": workdir},
            "rootfs": {"type": "layers", "diff_ids": []},
        }).encode()
        cdigest = self.push_blob(repo, config)
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "size": len(config), "digest": cdigest},
            "layers": descs,
        }).encode()
        return self.push_manifest(repo, tag, manifest, DOCKER_MANIFEST)

    def push_list(self, repo: str, tag: str, entries: list[tuple[str, str, str]]) -> str:
        """A manifest list of (os, architecture, manifest digest) already in repo."""
        manifests = []
        for os_name, arch, digest in entries:
            with self._open(urllib.request.Request(
                    self.url(f"{repo}/manifests/{digest}"), headers={"Accept": DOCKER_MANIFEST})) as r:
                size = len(r.read())
            manifests.append({"mediaType": DOCKER_MANIFEST, "size": size, "digest": digest,
                              "platform": {"os": os_name, "architecture": arch}})
        body = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": manifests}).encode()
        return self.push_manifest(repo, tag, body, DOCKER_LIST)


@contextmanager
def start_registry(tmp: Path, user: tuple[str, str] | None = None, issuer: TokenIssuer | None = None,
                   ) -> Iterator[Registry]:
    """`docker-registry serve CONFIG` on a free loopback port, storage under tmp; with user, the
    registry wants that user and password (htpasswd: HTTP Basic); with issuer, tokens it signs."""
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = tmp / "registry.yml"
    auth = ""
    if user is not None:
        import bcrypt

        (tmp / "htpasswd").write_text(f"{user[0]}:{bcrypt.hashpw(user[1].encode(), bcrypt.gensalt(5)).decode()}\n")
        auth = f"auth:\n  htpasswd:\n    realm: granary-test\n    path: {tmp / 'htpasswd'}\n"
    if issuer is not None:
        auth = (f"auth:\n  token:\n    realm: {issuer.realm}\n    service: {SERVICE}\n    issuer: {ISSUER}\n"
                f"    rootcertbundle: {issuer.cert_path}\n")
    config.write_text(
        "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {tmp / 'storage'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n" + auth
    )
    log = open(tmp / "registry.log", "wb")  # noqa: SIM115 - closed after the process
    proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2):
                    break
            except urllib.error.HTTPError as e:
                if e.code == 401:  # up, and wants credentials
                    break
                raise
            except (urllib.error.URLError, ConnectionError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"docker-registry did not start: {(tmp / 'registry.log').read_text()}")
                time.sleep(0.1)
        basic = "Basic " + base64.b64encode(":".join(user).encode()).decode() if user else ""
        yield Registry(f"127.0.0.1:{port}", tmp / "storage", basic, tmp / "registry.log")
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def tar_layer(files: dict[str, bytes | str | None], busybox: bool = False) -> bytes:
    """A gzip tar layer. files: path -> content (bytes), symlink target ('->TARGET' str), or None for a
    directory. busybox: add bin/busybox and its applet links."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add(name: str, content: bytes | str | None, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(name)
            info.mtime = 0
            if content is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif isinstance(content, str):
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, content.removeprefix("->"), 0o777
                tar.addfile(info)
            else:
                info.size, info.mode = len(content), mode
                tar.addfile(info, io.BytesIO(content))

        if busybox:
            add("bin", None)
            add("bin/busybox", Path(BUSYBOX).read_bytes(), 0o755)
            for applet in APPLETS:
                add(f"bin/{applet}", "->busybox")
        for name, content in files.items():
            add(name, content)
    return gzip.compress(raw.getvalue(), mtime=0)


# ---- token authentication: a token server of the test's own -------------------------------------

SERVICE = "granary-test-registry"
ISSUER = "granary-test-issuer"


class TokenIssuer:
    """Signs registry tokens (JWT, RS256, with the signing certificate in x5c), as Docker's token
    authentication specifies, and serves them at /token to callers with the right Basic credentials."""

    def __init__(self, tmp: Path, user: tuple[str, str]):
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.user = user
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "granary test token issuer")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(self.key, hashes.SHA256()))
        self.cert_path = tmp / "token-cert.pem"
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        self.port = free_port()
        self.realm = f"http://127.0.0.1:{self.port}/token"

    def mint(self, scopes: list[str]) -> str:
        import uuid

        import jwt

        access = []
        for scope in scopes:
            kind, name, actions = scope.split(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        claims = {"iss": ISSUER, "sub": self.user[0], "aud": SERVICE, "exp": now + 600, "nbf": now - 10,
                  "iat": now, "jti": uuid.uuid4().hex, "access": access}
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"x5c": [self.x5c]})

    @contextmanager
    def serving(self) -> Iterator[TokenIssuer]:
        import http.server
        import threading
        import urllib.parse

        issuer = self
        want = "Basic " + base64.b64encode(":".join(self.user).encode()).decode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
                if self.headers.get("Authorization") != want or query.get("service") != [SERVICE]:
                    self.send_response(401)
                    self.end_headers()
                    return
                body = json.dumps({"token": issuer.mint(query.get("scope", []))}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
