"""Request bodies into the CAS: hashed as they stream, never readable unless whole and matching.

- A blob whose digest is known before the body (bazel-remote's PUT /cas/HASH with Content-Length,
  or zstd with X-Digest-SizeBytes) goes through the ByteStream Write path (cas/bytestream.py): the
  same upload registry, limits, decompression bound and hash check as a gRPC upload.
- A body whose digest is not known until its last byte (opaque ccache/Gradle entries, chunked
  uploads) is hashed while it is received into memory (up to `spool_memory`) or a temporary file,
  and only then written to the store (the store's writer for large ones: never whole in memory).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from aiohttp import web

from granary import compression
from granary import digest as dg
from granary.cas import bytestream
from granary.cas.cas import ContentAddressableStorage
from granary.digest import BlobDigest
from granary.resource_names import BlobResource

CHUNK = 1 << 20
READ = 256 << 10


class TooLarge(Exception):
    """The body passed the limit; the handler answers 413."""

    def __init__(self, limit: int):
        super().__init__(limit)
        self.limit = limit


@dataclass
class _Chunk:
    resource_name: str
    write_offset: int
    finish_write: bool
    data: bytes


async def _body(request: web.Request, limit: int) -> AsyncIterator[bytes]:
    """The request body in chunks, TooLarge as soon as it passes `limit` bytes."""
    seen = 0
    while True:
        data = await request.content.readany()
        if not data:
            return
        seen += len(data)
        if seen > limit:
            raise TooLarge(limit)
        yield data


async def drain(request: web.Request) -> None:
    """Read and drop the rest of a body (the blob is stored already), keeping the connection usable."""
    while await request.content.readany():
        pass


async def write_known(cas: ContentAddressableStorage, instance: str, d: BlobDigest, compressor: int,
                      request: web.Request, limit: int, client: str) -> None:
    """Stream a body whose (uncompressed) digest is `d` into the CAS through ByteStream's Write."""
    res = BlobResource(instance, d, compressor, str(uuid.uuid4()))
    name = f"{instance}/uploads/{res.upload_id}/blobs/{d.hash}/{d.size}"
    body = _body(request, limit).__aiter__()
    offset = 0

    async def next_chunk() -> _Chunk | None:
        nonlocal offset
        try:
            data = await body.__anext__()
        except StopAsyncIteration:
            return _Chunk(name, offset, True, b"")
        chunk = _Chunk(name, offset, False, data)
        offset += len(data)
        return chunk

    try:
        first = await next_chunk()
        assert first is not None
        await bytestream.write(cas, res, first, next_chunk, client)
    except BaseException:
        await cas.uploads.discard(res.upload_key)  # a broken or refused body leaves nothing behind
        raise
    await drain(request)  # the blob was there already: write() returned before reading it all


@dataclass
class Spooled:
    """A body received whole: its digest, and its bytes in memory or in a temporary file."""

    digest: BlobDigest
    data: bytes | None
    path: Path | None

    async def chunks(self) -> AsyncIterator[bytes]:
        if self.data is not None:
            yield self.data
            return
        assert self.path is not None
        f = await asyncio.to_thread(open, self.path, "rb")
        try:
            while True:
                block = await asyncio.to_thread(f.read, CHUNK)
                if not block:
                    return
                yield block
        finally:
            f.close()

    def close(self) -> None:
        if self.path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            self.path = None


async def spool(request: web.Request, limit: int, memory: int, tmp_dir: Path, compressor: int,
                function: int = dg.SHA256) -> Spooled:
    """Receive a whole body, hashing its (decompressed) bytes; larger than `memory`: to a file."""
    hasher = dg.new_hasher(function)
    decompressor = compression.stream_decompressor(compressor)
    held: list[bytes] = []
    size = 0
    f: BinaryIO | None = None
    path: Path | None = None
    try:
        async for data in _body(request, limit if compressor == compression.IDENTITY else 1 << 62):
            try:
                pieces = list(decompressor.decompress(data, limit - size))
            except compression.TooLarge:
                raise TooLarge(limit) from None
            for raw in pieces:
                size += len(raw)
                if size > limit:
                    raise TooLarge(limit)
                hasher.update(raw)
                if f is None and size > memory:
                    tmp_dir.mkdir(parents=True, exist_ok=True)
                    fd, name = tempfile.mkstemp(prefix="upload-", dir=tmp_dir)
                    f = os.fdopen(fd, "wb")
                    path = Path(name)
                    for h in held:
                        f.write(h)
                    held = []
                if f is not None:
                    f.write(raw)
                else:
                    held.append(raw)
        if f is not None:
            f.close()
            f = None
        d = BlobDigest(function, hasher.hexdigest(), size)
        return Spooled(d, None if path is not None else b"".join(held), path)
    except BaseException:
        if f is not None:
            f.close()
        if path is not None:
            with contextlib.suppress(OSError):
                os.unlink(path)
        raise


async def store_spooled(cas: ContentAddressableStorage, body: Spooled) -> None:
    """Put a received body into the CAS under its digest (computed while it was received)."""
    d = body.digest
    cas.check_blob_size(d)
    if await cas.has(d):
        return
    if body.data is not None:
        await cas.put(d, body.data)
        return
    writer = await cas.store.open_writer(d)
    try:
        async for chunk in body.chunks():
            await writer.write(chunk)
    except BaseException:
        await writer.abort()
        raise
    await writer.commit()
