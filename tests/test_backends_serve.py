"""Storage backends end to end through a real `granary serve`: Redis + S3 tiered,
a proxy in front of a second Granary, and cleanup of an indexed disk CAS."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import time

import boto3
import grpc
import pytest
import redis
from backend_fixtures import *
from backend_fixtures import S3_BUCKET, S3_CREDENTIALS, uniq
from reapi import Client, digest, re_pb2
from serverutil import start_granary

MiB = 1 << 20


def blob(n: int) -> bytes:
    seed = os.urandom(16)
    return (seed * (n // 16 + 1))[:n]


def action_result(*files: re_pb2.Digest, stdout: re_pb2.Digest | None = None,
                  tree: re_pb2.Digest | None = None) -> re_pb2.ActionResult:
    r = re_pb2.ActionResult(
        exit_code=0, output_files=[re_pb2.OutputFile(path=f"out/{i}", digest=d) for i, d in enumerate(files)]
    )
    if stdout is not None:
        r.stdout_digest.CopyFrom(stdout)
    if tree is not None:
        r.output_directories.add(path="dir", tree_digest=tree)
    return r


def update_ac(client: Client, action: re_pb2.Digest, result: re_pb2.ActionResult, instance: str = "") -> None:
    client.ac.UpdateActionResult(re_pb2.UpdateActionResultRequest(
        instance_name=instance, action_digest=action, action_result=result))


def get_ac(client: Client, action: re_pb2.Digest, instance: str = "") -> re_pb2.ActionResult | None:
    try:
        return client.ac.GetActionResult(re_pb2.GetActionResultRequest(instance_name=instance, action_digest=action))
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise


def round_trips(client: Client, instance: str = "") -> dict[str, bytes]:
    """FindMissing, BatchUpdate, BatchRead, ByteStream Write/Read, Action Cache; returns the blobs."""
    small = [blob(1000 + i) for i in range(20)]
    large = blob(20 * MiB + 7)
    digests = [digest(b) for b in small]
    assert len(client.missing(digests + [digest(large)], instance)) == 21
    client.upload(*small, instance=instance)
    assert client.missing(digests, instance) == []
    read = client.cas.BatchReadBlobs(re_pb2.BatchReadBlobsRequest(instance_name=instance, digests=digests))
    assert [r.data for r in read.responses] == small
    resource = client.write_resource(digest(large), instance=instance)
    assert client.bs_write(large, resource=resource) == len(large)
    assert client.missing([digest(large)], instance) == []
    assert client.bs_read(digest(large), resource=client.read_resource(digest(large), instance)) == large
    part = client.bs_read(digest(large), 9 * MiB, 1000, resource=client.read_resource(digest(large), instance))
    assert part == large[9 * MiB : 9 * MiB + 1000]
    action, broken = digest(blob(40)), digest(blob(40))
    update_ac(client, action, action_result(digests[0], digest(large), stdout=digests[1]), instance)
    got = get_ac(client, action, instance)
    assert got is not None and got.output_files[1].digest == digest(large)
    update_ac(client, broken, action_result(digest(blob(77))), instance)
    assert get_ac(client, broken, instance) is None  # refers to a blob nobody uploaded
    return {d.hash: b for d, b in zip(digests + [digest(large)], small + [large])}


def test_serve_with_redis_s3_tiered_cas_and_s3_action_cache(backend_redis, backend_s3, tmp_path):
    prefix = uniq("e2e")
    s3 = {"bucket": S3_BUCKET, "endpoint_url": backend_s3.endpoint, "create_bucket": True, **S3_CREDENTIALS}
    config = f"""
storage:
  hot: {{type: redis, url: "{backend_redis.url}", prefix: "{prefix}:", max_blob_size: 4MiB}}
  main:
    type: tiered
    cache: hot
    fallback: {{type: s3, prefix: {prefix}/cas/, {", ".join(f"{k}: {v}" for k, v in s3.items())}}}
action_caches:
  main: {{type: s3, prefix: {prefix}/ac/, {", ".join(f"{k}: {v}" for k, v in s3.items())}}}
