"""Real Bazel remote-cache builds against composed storage: a Redis + S3 tiered
CAS (S3 Action Cache), and a Granary that proxies to a second Granary.

Each test builds and tests tests/workspaces/bazel_basic cold, then empties
the *front* of the storage (Redis, or the proxy's own disk cache), cleans
Bazel's outputs and builds again: the hits must come from the back (S3, or
the upstream Granary) through the composition, with byte-identical outputs.
"""

from __future__ import annotations

import pytest
import redis
from backend_fixtures import *  # the Redis and S3 server fixtures
from backend_fixtures import S3_BUCKET, S3_CREDENTIALS, uniq
from bazelutil import BazelResult, BazelWorkspace, copy_workspace, have_bazel, remote_flags
from serverutil import start_granary

pytestmark = [
    pytest.mark.bazel,
    pytest.mark.skipif(not have_bazel(), reason="bazel is not on PATH"),
    pytest.mark.timeout(900),
]

TARGETS = ("//...",)
MIN_HIT_RATE = 0.95
REMOTE_WARNINGS = ("Reading from Remote Cache", "Writing to Remote Cache",
                   "Failed to query remote execution capabilities")


@pytest.fixture
def ws(tmp_path) -> BazelWorkspace:
    return copy_workspace("bazel_basic", tmp_path / "bazel")


def _check(cold: BazelResult, warm: BazelResult, log: str) -> None:
    assert cold.summary is not None and cold.cache_hits == 0, cold.describe()
    assert warm.summary is not None, warm.describe()
    for w in REMOTE_WARNINGS:
        assert w not in cold.output + warm.output, f"{warm.describe()}\n--- server log ---\n{log[-4000:]}"
    assert warm.non_internal == cold.non_internal, f"cold {cold.summary} vs warm {warm.summary}"
    assert warm.hit_rate >= MIN_HIT_RATE, f"hit rate {warm.hit_rate:.0%}:\n{warm.describe()}\n{log[-4000:]}"


def _log(server) -> str:
    try:
        return server.log.read_text(errors="replace")
    except OSError:
        return ""


def test_bazel_against_redis_s3_tiered_storage(tmp_path, ws, backend_redis, backend_s3):
    prefix = uniq("bz")
    s3 = ", ".join(f"{k}: {v}" for k, v in
                   {"bucket": S3_BUCKET, "endpoint_url": backend_s3.endpoint, "create_bucket": "true",
                    **S3_CREDENTIALS}.items())
    config = f"""
storage:
  main:
    type: tiered
    cache: {{type: redis, url: "{backend_redis.url}", prefix: "{prefix}:", max_blob_size: 1MiB}}
    fallback: {{type: s3, prefix: {prefix}/cas/, {s3}}}
action_caches:
  main: {{type: s3, prefix: {prefix}/ac/, {s3}}}
instances:
  "*": {{cas: main, action_cache: main}}
"""
    with start_granary(tmp_path / "server", config, processes=2) as server:
        flags = remote_flags(server.address)
        cold = ws.test(*TARGETS, *flags)
        before = ws.output_hashes()
        r = redis.Redis.from_url(backend_redis.url)
        dropped = sum(r.delete(k) for k in r.scan_iter(match=f"{prefix}:*"))
        assert dropped > 10  # the cache held the small blobs...
        ws.clean()
        warm = ws.test(*TARGETS, *flags)  # ...so these hits come from S3
        _check(cold, warm, _log(server))
        assert warm.output.count("(cached) PASSED") == 3, warm.describe()
        assert ws.output_hashes() == before
        assert sum(1 for _ in r.scan_iter(match=f"{prefix}:*")) > 10  # and reads filled the cache again


def test_bazel_against_a_granary_proxying_to_a_second_granary(tmp_path, ws):
    with start_granary(tmp_path / "upstream") as upstream:
        config = f"""
storage:
  main:
    type: tiered
    cache: {{type: disk, path: cache, max_size: 1GiB}}
    fallback: {{type: remote, address: "grpc://{upstream.address}"}}
action_caches:
  main: {{type: remote, address: "grpc://{upstream.address}"}}
instances:
  "*": {{cas: main, action_cache: main}}
"""
        with start_granary(tmp_path / "proxy1", config) as proxy:
            cold = ws.build(*TARGETS, *remote_flags(proxy.address, "team/linux"))
        before = ws.output_hashes()
        # a brand-new proxy with an empty cache: every hit must come through it from the upstream
        with start_granary(tmp_path / "proxy2", config) as proxy:
            ws.clean()
            warm = ws.build(*TARGETS, *remote_flags(proxy.address, "team/linux"))
            _check(cold, warm, _log(proxy))
        assert ws.output_hashes() == before
