"""Bytes from stores Granary does not own (Redis, S3, a remote REAPI server) are checked against
their digest before anyone sees them.

Such a store can hand back other bytes of the right length: a Redis value overwritten by hand,
an S3 object replaced by another tool, a remote server whose disk rotted. Whole blobs
(`get_many`) are hashed and left out on a mismatch. A streamed read (`read`) fetches the whole
blob first, hashing as it comes, into memory up to SPOOL_IN_MEMORY bytes and into an anonymous
temporary file (in $TMPDIR, gone when closed) above that; only a blob that matched is then
streamed from there, so not one byte of a mismatching blob reaches a client. A ranged read
therefore costs the whole blob once. A mismatch reads as missing (BlobNotFound) and is logged
once per blob and process.

The tiered store avoids the temporary file: it streams the unverified bytes straight into its
cache's writer, commits only on a match and then serves from the cache (see tiered.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable

from granary import digest as dg
from granary.cas.blobstore import READ_CHUNK
from granary.digest import BlobDigest
from granary.errors import BlobNotFound

log = logging.getLogger("granary.cas.verify")

SPOOL_IN_MEMORY = 8 << 20  # blobs up to this size are verified in memory, larger ones in a temp file
_HASH_IN_THREAD = 256 << 10  # chunks at least this large are hashed by a thread (hashlib drops the GIL)
_logged: set[tuple[str, str]] = set()

RawRead = Callable[[BlobDigest], Awaitable[AsyncIterator[bytes]]]


def mismatch(store: str, d: BlobDigest) -> None:
    """Log a blob whose bytes did not match its digest, once per store and blob."""
    if (store, d.key) in _logged:
        return
    if len(_logged) > 100_000:
        _logged.clear()
    _logged.add((store, d.key))
    log.warning("the %s store returned bytes that do not match blob %s: treated as missing", store, d)


def keep_verified(store: str, found: dict[BlobDigest, bytes]) -> dict[BlobDigest, bytes]:
    """`found` without the blobs whose bytes do not hash to their digest."""
    out = {}
    for d, data in found.items():
        if dg.matches(d, data):
            out[d] = data
        else:
            mismatch(store, d)
    return out


async def _update(h: dg.Hasher, chunk: bytes) -> None:
    if len(chunk) >= _HASH_IN_THREAD:
        await asyncio.to_thread(h.update, chunk)
    else:
        h.update(chunk)


async def verified_read(store: str, raw: RawRead, d: BlobDigest, offset: int, limit: int) -> AsyncIterator[bytes]:
    """Read all of `d` through `raw(d)`, verify it, then stream [offset, offset+limit) of it.

    Raises BlobNotFound (before any byte is returned) when the blob is missing or its bytes do
    not match."""
    end = d.size if limit <= 0 else min(d.size, offset + limit)
    source = await raw(d)
    h = dg.new_hasher(d.function)
    n = 0
    if d.size <= SPOOL_IN_MEMORY:
        parts: list[bytes] = []
        async for chunk in source:
            await _update(h, chunk)
            parts.append(chunk)
            n += len(chunk)
        if n != d.size or h.hexdigest() != d.hash:
            mismatch(store, d)
            raise BlobNotFound(d)
        return _from_memory(b"".join(parts), offset, end)
    spool = tempfile.TemporaryFile(prefix="granary-verify-")  # noqa: SIM115 - closed by the reader
    try:
        async for chunk in source:
            await _update(h, chunk)
            await asyncio.to_thread(spool.write, chunk) if len(chunk) >= _HASH_IN_THREAD else spool.write(chunk)
            n += len(chunk)
            if n > d.size:
                break
        if n != d.size or h.hexdigest() != d.hash:
            mismatch(store, d)
            raise BlobNotFound(d)
        spool.flush()
    except BaseException:
        spool.close()
        raise
    return _from_file(spool, offset, end)


async def _from_memory(data: bytes, offset: int, end: int) -> AsyncIterator[bytes]:
    view = memoryview(data)
    for start in range(offset, end, READ_CHUNK):
        yield bytes(view[start : min(end, start + READ_CHUNK)])


async def _from_file(spool, offset: int, end: int) -> AsyncIterator[bytes]:
    try:
        fd = spool.fileno()
        pos = offset
        while pos < end:
            chunk = os.pread(fd, min(READ_CHUNK, end - pos), pos)
            if not chunk:
                raise OSError("the verified copy of a blob shrank")  # our own anonymous file: cannot
            pos += len(chunk)
            yield chunk
    finally:
        spool.close()
