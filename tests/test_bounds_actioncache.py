"""The action cache bounds what a client may store, and write_once holds for executed results."""

from __future__ import annotations

import asyncio
import os
import uuid

import grpc
import pytest
from bounds_util import MiB, rss
from google.rpc import code_pb2
from reapi import Client, digest, re_pb2
from rwapi import ExecClient, FakeBot, Stream
from serverutil import start_granary

from granary.actioncache.store import MemoryActionCacheStore, SqliteActionCacheStore

CONFIG = """
storage:
  mem: {type: memory, max_size: 256MiB}
action_caches:
  mem: {type: memory}
instances:
  "*": {cas: mem, action_cache: mem}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_granary(tmp_path_factory.mktemp("ac-bounds"), CONFIG, processes=1)
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    c = Client(server.address)
    yield c
    c.close()


def update(client: Client, result: re_pb2.ActionResult, instance: str = "") -> re_pb2.ActionResult:
    return client.ac.UpdateActionResult(re_pb2.UpdateActionResultRequest(
        instance_name=instance, action_digest=digest(uuid.uuid4().bytes), action_result=result), timeout=60)


def test_inline_stdout_over_the_cap_is_refused_and_not_kept(server, client):
    before = rss(server.proc.pid)
    for _ in range(150):  # 300 MiB if they were kept
        with pytest.raises(grpc.RpcError) as e:
            update(client, re_pb2.ActionResult(stdout_raw=os.urandom(2 * MiB)))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "stdout_raw" in e.value.details() and str(MiB) in e.value.details()
    assert rss(server.proc.pid) - before < 200 * MiB


@pytest.mark.parametrize(("field", "result"), [
    ("stderr_raw", re_pb2.ActionResult(stderr_raw=b"e" * (MiB + 1))),
    ("output_files['out/big'].contents", re_pb2.ActionResult(output_files=[
        re_pb2.OutputFile(path="out/big", digest=digest(b"b" * (MiB + 1)), contents=b"b" * (MiB + 1))])),
])
def test_other_inline_fields_over_the_cap_are_refused(client, field, result):
    with pytest.raises(grpc.RpcError) as e:
        update(client, result)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in e.value.details() and str(MiB) in e.value.details()


def test_inline_fields_at_the_cap_are_stored(client):
    action = digest(uuid.uuid4().bytes)
    result = re_pb2.ActionResult(stdout_raw=b"o" * MiB)
    client.ac.UpdateActionResult(re_pb2.UpdateActionResultRequest(action_digest=action, action_result=result))
    got = client.ac.GetActionResult(re_pb2.GetActionResultRequest(action_digest=action))
    assert got.stdout_raw == result.stdout_raw


def test_a_result_larger_than_the_cap_is_refused(client):
    empty = digest(b"")
    files = [re_pb2.OutputFile(path=f"out/{i:08d}/{'p' * 40}", digest=empty) for i in range(60_000)]
    result = re_pb2.ActionResult(output_files=files)
    size = len(result.SerializeToString(deterministic=True))
    assert size > 3 * MiB
    with pytest.raises(grpc.RpcError) as e:
        update(client, result)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert str(size) in e.value.details() and "server.ac_max_result_size" in e.value.details()


# ---- write_once and executed results -----------------------------------------------------------


def exec_config(ac_type: str) -> str:
    ac = "{type: memory}" if ac_type == "memory" else "{type: disk, path: ac}"
    return f"""
storage: {{main: {{type: disk, path: cas}}}}
action_caches: {{main: {ac}}}
instances:
  ci: {{cas: main, action_cache: main, write_once: true}}
  "": {{cas: main, action_cache: main}}
execution: {{local_workers: 0, platform_grace: 0, bot_long_poll: 1, poll_interval: 0.2,
             known_platforms: [{{OSFamily: linux, ISA: x86-64}}]}}
