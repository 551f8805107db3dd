"""Size-differentiated storage: small blobs to one store, larger ones elsewhere.

`stores` is a list of (max_size, store): a blob goes to the first entry
whose max_size it does not exceed, and to `fallback` when it is larger than
them all (e.g. Redis for blobs up to 1 MiB, S3 for the rest).
"""

from __future__ import annotations

from collections.abc import Sequence

from granary.cas.blobstore import BlobStore
from granary.cas.routing import RoutingBlobStore
from granary.digest import BlobDigest


class SizeSplitBlobStore(RoutingBlobStore):
    name = "sizesplit"

    def __init__(self, tiers: Sequence[tuple[int, BlobStore]], fallback: BlobStore):
        self.tiers = sorted(tiers, key=lambda t: t[0])
        self.fallback = fallback
        self.stores = [store for _, store in self.tiers] + [fallback]
        self._capabilities()

    def route(self, d: BlobDigest) -> BlobStore:
        for max_size, store in self.tiers:
            if d.size <= max_size:
                return store
        return self.fallback
