"""Putting a spooled file into an instance's CAS through the ByteStream Write path.

The same code as a client's ByteStream Write (granary.cas.bytestream.write), so the CAS's limits
(largest blob, bytes of unfinished uploads, uploads per client) and its hash check apply, and the
blob becomes readable only once all of it is written and verified.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from granary import compression
from granary.cas import bytestream
from granary.cas.cas import ContentAddressableStorage
from granary.digest import BlobDigest
from granary.resource_names import BlobResource

CHUNK = 1 << 20


@dataclass
class _Chunk:
    resource_name: str
    write_offset: int
    finish_write: bool
    data: bytes


async def upload_file(
    cas: ContentAddressableStorage, instance: str, digest: BlobDigest, path: Path, client: str
) -> None:
    """Write the file at `path`, whose digest the caller computed, as blob `digest`."""
    upload_id = str(uuid.uuid4())
    res = BlobResource(instance, digest, compression.IDENTITY, upload_id)
    name = f"{instance + '/' if instance else ''}uploads/{upload_id}/blobs/{digest.hash}/{digest.size}"
    with path.open("rb") as f:
        offset = 0

        def next_() -> _Chunk:
            nonlocal offset
            data = f.read(CHUNK)
            chunk = _Chunk(name, offset, offset + len(data) >= digest.size or not data, data)
            offset += len(data)
            return chunk

        async def next_chunk() -> _Chunk | None:
            return next_() if offset < digest.size else None

        await bytestream.write(cas, res, next_(), next_chunk, client)
