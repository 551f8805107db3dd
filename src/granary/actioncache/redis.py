"""Action Cache entries in Redis, with optional expiry (max_age, as a Redis TTL).

Each value is an 8-byte store time followed by the serialized ActionResult,
so cleanup can tell recent entries from old ones.
"""

from __future__ import annotations

import struct
import time
from collections.abc import AsyncIterator

import redis.asyncio as aioredis

from granary.actioncache.store import ActionCacheStore
from granary.redis_client import LazyRedis

_STAMP = struct.Struct(">d")


class RedisActionCacheStore(ActionCacheStore):
    name = "redis"

    def __init__(self, url: str, *, prefix: str = "granary:ac:", max_age: int = 0, max_connections: int = 32):
        self._conn = LazyRedis(url, max_connections)
        self.prefix = prefix
        self.max_age = max_age or None

    @property
    def redis(self) -> aioredis.Redis:
        return self._conn.client

    def _key(self, key: str) -> bytes:
        return self.prefix.encode() + key.encode("utf-8", "surrogateescape")

    async def get(self, key: str) -> bytes | None:
        raw = await self.redis.get(self._key(key))
        return None if raw is None or len(raw) < _STAMP.size else raw[_STAMP.size:]

    async def put(self, key: str, value: bytes) -> None:
        await self.redis.set(self._key(key), _STAMP.pack(time.time()) + value, ex=self.max_age)

    async def put_if_absent(self, key: str, value: bytes) -> bytes | None:
        stored = await self.redis.set(self._key(key), _STAMP.pack(time.time()) + value, ex=self.max_age, nx=True)
        if stored:
            return None
        return await self.get(key)

    async def delete(self, key: str) -> None:
        await self.redis.delete(self._key(key))

    async def iterate(self) -> AsyncIterator[tuple[str, bytes, float]]:
        prefix = self.prefix.encode()
        async for k in self.redis.scan_iter(match=prefix + b"*", count=1000):
            raw = await self.redis.get(k)
            if raw is None or len(raw) < _STAMP.size:
                continue
            yield k[len(prefix):].decode("utf-8", "surrogateescape"), raw[_STAMP.size:], _STAMP.unpack_from(raw)[0]

    async def close(self) -> None:
        await self._conn.close()
