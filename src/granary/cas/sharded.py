"""Blobs spread over several stores by rendezvous (highest-random-weight) hashing.

Each blob goes to the shard with the highest score for its key, where the
score is weight / -ln(u) and u is a uniform hash of (shard name, key). Adding
or removing a shard moves only the blobs that belong to it, and a shard with
twice the weight receives twice the blobs. Shard names, not positions, seed
the hash, so reordering the list moves nothing.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

from granary.cas.blobstore import BlobStore
from granary.cas.routing import RoutingBlobStore
from granary.digest import BlobDigest

_MASK = (1 << 64) - 1


def _mix(x: int) -> int:
    """splitmix64 finaliser: a fast, well-spread 64-bit hash of an integer."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


class ShardedBlobStore(RoutingBlobStore):
    name = "sharded"

    def __init__(self, shards: Sequence[tuple[str, float, BlobStore]]):
        """shards: (name, weight, store)."""
        if not shards:
            raise ValueError("a sharded store needs at least one shard")
        self.names = [name for name, _, _ in shards]
        self.weights = [float(weight) for _, weight, _ in shards]
        self.stores = [store for _, _, store in shards]
        self._seeds = [int.from_bytes(hashlib.sha256(n.encode()).digest()[:8], "big") for n in self.names]
        self._equal = len(set(self.weights)) == 1
        self._capabilities()

    def shard_index(self, key: str) -> int:
        # keys are hex digests (maybe "b3-" prefixed): their leading bits are already uniform
        tail = key[-16:]
        try:
            k = int(tail, 16)
        except ValueError:
            k = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
        best, best_score = 0, -math.inf
        for i, seed in enumerate(self._seeds):
            h = _mix(k ^ seed)
            if self._equal:
                score = float(h)
            else:
                u = (h + 1) / (_MASK + 2)  # in (0, 1)
                score = self.weights[i] / -math.log(u)
            if score > best_score:
                best, best_score = i, score
        return best

    def route(self, d: BlobDigest) -> BlobStore:
        return self.stores[self.shard_index(d.key)]
