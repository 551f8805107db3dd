"""A small client of the Registry HTTP API v2 (Docker distribution / OCI distribution spec).

Blocking (urllib): it runs in a worker's action thread. It speaks plain
HTTP to loopback hosts and to the hosts the worker lists as insecure,
HTTPS to everyone else. Authentication: a 401 with `WWW-Authenticate:
Bearer realm=...,service=...,scope=...` is answered by fetching a token
from the realm (with HTTP Basic credentials when the worker has some for
that host); `WWW-Authenticate: Basic` is answered with the credentials.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from granary.errors import FailedPrecondition, InvalidArgument

SCHEME = "docker://"
INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json")
MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v2+json")
ACCEPT = ", ".join((*MANIFEST_TYPES, *INDEX_TYPES))
MAX_MANIFEST = 4 << 20
TIMEOUT = 60.0
_REF = re.compile(r"^(?P<host>[A-Za-z0-9.-]+|\[[0-9a-fA-F:]+\])(?::(?P<port>\d+))?/(?P<repo>[a-z0-9]+(?:[._/-][a-z0-9]+)*)"
                  r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$")


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Registries send blobs through redirects to storage (S3, a CDN) that signs its own URLs:
    the registry's credentials must not follow to another host."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urllib.parse.urlsplit(newurl).netloc != urllib.parse.urlsplit(req.full_url).netloc:
            new.remove_header("Authorization")
        return new


_OPENER = urllib.request.build_opener(_Redirects)


class PullError(FailedPrecondition):
    """The image could not be pulled (the message names it)."""


@dataclass(frozen=True)
class ImageRef:
    """docker://HOST[:PORT]/REPO[:TAG|@sha256:DIGEST]; no tag and no digest means :latest."""

    host: str  # with the port, as in the URL
    repo: str
    tag: str
    digest: str  # "" when pulled by tag

    @property
    def text(self) -> str:
        return f"{SCHEME}{self.host}/{self.repo}" + (f"@{self.digest}" if self.digest else f":{self.tag}")

    @property
    def reference(self) -> str:
        return self.digest or self.tag


def parse_ref(text: str) -> ImageRef:
    if not text.startswith(SCHEME):
        raise InvalidArgument(f"container-image={text!r}: expected docker://HOST[:PORT]/REPO[:TAG|@sha256:DIGEST]")
    m = _REF.match(text[len(SCHEME):])
    if m is None:
        raise InvalidArgument(f"container-image={text!r}: expected docker://HOST[:PORT]/REPO[:TAG|@sha256:DIGEST]")
    host = m["host"] + (f":{m['port']}" if m["port"] else "")
    return ImageRef(host, m["repo"], m["tag"] or ("" if m["digest"] else "latest"), m["digest"] or "")


def loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
    return name in ("localhost", "[::1]") or name.startswith("127.")


@dataclass
class Registry:
    """Talks to one registry host; keeps the bearer token it was given per repository."""

    host: str
    insecure: bool = False  # plain HTTP
    credentials: tuple[str, str] | None = None  # user, password
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return ("http" if self.insecure or loopback(self.host) else "https") + f"://{self.host}/v2/"

    def _auth(self, repo: str) -> dict[str, str]:
        token = self.tokens.get(repo)
        if token is not None:
            return {"Authorization": token}
        return {}

    def _challenge(self, repo: str, header: str) -> bool:
        """Answer a 401: True when there is something new to try."""
        kind, _, params = header.partition(" ")
        kv = dict(re.findall(r'(\w+)="([^"]*)"', params))
        basic = self.credentials and "Basic " + base64.b64encode(":".join(self.credentials).encode()).decode()
        if kind.lower() == "basic":
            if not basic or self.tokens.get(repo) == basic:
                return False
            self.tokens[repo] = basic
            return True
        if kind.lower() != "bearer" or "realm" not in kv:
            return False
        query = {k: v for k, v in (("service", kv.get("service")), ("scope", kv.get("scope") or
                                                                     f"repository:{repo}:pull")) if v}
        req = urllib.request.Request(kv["realm"] + "?" + urllib.parse.urlencode(query))
        if basic:
            req.add_header("Authorization", basic)
        with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
            body = json.load(r)
        token = body.get("token") or body.get("access_token")
        if not token or self.tokens.get(repo) == f"Bearer {token}":
            return False
        self.tokens[repo] = f"Bearer {token}"
        return True

    def get(self, repo: str, path: str, headers: dict[str, str] | None = None):
        """An open response for /v2/REPO/PATH (authenticating once if asked to)."""
        for _attempt in range(3):
            req = urllib.request.Request(self.base + f"{repo}/{path}", headers={**(headers or {}), **self._auth(repo)})
            try:
                return _OPENER.open(req, timeout=TIMEOUT)
            except urllib.error.HTTPError as e:
                if e.code == 401 and self._challenge(repo, e.headers.get("WWW-Authenticate", "")):
                    continue
                raise
        raise urllib.error.URLError("authentication did not succeed")

    def manifest(self, repo: str, reference: str) -> tuple[str, bytes, str]:
        """(media type, body, digest of body)."""
        with self.get(repo, f"manifests/{reference}", {"Accept": ACCEPT}) as r:
            body = r.read(MAX_MANIFEST + 1)
            kind = r.headers.get("Content-Type", "").split(";")[0].strip()
        if len(body) > MAX_MANIFEST:
            raise PullError(f"manifest {reference} is larger than {MAX_MANIFEST} bytes")
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise PullError(f"manifest {reference}: the registry sent content whose digest is {digest}")
        if not kind or kind == "application/json":
            kind = json.loads(body).get("mediaType", "")
        return kind, body, digest

    def blob(self, repo: str, digest: str, size: int, out: BinaryIO) -> None:
        """Write the blob to out, verifying its size and digest."""
        algo, _, want = digest.partition(":")
        if algo != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", want):
            raise PullError(f"blob {digest}: only sha256 digests are supported")
        h = hashlib.sha256()
        n = 0
        with self.get(repo, f"blobs/{digest}") as r:
            while chunk := r.read(1 << 20):
                n += len(chunk)
                if size >= 0 and n > size:
                    raise PullError(f"blob {digest} is larger than the {size} bytes its manifest says")
                h.update(chunk)
                out.write(chunk)
        if h.hexdigest() != want:
            raise PullError(f"blob {digest} does not match its digest (got sha256:{h.hexdigest()}): corrupt layer")
        if size >= 0 and n != size:
            raise PullError(f"blob {digest} has {n} bytes, its manifest says {size}")


def read_credentials(path: Path | None) -> dict[str, tuple[str, str]]:
    """HOST[:PORT] USER:PASSWORD per line (# comments)."""
    out: dict[str, tuple[str, str]] = {}
    if path is None:
        return out
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        host, _, cred = line.partition(" ")
        user, sep, password = cred.strip().partition(":")
        if not sep:
            raise ValueError(f"{path}: expected 'HOST USER:PASSWORD', got {line!r}")
        out[host] = (user, password)
    return out
