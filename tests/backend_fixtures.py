"""Real servers and store factories for the storage backend tests.

Import the fixtures into a test module with
`from backend_fixtures import *  # noqa: F403`. Each server starts once per
test session; every store a test builds gets its own key prefix, bucket
prefix, table or directory, so tests never see each other's blobs.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from serverutil import GranaryProcess, start_granary
from services import PostgresServer, RedisServer, S3Server

from granary.actioncache.store import ActionCacheStore
from granary.cas.blobstore import BlobStore
from granary.config import AC_TYPES, CAS_TYPES, Config, _store, parse
from granary.storage_builder import StoreBuilder

T = TypeVar("T")

S3_BUCKET = "granary-tests"
S3_CREDENTIALS = {"access_key_id": "testing", "secret_access_key": "testing", "region": "us-east-1"}

REMOTE_CONFIG = """
server: {max_batch_size: 1MiB}
storage:
  mem: {type: memory, max_size: 1GiB}
action_caches:
  mem: {type: memory}
instances:
  "*": {cas: mem, action_cache: mem}
"""


@pytest.fixture(scope="session")
def backend_redis():
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def backend_postgres():
    server = PostgresServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def backend_s3():
    server = S3Server()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def backend_remote(tmp_path_factory) -> GranaryProcess:
    """A second, real `granary serve` (memory CAS and AC, 1 MiB batches) to be a remote."""
    server = start_granary(tmp_path_factory.mktemp("remote-granary"), REMOTE_CONFIG)
    yield server
    server.stop()


def uniq(tag: str = "t") -> str:
    return f"{tag}{uuid.uuid4().hex[:12]}"


class Backends:
    """Config snippets (plain dicts, as in YAML) for every backend, each fresh and isolated."""

    def __init__(self, request: pytest.FixtureRequest, tmp_path: Path):
        self.request = request
        self.tmp_path = tmp_path

    def _server(self, name: str) -> Any:
        return self.request.getfixturevalue(name)

    def memory(self) -> dict:
        return {"type": "memory", "max_size": "512MiB"}

    def disk(self, **extra: Any) -> dict:
        return {"type": "disk", "path": str(self.tmp_path / uniq("disk")), **extra}

    def redis(self, **extra: Any) -> dict:
        return {"type": "redis", "url": self._server("backend_redis").url, "prefix": uniq("cas") + ":", **extra}

    def s3(self, **extra: Any) -> dict:
        return {"type": "s3", "bucket": S3_BUCKET, "endpoint_url": self._server("backend_s3").endpoint,
                "create_bucket": True, "prefix": uniq("cas") + "/", **S3_CREDENTIALS, **extra}

    def remote(self, **extra: Any) -> dict:
        return {"type": "remote", "address": self._server("backend_remote").url, **extra}

    def sqlite_url(self) -> str:
        return f"sqlite:///{self.tmp_path / uniq('index')}.sqlite"

    def postgres_url(self) -> str:
        return self._server("backend_postgres").url


CAS_LAYOUTS: dict[str, Callable[[Backends], dict]] = {
    "memory": lambda b: b.memory(),
    "disk": lambda b: b.disk(),
    "redis": lambda b: b.redis(),
    "s3": lambda b: b.s3(),
    "remote": lambda b: b.remote(),
    "tiered-redis-s3": lambda b: {"type": "tiered", "cache": b.redis(), "fallback": b.s3()},
    "tiered-redis-s3-deferred": lambda b: {
        "type": "tiered", "cache": b.redis(), "fallback": b.s3(), "defer_fallback_writes": True,
    },
    "tiered-memory-disk-deferred": lambda b: {
        "type": "tiered", "cache": b.memory(), "fallback": b.disk(), "defer_fallback_writes": True,
        "queue_max_blobs": 4, "queue_max_bytes": "1MiB",
    },
    "tiered-disk-remote": lambda b: {"type": "tiered", "cache": b.disk(), "fallback": b.remote()},
    "sizesplit": lambda b: {
        "type": "sizesplit",
        "stores": [{"max_size": "1KiB", "store": b.memory()}, {"max_size": "2MiB", "store": b.redis()}],
        "fallback": b.s3(),
    },
    "sharded": lambda b: {
        "type": "sharded",
        "shards": [{"store": b.memory()}, {"store": b.disk(), "weight": 2}, {"store": b.redis()}],
    },
    "indexed-sqlite-disk": lambda b: {"type": "indexed", "url": b.sqlite_url(), "store": b.disk()},
    "indexed-postgres-s3": lambda b: {
        "type": "indexed", "url": b.postgres_url(), "table": uniq("idx"), "store": b.s3(),
    },
}

AC_LAYOUTS: dict[str, Callable[[Backends], dict]] = {
    "memory": lambda b: {"type": "memory"},
    "sqlite": lambda b: {"type": "sqlite", "path": str(b.tmp_path / uniq("ac")) + ".sqlite"},
    "sql-sqlite": lambda b: {"type": "sql", "url": b.sqlite_url()},
    "sql-postgres": lambda b: {"type": "sql", "url": b.postgres_url(), "table": uniq("ac")},
    "redis": lambda b: {"type": "redis", "url": b._server("backend_redis").url, "prefix": uniq("ac") + ":"},
    "s3": lambda b: {"type": "s3", "bucket": S3_BUCKET, "endpoint_url": b._server("backend_s3").endpoint,
                     "create_bucket": True, "prefix": uniq("ac") + "/", **S3_CREDENTIALS},
    "remote": lambda b: {"type": "remote", "address": b._server("backend_remote").url},
}


@pytest.fixture
def backends(request, tmp_path) -> Backends:
    return Backends(request, tmp_path)


def config_for(tmp_path: Path, storage: dict | None = None, action_caches: dict | None = None) -> Config:
    raw = {
        "storage": storage or {"main": {"type": "memory"}},
        "action_caches": action_caches or {},
        "instances": {"*": {"cas": next(iter(storage or {"main": 0}))}},
    }
    return parse(yaml.safe_load(yaml.safe_dump(raw)), tmp_path)


class StoreHarness:
    """Builds stores from config dicts inside the running event loop and closes them after."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.builder: StoreBuilder | None = None

    def _builder(self) -> StoreBuilder:
        if self.builder is None:
            self.builder = StoreBuilder(config_for(self.tmp_path))
        return self.builder

    def blob_store(self, spec: dict, where: str = "storage.test") -> BlobStore:
        return self._builder().blob_store(_store(spec, where, CAS_TYPES))

    def ac_store(self, spec: dict, where: str = "action_caches.test") -> ActionCacheStore:
        return self._builder().ac_store(_store(spec, where, AC_TYPES))

    async def close(self) -> None:
        if self.builder is not None:
            await self.builder.close()
            self.builder = None


def run(tmp_path: Path, fn: Callable[[StoreHarness], Awaitable[T]]) -> T:
    """Run one async scenario with a fresh harness on a fresh event loop."""

    async def main() -> T:
        harness = StoreHarness(tmp_path)
        try:
            return await fn(harness)
        finally:
            await harness.close()

    return asyncio.run(main())


__all__ = [
    "AC_LAYOUTS", "CAS_LAYOUTS", "S3_BUCKET", "S3_CREDENTIALS", "Backends", "StoreHarness", "backend_postgres",
    "backend_redis", "backend_remote", "backend_s3", "backends", "config_for", "run", "uniq",
]