"""


def run_once(client: ExecClient, bot: FakeBot, d, stdout: bytes, skip_cache: bool) -> re_pb2.ExecuteResponse:
    stream = Stream(client.execute(d, skip_cache=skip_cache))
    lease = bot.wait_lease()
    bot.accept(lease.id)
    bot.complete(lease.id, re_pb2.ActionResult(exit_code=0, stdout_raw=stdout))
    return stream.result()


@pytest.mark.parametrize("ac_type", ["disk", "memory"])
def test_executed_results_keep_the_first_under_write_once(tmp_path, ac_type):
    srv = start_granary(tmp_path, exec_config(ac_type))
    client = ExecClient(srv.address, instance="ci")
    bot = FakeBot(srv.address, instance="ci")
    try:
        bot.connect()
        d, _ = client.action(["sh", "-c", "date +%s%N"])
        assert run_once(client, bot, d, b"first\n", skip_cache=False).status.code == code_pb2.OK
        second = run_once(client, bot, d, b"second\n", skip_cache=True)
        assert second.status.code == code_pb2.OK and second.result.stdout_raw == b"second\n"
        got = client.ac.GetActionResult(re_pb2.GetActionResultRequest(instance_name="ci", action_digest=d))
        assert got.stdout_raw == b"first\n"
    finally:
        bot.close()
        client.close()
        srv.stop()


def test_executed_result_over_the_cap_is_not_cached_but_returned(tmp_path):
    srv = start_granary(tmp_path, exec_config("disk"))
    client = ExecClient(srv.address)
    bot = FakeBot(srv.address)
    try:
        bot.connect()
        d, _ = client.action(["yes"])
        big = b"y\n" * MiB
        response = run_once(client, bot, d, big, skip_cache=False)
        assert response.status.code == code_pb2.OK and response.result.stdout_raw == big
        with pytest.raises(grpc.RpcError) as e:
            client.ac.GetActionResult(re_pb2.GetActionResultRequest(action_digest=d))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        assert "not caching the result" in srv.log.read_text()
    finally:
        bot.close()
        client.close()
        srv.stop()


# ---- the stores: byte budgets and atomic put_if_absent -------------------------------------------


def test_memory_store_keeps_within_its_byte_budget():
    async def main():
        store = MemoryActionCacheStore(max_bytes=10 * MiB)
        for i in range(100):
            await store.put(f"k{i}", bytes([i % 256]) * MiB)
        assert store.bytes <= 10 * MiB
        assert await store.get("k99") == bytes([99]) * MiB  # the newest stay
        assert await store.get("k0") is None

    asyncio.run(main())


def test_sqlite_store_keeps_within_its_byte_budget_across_processes(tmp_path):
    async def main():
        path = tmp_path / "ac.sqlite"
        old = SqliteActionCacheStore(path, max_bytes=0)  # a file filled before there was a budget
        for i in range(30):
            await old.put(f"old{i}", b"o" * MiB)
        await old.close()
        a = SqliteActionCacheStore(path, max_bytes=20 * MiB)
        b = SqliteActionCacheStore(path, max_bytes=20 * MiB)  # another server process on the same file
        assert a.stored_bytes == 30 * MiB  # counted once when the budget first applied
        for i in range(20):
            await (a if i % 2 else b).put(f"k{i}", b"n" * MiB)
        assert a.stored_bytes <= 20 * MiB
        total = a._db.execute("SELECT sum(length(value)) FROM results").fetchone()[0]
        assert total == a.stored_bytes == b.stored_bytes
        assert await a.get("k19") is not None
        await a.close()
        await b.close()

    asyncio.run(main())


def test_sqlite_put_if_absent_has_one_winner_across_processes(tmp_path):
    async def main():
        stores = [SqliteActionCacheStore(tmp_path / "ac.sqlite") for _ in range(4)]
        answers = await asyncio.gather(*(s.put_if_absent("k", f"v{i}".encode()) for i, s in enumerate(stores)))
        winners = [i for i, a in enumerate(answers) if a is None]
        assert len(winners) == 1
        stored = f"v{winners[0]}".encode()
        assert all(a in (None, stored) for a in answers)
        assert await stores[0].get("k") == stored
        for s in stores:
            await s.close()

    asyncio.run(main())


def test_memory_put_if_absent_under_concurrency():
    async def main():
        store = MemoryActionCacheStore()
        answers = await asyncio.gather(*(store.put_if_absent("k", f"v{i}".encode()) for i in range(50)))
        assert answers.count(None) == 1
        assert await store.get("k") == f"v{answers.index(None)}".encode()

    asyncio.run(main())


def test_s3_put_if_absent_has_one_winner(tmp_path):
    from services import S3Server

    from granary.actioncache.s3 import S3ActionCacheStore
    from granary.s3_client import S3Connection

    server = S3Server()

    async def main():
        conn = S3Connection(bucket="ac-once", endpoint_url=server.endpoint, region="us-east-1",
                            access_key_id="testing", secret_access_key="testing", create_bucket=True)
        store = S3ActionCacheStore(conn)
        answers = await asyncio.gather(*(store.put_if_absent("k", f"v{i}".encode()) for i in range(8)))
        assert answers.count(None) == 1
        winner = f"v{answers.index(None)}".encode()
        assert all(a in (None, winner) for a in answers)
        assert await store.get("k") == winner
        await store.close()

    try:
        asyncio.run(main())
    finally:
        server.stop()
