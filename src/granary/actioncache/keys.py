"""Action Cache keys as stores that cannot hold any byte (S3, PostgreSQL) see them.

ActionCache keys are "{namespace}\\x00{digest key}/{size}". Percent-encoding
makes them safe for object names and SQL text while staying one-to-one.
"""

from __future__ import annotations

from urllib.parse import quote, unquote

from granary import digest as dg
from granary.digest import BlobDigest


def encode_key(key: str) -> str:
    return quote(key, safe="-_.")


def decode_key(encoded: str) -> str:
    return unquote(encoded)


def split_key(key: str) -> tuple[str, BlobDigest] | None:
    """(namespace, action digest) of an ActionCache key; None if it is not one."""
    namespace, sep, rest = key.partition("\x00")
    hash_key, slash, size = rest.rpartition("/")
    if not sep or not slash or not size.isdigit():
        return None
    if hash_key.startswith("b3-"):
        return namespace, BlobDigest(dg.BLAKE3, hash_key[3:], int(size))
    try:
        return namespace, BlobDigest(dg.resolve_function(dg.UNKNOWN, hash_key), hash_key, int(size))
    except Exception:  # noqa: BLE001 - not a key this server wrote
        return None