instances:
  "*": {{cas: main, action_cache: main}}
"""
    with start_granary(tmp_path, config, processes=2) as server:  # nothing process-local: two processes
        client = Client(server.address)
        blobs = round_trips(client)
        client.close()
    listing = boto3.client("s3", endpoint_url=backend_s3.endpoint, aws_access_key_id="testing",
                           aws_secret_access_key="testing", region_name="us-east-1")
    keys = {o["Key"] for o in listing.list_objects_v2(Bucket=S3_BUCKET, Prefix=f"{prefix}/cas/")["Contents"]}
    assert {f"{prefix}/cas/{h}" for h in blobs} <= keys  # every blob reached S3
    r = redis.Redis.from_url(backend_redis.url)
    cached = {k.decode().split(":", 1)[1] for k in r.scan_iter(match=f"{prefix}:*")}
    large = max(blobs, key=lambda h: len(blobs[h]))
    assert set(blobs) - {large} <= cached and large not in cached  # the 20 MiB blob is past max_blob_size
    assert listing.list_objects_v2(Bucket=S3_BUCKET, Prefix=f"{prefix}/ac/")["KeyCount"] == 2


def test_serve_as_a_proxy_in_front_of_a_second_granary(tmp_path):
    with start_granary(tmp_path / "upstream") as upstream:
        config = f"""
storage:
  main:
    type: tiered
    cache: {{type: disk, path: cache, max_size: 1GiB}}
    fallback: {{type: remote, address: "grpc://{upstream.address}", channel_options: {{grpc.keepalive_time_ms: 60000}}}}
action_caches:
  main: {{type: remote, address: "grpc://{upstream.address}"}}
instances:
  "*": {{cas: main, action_cache: main}}
"""
        with start_granary(tmp_path / "proxy", config) as proxy:
            via_proxy = Client(proxy.address)
            blobs = round_trips(via_proxy, instance="team/a")
            direct = Client(upstream.address)
            # the fallback's instance_name is "", and results pass their instance name through
            assert direct.missing([re_pb2.Digest(hash=h, size_bytes=len(b)) for h, b in blobs.items()]) == []
            action = digest(blob(40))
            update_ac(via_proxy, action, action_result(digest(blobs[next(iter(blobs))] ), ), "team/a")
            assert get_ac(direct, action, "team/a") is not None
            assert get_ac(direct, action, "other") is None
            # a blob only the upstream has is served through the proxy (and cached on the way)
            only_up = blob(3 * MiB)
            direct.bs_write(only_up)
            assert via_proxy.bs_read(digest(only_up)) == only_up
            via_proxy.close()
            direct.close()


CLEANUP_CONFIG = """
storage:
  main:
    type: indexed
    url: sqlite:///cas-index.sqlite
    max_size: 1MiB
    protect_recent: 1h
    store: {type: disk, path: cas, max_size: 1GiB}
action_caches:
  main: {type: sqlite, path: ac.sqlite}
instances:
  "*": {cas: main, action_cache: main}
