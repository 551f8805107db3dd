"""One lazily opened redis-py asyncio client, shared by the Redis CAS and Action Cache."""

from __future__ import annotations

import redis.asyncio as aioredis


class LazyRedis:
    """Connects on first use, so a server starts even while Redis is still coming up."""

    def __init__(self, url: str, max_connections: int):
        self.url = url
        self.max_connections = max_connections
        self._client: aioredis.Redis | None = None

    @property
    def client(self) -> aioredis.Redis:
        if self._client is None:
            self._client = aioredis.Redis.from_url(self.url, max_connections=self.max_connections)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
