"""The whole REAPI cache test suite (test_cache_api) over real gRPC, against
every storage backend and composition: Redis, S3, PostgreSQL, a proxy to a
second Granary, and the wrapping stores."""

from __future__ import annotations

import pytest
from backend_fixtures import (  # noqa: F401 - the servers are fixtures used by name
    S3_BUCKET,
    S3_CREDENTIALS,
    backend_postgres,
    backend_redis,
    backend_remote,
    backend_s3,
    uniq,
)
from serverutil import start_granary
from test_cache_api import *


def _layouts(request) -> tuple[str, int]:
    def fx(name: str):
        return request.getfixturevalue(name)

    def redis(prefix: str) -> str:
        return f'{{type: redis, url: "{fx("backend_redis").url}", prefix: "{prefix}:"}}'

    def s3(prefix: str) -> str:
        creds = ", ".join(f"{k}: {v}" for k, v in S3_CREDENTIALS.items())
        return (f'{{type: s3, bucket: {S3_BUCKET}, endpoint_url: "{fx("backend_s3").endpoint}",'
                f" create_bucket: true, prefix: {prefix}/, {creds}}}")

    def pg(table: str) -> str:
        return f'{{type: sql, url: "{fx("backend_postgres").url}", table: {table}}}'

    def cfg(cas: str, ac: str) -> str:
        return f'storage:\n  main: {cas}\naction_caches:\n  main: {ac}\ninstances:\n  "*": {{cas: main, action_cache: main}}\n'

    p = uniq("api")
    name = request.param
    if name == "redis":
        return cfg(redis(p), redis(p + "ac")), 2
    if name == "s3":
        return cfg(s3(p), s3(p + "ac")), 2
    if name == "tiered-redis-s3+postgres-ac":
        return cfg(f"{{type: tiered, cache: {redis(p)}, fallback: {s3(p)}}}", pg(p)), 2
    if name == "tiered-deferred":
        return cfg(f"{{type: tiered, cache: {redis(p)}, fallback: {s3(p)}, defer_fallback_writes: true}}",
                   redis(p + "ac")), 1
    if name == "sizesplit":
        return cfg(f"{{type: sizesplit, stores: [{{max_size: 64KiB, store: {redis(p)}}}], fallback: {s3(p)}}}",
                   "{type: sqlite, path: ac.sqlite}"), 2
    if name == "sharded":
        return cfg(f"{{type: sharded, shards: [{{store: {{type: disk, path: d1}}}}, {{store: {redis(p)},"
                   " weight: 2}]}", "{type: sqlite, path: ac.sqlite}"), 2
    if name == "indexed-postgres":
        return cfg(f'{{type: indexed, url: "{fx("backend_postgres").url}", table: {p}, store: {{type: disk,'
                   " path: cas}}", pg(p + "ac")), 2
    if name == "proxy":
        remote = fx("backend_remote").url
        return cfg(f'{{type: remote, address: "{remote}"}}', f'{{type: remote, address: "{remote}"}}'), 1
    raise AssertionError(name)


BACKEND_LAYOUTS = ["redis", "s3", "tiered-redis-s3+postgres-ac", "tiered-deferred", "sizesplit", "sharded",
                   "indexed-postgres", "proxy"]


@pytest.fixture(scope="module", params=BACKEND_LAYOUTS)
def server(request, tmp_path_factory):
    config, processes = _layouts(request)
    srv = start_granary(tmp_path_factory.mktemp(request.param), config, processes=processes)
    yield srv
    srv.stop()