"""


def test_cleanup_keeps_recent_results_complete_and_drops_broken_ones(tmp_path):
    with start_granary(tmp_path, CLEANUP_CONFIG, processes=2) as server:
        client = Client(server.address)
        # oldest first: blobs that a *recent* result needs (incl. files inside a Tree)...
        protected = [blob(60_000) for _ in range(4)]
        client.upload(*protected)
        tree = re_pb2.Tree(root=re_pb2.Directory(files=[
            re_pb2.FileNode(name="f", digest=digest(protected[3]))]))
        (tree_digest,) = client.upload(tree.SerializeToString())
        time.sleep(1.1)
        # ...then blobs that only *old* results need, then unreferenced ones
        old_only = [blob(60_000) for _ in range(6)]
        client.upload(*old_only)
        time.sleep(1.1)
        loose = [blob(60_000) for _ in range(30)]  # 2.4 MB in all: past the 1 MiB budget
        client.upload(*loose)
        recent_action = digest(blob(40))
        update_ac(client, recent_action, action_result(digest(protected[0]), digest(protected[1]),
                                                       stdout=digest(protected[2]), tree=tree_digest))
        old_actions = [digest(blob(40)) for _ in old_only]
        for action, b in zip(old_actions, old_only):
            update_ac(client, action, action_result(digest(b)))
        assert all(get_ac(client, a) is not None for a in [recent_action, *old_actions])
        # the old results were written two hours ago, as far as the action cache knows
        with sqlite3.connect(server.data_dir / "ac.sqlite") as db:
            aged = db.execute("UPDATE results SET atime = atime - 7200 WHERE instr(key, ?) = 0",
                              (recent_action.hash,)).rowcount
        assert aged == len(old_actions)
        cfg = tmp_path / "granary.yaml"
        out = subprocess.run(
            [sys.executable, "-m", "granary", "cleanup", "--config", str(cfg), "--data-dir", str(server.data_dir)],
            capture_output=True, text=True, timeout=120, check=False,
        )
        assert out.returncode == 0, out.stderr
        assert "granary cleanup: storage.main:" in out.stdout, out.stdout
        # under budget; nothing a recent result needs is gone
        assert "-> " in out.stdout and int(out.stdout.split("-> ")[1].split()[0]) <= 1 << 20
        assert client.missing([digest(b) for b in protected] + [tree_digest]) == [], out.stdout
        assert get_ac(client, recent_action) is not None
        # the old-only blobs were least recently used: gone, and so are the results that needed them
        assert len(client.missing([digest(b) for b in old_only])) == len(old_only)
        with sqlite3.connect(server.data_dir / "ac.sqlite") as db:
            left = db.execute("SELECT count(*) FROM results").fetchone()[0]
        assert left == 1
        # and whatever the Action Cache returns is complete
        for action in [recent_action, *old_actions]:
            result = get_ac(client, action)
            if result is not None:
                needed = [f.digest for f in result.output_files] + [result.stdout_digest]
                assert client.missing(needed) == []
        client.close()


def test_background_janitor_keeps_an_indexed_store_under_budget(tmp_path):
    config = CLEANUP_CONFIG.replace("protect_recent: 1h", "protect_recent: 1h\n    janitor_interval: 1s")
    with start_granary(tmp_path, config, processes=2) as server:
        client = Client(server.address)
        first = [blob(100_000) for _ in range(15)]
        client.upload(*first)
        time.sleep(1.1)
        later = [blob(100_000) for _ in range(5)]
        client.upload(*later)
        def stored() -> int:  # read the index itself: FindMissingBlobs would count as an access
            with sqlite3.connect(server.data_dir / "cas-index.sqlite") as db:
                return db.execute("SELECT coalesce(sum(size), 0) FROM cas_index").fetchone()[0]

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and stored() > 0.9 * (1 << 20):
            time.sleep(0.5)
        assert stored() <= 0.9 * (1 << 20), "the janitor did not clean down to 90% of max_size"
        assert client.missing([digest(b) for b in later]) == []  # the most recently used survive
        assert len(client.missing([digest(b) for b in first])) >= 11
        client.close()


def test_memory_anywhere_but_a_tiered_cache_forces_one_process(tmp_path):
    shared_ok = """
storage:
  main: {type: tiered, cache: {type: memory}, fallback: {type: disk, path: cas}}
instances:
  "*": {cas: main}
"""
    with start_granary(tmp_path / "ok", shared_ok, processes=2) as server:
        c = Client(server.address)
        c.upload(b"hello")
        c.close()
    local = """
storage:
  main: {type: sizesplit, stores: [{max_size: 1KiB, store: {type: memory}}], fallback: {type: disk, path: cas}}
instances:
  "*": {cas: main}
"""
    with pytest.raises(RuntimeError, match="cannot share memory stores"):
        start_granary(tmp_path / "bad", local, processes=2)


def test_sha256_of_helper_blob_is_stable():
    assert hashlib.sha256(b"").hexdigest().startswith("e3b0")
