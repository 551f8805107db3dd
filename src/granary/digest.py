"""Digests: the identity of a blob, the hash functions behind them, validation."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import NamedTuple, Protocol

import blake3

from granary.errors import InvalidArgument

# build.bazel.remote.execution.v2.DigestFunction.Value numbers (wire contract).
UNKNOWN = 0
SHA256 = 1
SHA1 = 2
MD5 = 3
VSO = 4
SHA384 = 5
SHA512 = 6
MURMUR3 = 7
SHA256TREE = 8
BLAKE3 = 9


class Hasher(Protocol):
    def update(self, data: bytes, /) -> object: ...
    def hexdigest(self) -> str: ...


class _Function(NamedTuple):
    value: int
    name: str  # lowercase, as it appears in resource names
    hex_length: int
    new: Callable[[], Hasher]


def _blake3() -> Hasher:
    return blake3.blake3()


FUNCTIONS: dict[int, _Function] = {
    f.value: f
    for f in (
        _Function(SHA256, "sha256", 64, hashlib.sha256),
        _Function(SHA1, "sha1", 40, hashlib.sha1),
        _Function(MD5, "md5", 32, hashlib.md5),
        _Function(SHA384, "sha384", 96, hashlib.sha384),
        _Function(SHA512, "sha512", 128, hashlib.sha512),
        _Function(BLAKE3, "blake3", 64, _blake3),
    )
}
SUPPORTED = tuple(FUNCTIONS)
BY_NAME = {f.name: f.value for f in FUNCTIONS.values()}
# Functions a server infers from the hash length when a request leaves it unset.
_BY_LENGTH = {64: SHA256, 40: SHA1, 32: MD5, 96: SHA384, 128: SHA512}
# Functions that must be named in resource names (not inferable by length).
NAMED_IN_RESOURCE = frozenset({BLAKE3, SHA256TREE})

_HEX_CHARS = "0123456789abcdef"
_HEX_LENGTH = {f.value: f.hex_length for f in FUNCTIONS.values()}


class BlobDigest(NamedTuple):
    """A validated digest. `key` is unique across digest functions."""

    function: int
    hash: str
    size: int

    @property
    def key(self) -> str:
        return blob_key(self.function, self.hash)

    def __str__(self) -> str:
        return f"{self.hash}/{self.size}"


def blob_key(function: int, hash_: str) -> str:
    # Only BLAKE3 shares a hash length with another function (SHA256).
    return "b3-" + hash_ if function == BLAKE3 else hash_


def function_name(value: int) -> str:
    f = FUNCTIONS.get(value)
    return f.name if f else str(value)


def resolve_function(requested: int, hash_: str) -> int:
    """The digest function for one digest of a request whose field says `requested`."""
    if requested == UNKNOWN:
        inferred = _BY_LENGTH.get(len(hash_))
        if inferred is None:
            raise InvalidArgument(
                f"cannot infer the digest function of hash {hash_!r} ({len(hash_)} characters);"
                " set digest_function in the request"
            )
        return inferred
    if requested not in FUNCTIONS:
        raise InvalidArgument(f"digest function {requested} is not supported (supported: "
                              + ", ".join(f.name.upper() for f in FUNCTIONS.values()) + ")")
    return requested


def make_digest(requested: int, hash_: str, size: int) -> BlobDigest:
    """Validate a (hash, size) pair from a client, raising InvalidArgument naming it."""
    function = resolve_function(requested, hash_)
    expected = FUNCTIONS[function].hex_length
    if len(hash_) != expected or hash_.strip(_HEX_CHARS):
        raise InvalidArgument(
            f"invalid digest hash {hash_!r} (digest {hash_}/{size}): expected {expected} lowercase hex"
            f" characters for {FUNCTIONS[function].name.upper()}"
        )
    if size < 0:
        raise InvalidArgument(f"invalid digest {hash_}/{size}: size_bytes is negative")
    return BlobDigest(function, hash_, size)


def check(requested: int, hash_: str, size: int) -> None:
    """Raise what make_digest would for an invalid (hash, size), without building a digest.

    Cheap enough for every digest of a large FindMissingBlobs; it must run
    before any cache of known-present or known-absent hashes is consulted.
    """
    expected = _HEX_LENGTH.get(requested) if requested else (len(hash_) if len(hash_) in _BY_LENGTH else None)
    if expected is None or len(hash_) != expected or size < 0 or hash_.strip(_HEX_CHARS):
        make_digest(requested, hash_, size)


def from_proto(requested: int, d) -> BlobDigest:
    return make_digest(requested, d.hash, d.size_bytes)


def new_hasher(function: int) -> Hasher:
    return FUNCTIONS[function].new()


def compute(function: int, data: bytes) -> BlobDigest:
    h = new_hasher(function)
    h.update(data)
    return BlobDigest(function, h.hexdigest(), len(data))


def matches(digest: BlobDigest, data: bytes) -> bool:
    if len(data) != digest.size:
        return False
    h = new_hasher(digest.function)
    h.update(data)
    return h.hexdigest() == digest.hash


_EMPTY = {f: compute(f, b"").hash for f in FUNCTIONS}


def is_empty(digest: BlobDigest) -> bool:
    return digest.size == 0 and _EMPTY.get(digest.function) == digest.hash


def empty(function: int) -> BlobDigest:
    return BlobDigest(function, _EMPTY[function], 0)
