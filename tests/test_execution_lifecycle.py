"""Execution lifecycle edges over real gRPC with real `granary serve` processes: operations are
findable the moment a client sees their name, on any server process sharing the queue."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid

import grpc
import pytest
from execsetup import config
from google.longrunning import operations_pb2
from google.rpc import code_pb2
from rwapi import ExecClient, FakeBot, Stream, response_of, stage_of
from serverutil import start_granary

from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from granary.execution import leases

QUEUED, EXECUTING, COMPLETED = 2, 3, 4


def shared(tmp_path, database: str | None, **execution) -> str:
    """A config for several servers sharing one queue, CAS and action cache."""
    url = database or f"sqlite:///{tmp_path / 'queue.sqlite'}"
    cfg = config(url, **execution)
    return cfg.replace("path: cas", f"path: {tmp_path / 'cas'}").replace("path: ac", f"path: {tmp_path / 'ac'}")


# ---- operations exist before their name is seen ------------------------------


def first_op(call) -> operations_pb2.Operation:
    return next(iter(call))


def assert_found_everywhere(other: ExecClient, op: operations_pb2.Operation) -> operations_pb2.Operation:
    """GetOperation, WaitExecution and CancelOperation on another server process all find it."""
    got = other.ops.GetOperation(operations_pb2.GetOperationRequest(name=op.name))
    assert got.name == op.name
    waited = first_op(other.wait(op.name, timeout=30))
    assert waited.name == op.name
    other.ops.CancelOperation(operations_pb2.CancelOperationRequest(name=op.name))
    return other.ops.GetOperation(operations_pb2.GetOperationRequest(name=op.name))


def test_operation_is_found_on_another_process_as_soon_as_it_is_seen(tmp_path, database):
    cfg = shared(tmp_path, database)
    a = start_granary(tmp_path / "a", cfg)
    b = start_granary(tmp_path / "b", cfg)
    try:
        client_a, client_b = ExecClient(a.address), ExecClient(b.address)
        # queued: several times, since the old behaviour lost a race here
        for i in range(5):
            d, _ = client_a.action(["queued", str(i)])
            call = client_a.execute(d)
            op = first_op(call)
            after = assert_found_everywhere(client_b, op)
            assert after.done and response_of(after).status.code == code_pb2.CANCELLED
            call.cancel()
        # merged with an identical in-flight action
        d, _ = client_a.action(["merged"])
        first = Stream(client_a.execute(d))
        first.wait_stage(QUEUED)
        for _ in range(3):
            call = client_a.execute(d)
            op = first_op(call)
            got = client_b.ops.GetOperation(operations_pb2.GetOperationRequest(name=op.name))
            assert got.name == op.name and not got.done
            assert first_op(client_b.wait(op.name, timeout=30)).name == op.name
            call.cancel()
        # answered from the action cache
        d, _ = client_a.action(["cached"])
        client_a.ac.UpdateActionResult(re_pb2.UpdateActionResultRequest(
            action_digest=d, action_result=re_pb2.ActionResult(exit_code=0, stdout_raw=b"from the cache"),
        ))
        op = first_op(client_a.execute(d))
        assert op.done and response_of(op).cached_result
        after = assert_found_everywhere(client_b, op)
        assert after.done and response_of(after).cached_result, "a finished operation stays as it finished"
        assert response_of(after).result.stdout_raw == b"from the cache"
        # inputs missing: finished at once with FAILED_PRECONDITION, and still findable
        d, _ = client_a.action(["cat", "x"], files={"x": uuid.uuid4().bytes}, upload=False)
        op = first_op(client_a.execute(d))
        assert op.done and response_of(op).status.code == code_pb2.FAILED_PRECONDITION
        after = assert_found_everywhere(client_b, op)
        assert response_of(after).status.code == code_pb2.FAILED_PRECONDITION
        # a refused action gets an error before any operation name, so there is none to look for
        d, _ = client_a.action(["x"], platform=[("OSFamily", "plan9")])
        with pytest.raises(grpc.RpcError) as e:
            first_op(client_a.execute(d))
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        # the merged job still runs once for the stream that is left
        bot = FakeBot(b.address)
        bot.connect()
        bot.run(stdout=b"merged")
        assert first.result().result.stdout_raw == b"merged"
        assert stage_of(first.ops[0]) == QUEUED
        bot.close()
        client_a.close()
        client_b.close()
    finally:
        a.stop()
        b.stop()


# ---- platforms nobody offers fail instead of waiting forever -----------------


def execute_when_accepted(client: ExecClient, d, timeout: float = 60) -> Stream:
    """Execute, retrying while the server still refuses the platform (its view of bots lags)."""
    deadline = time.monotonic() + timeout
    while True:
        stream = Stream(client.execute(d))
        try:
            stream.wait_first()
            return stream
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.FAILED_PRECONDITION, e
            assert time.monotonic() < deadline, f"still refused: {e.details()}"
            time.sleep(0.2)


def assert_unsatisfiable(response: re_pb2.ExecuteResponse, prop: str) -> None:
    assert response.status.code == code_pb2.FAILED_PRECONDITION, response.status
    assert prop in response.status.message and "cannot execute this action" in response.status.message
    assert not response.HasField("result") or response.result == re_pb2.ActionResult()


def test_unsatisfiable_platform_fails_when_the_grace_ends_and_when_its_bot_leaves(tmp_path, database):
    settings = {"platform_grace": "6s", "bot_timeout": "3s", "known_platforms": "[]"}
    a = start_granary(tmp_path / "a", shared(tmp_path, database, local_workers=1, **settings))
    b = None
    try:
        client_a = ExecClient(a.address)
        gpu, _ = client_a.action(["gpu"], platform=[("Pool", "gpu")])
        stream = Stream(client_a.execute(gpu))
        stream.wait_first()
        assert stage_of(stream.ops[0]) == QUEUED, "accepted while bots may still connect"
        b = start_granary(tmp_path / "b", shared(tmp_path, database, local_workers=0, **settings))
        client_b = ExecClient(b.address)
        waiter = Stream(client_b.wait(stream.name))
        # the grace ends with only the local worker (no Pool) connected: the job fails, on both servers
        assert_unsatisfiable(stream.result(timeout=90), "Pool=gpu")
        assert_unsatisfiable(waiter.result(timeout=30), "Pool=gpu")
        got = client_b.ops.GetOperation(operations_pb2.GetOperationRequest(name=stream.name))
        assert got.done and not got.HasField("error")
        assert_unsatisfiable(response_of(got), "Pool=gpu")
        # the local worker still runs what it can
        d, _ = client_a.action(["sh", "-c", "echo ok > out"])
        ran = execute_when_accepted(client_a, d).result(timeout=90)
        assert ran.status.code == 0 and ran.result.exit_code == 0
        # a bot offering Pool=gpu makes such actions acceptable; when its session expires, they fail
        bot = FakeBot(b.address, properties=[("OSFamily", "linux"), ("Pool", "gpu")])
        bot.connect()
        gpu2, _ = client_b.action(["gpu", "again"], platform=[("Pool", "gpu")])
        stream = execute_when_accepted(client_a, gpu2)
        assert stage_of(stream.ops[0]) == QUEUED
        waiter = Stream(client_b.wait(stream.name))
        assert_unsatisfiable(stream.result(timeout=90), "Pool=gpu")
        assert_unsatisfiable(waiter.result(timeout=30), "Pool=gpu")
        # the same action is refused outright now, with the same message
        with pytest.raises(grpc.RpcError) as e:
            list(client_a.execute(gpu2))
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "Pool=gpu" in e.value.details()
        bot.close()
        client_a.close()
        client_b.close()
    finally:
        a.stop()
        if b is not None:
            b.stop()


# ---- a bot that comes back without its leases --------------------------------


def test_bot_restarted_without_its_lease_gives_the_job_back_at_once(tmp_path, database):
    # bot_timeout is far beyond the waits below: only the restart can free the job in time
    with start_granary(tmp_path, config(database, bot_timeout="10m", retry_limit=1)) as server:
        client = ExecClient(server.address)
        bot = FakeBot(server.address, bot_id="crashy")
        bot.connect()
        d, _ = client.action(["crash", "me"])
        stream = Stream(client.execute(d))
        lease = bot.wait_lease()
        bot.accept(lease.id)
        stream.wait_stage(EXECUTING)
        # the worker crashed and restarted: same bot id, a new session, no leases; the job is
        # re-queued at once and the new session's free slot takes it
        back = FakeBot(server.address, bot_id="crashy")
        back.connect()
        assert back.wait_lease(timeout=30).id == lease.id
        back.accept(lease.id)
        waiter = Stream(client.wait(stream.name))
        waiter.wait_stage(EXECUTING)
        # the old session, should it speak again, learns its lease is gone
        bot.update()
        assert bot.leases[lease.id].state == leases.CANCELLED
        # crash again: that second re-queue is past retry_limit 1, so the job fails
        again = FakeBot(server.address, bot_id="crashy")
        again.connect()
        response = stream.result(timeout=60)
        assert response.status.code == code_pb2.UNAVAILABLE
        assert "gave up after 2 attempts" in response.status.message and "crashy" in response.status.message
        assert response_of(first_op(client.wait(stream.name))).status.code == code_pb2.UNAVAILABLE
        for x in (bot, back, again, client):
            x.close()


def test_bot_restarted_with_its_lease_keeps_it(tmp_path, database):
    with start_granary(tmp_path, config(database, bot_timeout="10m")) as server:
        client = ExecClient(server.address)
        bot = FakeBot(server.address, bot_id="steady")
        bot.connect()
        d, _ = client.action(["keep", "me"])
        stream = Stream(client.execute(d))
        lease = bot.wait_lease()
        bot.accept(lease.id)
        stream.wait_stage(EXECUTING)
        back = FakeBot(server.address, bot_id="steady")
        back.leases = dict(bot.leases)
        back.connect()  # a new session that still runs the lease
        assert back.leases[lease.id].state == leases.ACTIVE
        back.complete(lease.id, re_pb2.ActionResult(stdout_raw=b"kept"))
        response = stream.result(timeout=60)
        assert response.status.code == 0 and response.result.stdout_raw == b"kept"
        assert [stage_of(o) for o in stream.ops] == [QUEUED, EXECUTING, COMPLETED]
        for x in (bot, back, client):
            x.close()


def test_session_that_stops_reporting_a_running_lease_gives_it_back(tmp_path, database):
    with start_granary(tmp_path, config(database, bot_timeout="10m")) as server:
        client = ExecClient(server.address)
        bot = FakeBot(server.address)
        bot.connect()
        d, _ = client.action(["drop", "me"])
        stream = Stream(client.execute(d))
        lease = bot.wait_lease()
        bot.accept(lease.id)
        stream.wait_stage(EXECUTING)
        bot.leases = {}  # the same session, restarted without the lease: it is offered again
        bot.update()
        assert [p.id for p in bot.pending()] == [lease.id]
        bot.run(stdout=b"rerun")
        assert stream.result(timeout=60).result.stdout_raw == b"rerun"
        for x in (bot, client):
            x.close()


def start_worker(tmp_path, address: str, name: str) -> subprocess.Popen:
    log = open(tmp_path / f"worker-{name}.log", "ab")  # noqa: SIM115 - lives as long as the worker
    return subprocess.Popen(
        [sys.executable, "-m", "granary", "worker", "--server", address, "--name", name, "--concurrency", "1",
         "--cache-dir", str(tmp_path / "worker-cache"), "--sandbox", "none"],
        stdout=log, stderr=log, start_new_session=True,
    )


def test_worker_killed_and_restarted_with_the_same_name_gives_its_job_back(tmp_path):
    # retry_limit 0: the re-queue caused by the restart fails the job, which says why and when
    with start_granary(tmp_path, config(None, bot_timeout="10m", retry_limit=0, known_platforms="[]")) as server:
        client = ExecClient(server.address)
        worker = start_worker(tmp_path, server.address, "phoenix")
        try:
            d, _ = client.action(["sh", "-c", "sleep 300"])
            stream = execute_when_accepted(client, d)  # refused until the worker's session exists
            stream.wait_stage(EXECUTING, timeout=60)
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
            worker = start_worker(tmp_path, server.address, "phoenix")
            response = stream.result(timeout=90)
            assert response.status.code == code_pb2.UNAVAILABLE, response.status
            assert "worker phoenix-0 came back" in response.status.message
            assert "gave up after 1 attempts" in response.status.message
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
            client.close()
