"""Qualifiers of Remote Asset requests: which ones Granary understands, SRI checksums, record keys.

The spec lets a server trust qualifiers of Push'd content, but content fetched from origin must
match every qualifier, so a download is refused (INVALID_ARGUMENT with a google.rpc.BadRequest
naming each one) when a qualifier is not one of these:

- `checksum.sri`: Subresource Integrity, `sha256-BASE64` (also sha384, sha512); several
  space-separated hashes are all checked. The download is verified against it.
- `bazel.canonical_id`: Bazel's opaque cache key for a download; only part of the record key.
- `bazel.auth_headers`: Bazel 4.x's JSON `{url: {header: value}}` of .netrc credentials.
- `http_header:NAME`: a header sent to every URI; `http_header_url:N:NAME` only to the N-th
  (0-based) URI of the request, and preferred over the general one.
- `resource_type` (FetchDirectory only): the archive format as a MIME type, when the URL does not
  say it (application/x-tar, application/gzip, application/x-compressed-tar, application/x-xz,
  application/x-bzip2, application/zip).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from google.protobuf import any_pb2
from google.rpc import error_details_pb2

from granary.errors import InvalidArgument

CHECKSUM_SRI = "checksum.sri"
CANONICAL_ID = "bazel.canonical_id"
AUTH_HEADERS = "bazel.auth_headers"
HEADER_PREFIX = "http_header:"
HEADER_URL_PREFIX = "http_header_url:"
RESOURCE_TYPE = "resource_type"

SRI_ALGORITHMS = {"sha256": hashlib.sha256, "sha384": hashlib.sha384, "sha512": hashlib.sha512}
ARCHIVE_TYPES = {
    "application/x-tar": "tar",
    "application/gzip": "tar.gz",
    "application/x-gzip": "tar.gz",
    "application/x-compressed-tar": "tar.gz",
    "application/x-xz": "tar.xz",
    "application/x-bzip2": "tar.bz2",
    "application/zip": "zip",
}


class UnsupportedQualifiers(InvalidArgument):
    """INVALID_ARGUMENT with the google.rpc.BadRequest detail the spec asks for: one field violation
    (field `qualifiers.name`, description `"NAME" not supported`) per qualifier."""

    def __init__(self, names: Sequence[str]):
        listed = ", ".join(repr(n) for n in names)
        super().__init__(
            f"qualifiers not supported by this server: {listed} (supported: {CHECKSUM_SRI}, {CANONICAL_ID},"
            f" {AUTH_HEADERS}, {HEADER_PREFIX}NAME, {HEADER_URL_PREFIX}N:NAME; {RESOURCE_TYPE} for FetchDirectory)"
        )
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field="qualifiers.name", description=f'"{n}" not supported')
                for n in names
            ]
        )
        detail = any_pb2.Any()
        detail.Pack(bad)
        self.details = [detail]


@dataclass(frozen=True)
class Sri:
    """One hash of an SRI string: algorithm name and the expected raw digest."""

    algorithm: str
    digest: bytes

    def __str__(self) -> str:
        return f"{self.algorithm}-{base64.b64encode(self.digest).decode()}"


def parse_sri(value: str) -> list[Sri]:
    """`sha256-BASE64 [sha512-BASE64 ...]` -> hashes to check (options after `?` are ignored)."""
    hashes = []
    for token in value.split():
        algorithm, sep, rest = token.partition("-")
        b64 = rest.split("?", 1)[0]
        if not sep or algorithm not in SRI_ALGORITHMS:
            raise InvalidArgument(
                f"{CHECKSUM_SRI} {token!r} is not ALGORITHM-BASE64 with ALGORITHM one of "
                + ", ".join(SRI_ALGORITHMS)
            )
        try:
            digest = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidArgument(f"{CHECKSUM_SRI} {token!r}: the hash is not valid base64") from None
        if len(digest) != SRI_ALGORITHMS[algorithm]().digest_size:
            raise InvalidArgument(
                f"{CHECKSUM_SRI} {token!r}: a {algorithm} hash is {SRI_ALGORITHMS[algorithm]().digest_size}"
                f" bytes, this one {len(digest)}"
            )
        hashes.append(Sri(algorithm, digest))
    if not hashes:
        raise InvalidArgument(f"{CHECKSUM_SRI} is empty")
    return hashes


@dataclass
class Qualifiers:
    """The qualifiers of one request, checked for duplicates, with the ones Granary acts on parsed."""

    pairs: list[tuple[str, str]]
    sri: list[Sri] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)  # to every URI
    url_headers: dict[int, dict[str, str]] = field(default_factory=dict)  # URI index -> headers
    auth_headers: dict[str, dict[str, str]] = field(default_factory=dict)  # URI -> headers (Bazel 4.x)
    resource_type: str = ""
    unsupported: list[str] = field(default_factory=list)

    def headers_for(self, index: int, uri: str) -> dict[str, str]:
        out = dict(self.headers)
        out.update(self.auth_headers.get(uri, {}))
        out.update(self.url_headers.get(index, {}))
        return out

    def record_key(self) -> str:
        """What a record is stored under besides the URI: a hash of the qualifiers. Headers carry
        credentials, not identity: with a checksum they are left out (the checksum pins the
        content), without one they count, so content fetched with one user's credentials is not
        handed to a request without them."""
        pairs = self.pairs
        if self.sri:
            pairs = [(n, v) for n, v in pairs if not _is_header(n)]
        text = json.dumps(sorted(pairs), separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def _is_header(name: str) -> bool:
    return name == AUTH_HEADERS or name.startswith((HEADER_PREFIX, HEADER_URL_PREFIX))


def _header_name(name: str, full: str) -> str:
    if not name or any(c in name for c in " :\r\n\t") or not name.isascii():
        raise InvalidArgument(f"qualifier {full!r} does not end in an HTTP header name")
    return name


def _header_value(value: str, full: str) -> str:
    if "\r" in value or "\n" in value:
        raise InvalidArgument(f"qualifier {full!r}: header values may not contain line breaks")
    return value


def parse(items: Iterable, directory: bool = False) -> Qualifiers:
    """Qualifier protos -> Qualifiers; INVALID_ARGUMENT for duplicates or malformed known ones.
    Unknown names are collected in `unsupported` (fine for pushed content, refused for a download)."""
    pairs = [(q.name, q.value) for q in items]
    q = Qualifiers(pairs)
    seen: set[str] = set()
    for name, value in pairs:
        if name in seen:
            raise InvalidArgument(f"qualifier {name!r} is given twice; qualifier names must be unique")
        seen.add(name)
        if name == CHECKSUM_SRI:
            q.sri = parse_sri(value)
        elif name == CANONICAL_ID:
            pass
        elif name == AUTH_HEADERS:
            q.auth_headers = _auth_headers(value)
        elif name.startswith(HEADER_URL_PREFIX):
            index, sep, header = name[len(HEADER_URL_PREFIX):].partition(":")
            if not sep or not (index.isascii() and index.isdigit()):  # isdigit() alone admits '²'
                raise InvalidArgument(f"qualifier {name!r} is not {HEADER_URL_PREFIX}INDEX:HEADER")
            q.url_headers.setdefault(int(index), {})[_header_name(header, name)] = _header_value(value, name)
        elif name.startswith(HEADER_PREFIX):
            q.headers[_header_name(name[len(HEADER_PREFIX):], name)] = _header_value(value, name)
        elif name == RESOURCE_TYPE and directory:
            if value not in ARCHIVE_TYPES:
                raise InvalidArgument(
                    f"{RESOURCE_TYPE} {value!r} is not an archive type this server unpacks ("
                    + ", ".join(ARCHIVE_TYPES) + ")"
                )
            q.resource_type = value
        else:
            q.unsupported.append(name)
    return q


def _auth_headers(value: str) -> dict[str, dict[str, str]]:
    try:
        data = json.loads(value)
    except (ValueError, RecursionError):  # RecursionError: deeply nested arrays or objects
        raise InvalidArgument(f"{AUTH_HEADERS} is not JSON") from None
    if not isinstance(data, dict) or not all(
        isinstance(h, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in h.items())
        for h in data.values()
    ):
        raise InvalidArgument(f'{AUTH_HEADERS} is not {{"URL": {{"HEADER": "VALUE"}}}}')
    return {
        str(url): {_header_name(k, AUTH_HEADERS): _header_value(v, AUTH_HEADERS) for k, v in h.items()}
        for url, h in data.items()
    }
