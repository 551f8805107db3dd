"""Graceful shutdown of `granary serve`: SIGTERM drains (running actions finish and reach their
clients and the action cache, new Execute calls get UNAVAILABLE), then the tree exits 0 quietly;
a drain that runs out of time leaves the job queued for the next start. Real processes throughout:
the server (one process, or a supervisor with two), its local worker, a real client."""

from __future__ import annotations

import signal
import socket
import time

import grpc
import pytest
from google.longrunning import operations_pb2
from google.rpc import code_pb2
from rwapi import ExecClient, FakeBot, Stream, final, stage_of
from serverutil import GranaryProcess, start_granary

from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2

QUEUED, EXECUTING = 2, 3


def config(drain_timeout: str, local_workers: int = 1) -> str:
    return f"""
server: {{drain_timeout: {drain_timeout}}}
storage: {{main: {{type: disk, path: cas}}}}
action_caches: {{main: {{type: disk, path: ac}}}}
instances: {{"": {{cas: main, action_cache: main}}}}
execution: {{local_workers: {local_workers}, bot_long_poll: 2s, bot_timeout: 20s}}
"""


def wait_draining(client: ExecClient, timeout: float = 30) -> None:
    """Probe with an Execute whose inputs are missing (never queued): FAILED_PRECONDITION until draining."""
    d, _ = client.action(["never", "uploaded"], upload=False)
    deadline = time.monotonic() + timeout
    while True:
        try:
            response = final(client.execute(d, timeout=10))
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAVAILABLE, e
            assert "shutting down" in (e.details() or ""), e.details()
            return
        assert response.status.code == code_pb2.FAILED_PRECONDITION
        assert time.monotonic() < deadline, "the server never began draining"
        time.sleep(0.05)


def exit_code(server: GranaryProcess, timeout: float = 90) -> int:
    return server.proc.wait(timeout)


def quiet(log: str) -> None:
    assert "Traceback" not in log, log
    assert " WARNING " not in log and " ERROR " not in log, log
    assert "UNAVAILABLE" not in log, log


@pytest.mark.parametrize("processes", [1, 2])
def test_sigterm_drains_running_action_to_its_client_and_the_cache(tmp_path, processes):
    cfg = config("60s")
    server = start_granary(tmp_path, cfg, processes=processes)
    try:
        client = ExecClient(server.address)
        d, _ = client.action(["sh", "-c", "sleep 4; echo drained"])
        stream = Stream(client.execute(d, timeout=120))
        stream.wait_stage(EXECUTING, timeout=60)
        server.proc.send_signal(signal.SIGTERM)
        wait_draining(client)
        # a real action is refused too, while the CAS keeps serving (the upload works)
        late, _ = client.action(["echo", "late"])
        with pytest.raises(grpc.RpcError) as refused:
            final(client.execute(late, timeout=10))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        response = stream.result(timeout=90)
        assert response.status.code == code_pb2.OK, response.status
        assert response.result.exit_code == 0
        assert exit_code(server) == 0
        client.close()
    finally:
        server.stop()
    quiet(server.log.read_text())

    again = start_granary(tmp_path, cfg, processes=processes)
    try:
        client = ExecClient(again.address)
        cached = client.ac.GetActionResult(re_pb2.GetActionResultRequest(action_digest=d))
        assert cached.exit_code == 0
        assert client.bs_read(cached.stdout_digest) == b"drained\n"
        with pytest.raises(grpc.RpcError) as missing:  # the refused action never ran
            client.ac.GetActionResult(re_pb2.GetActionResultRequest(action_digest=late))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        client.close()
    finally:
        again.stop()


def test_wait_execution_gets_the_result_while_draining(tmp_path):
    server = start_granary(tmp_path, config("60s"), processes=2)
    try:
        client = ExecClient(server.address)
        d, _ = client.action(["sh", "-c", "sleep 4; echo waited"])
        stream = Stream(client.execute(d, timeout=120))
        stream.wait_stage(EXECUTING, timeout=60)
        waiter_client = ExecClient(server.address)  # its own connection: maybe the other process
        waiter = Stream(waiter_client.wait(stream.name, timeout=120))
        waiter.wait_first()
        server.proc.send_signal(signal.SIGTERM)
        assert waiter.result(timeout=90).result.exit_code == 0
        assert stream.result(timeout=90).result.exit_code == 0
        assert exit_code(server) == 0
        client.close()
        waiter_client.close()
    finally:
        server.stop()
    quiet(server.log.read_text())


@pytest.mark.parametrize("processes", [1, 2])
def test_drain_timeout_leaves_the_job_queued_for_the_next_start(tmp_path, processes):
    server = start_granary(tmp_path, config("2s"), processes=processes)
    try:
        client = ExecClient(server.address)
        d, _ = client.action(["sh", "-c", "sleep 60; echo never"])
        stream = Stream(client.execute(d, timeout=120))
        stream.wait_stage(EXECUTING, timeout=60)
        name = stream.name
        server.proc.send_signal(signal.SIGTERM)
        assert exit_code(server, timeout=60) == 0
        stream.thread.join(30)
        # the client learns why and what to follow, not gRPC's generic "Cancelling all calls"
        assert stream.error is not None and stream.error.code() == grpc.StatusCode.UNAVAILABLE
        assert name in stream.error.details() and "WaitExecution" in stream.error.details(), stream.error.details()
        client.close()
    finally:
        server.stop()
    log = server.log.read_text()
    assert "Traceback" not in log, log

    again = start_granary(tmp_path, config("2s", local_workers=0), processes=1)
    try:
        client = ExecClient(again.address)
        op = client.ops.GetOperation(operations_pb2.GetOperationRequest(name=name))
        assert not op.done and stage_of(op) == QUEUED  # given back by the worker, not lost
        bot = FakeBot(again.address)
        bot.connect(timeout=3)
        waiter = Stream(client.wait(name))
        bot.run(stdout=b"second start")
        assert waiter.result().result.stdout_raw == b"second start"
        bot.close()
        client.close()
    finally:
        again.stop()


@pytest.mark.parametrize("before", [2, 1])
def test_restart_on_the_same_port_with_connections_in_time_wait(tmp_path, before):
    """A server that closed its connections first leaves them in TIME_WAIT on its port; a new
    server with two processes (after one with `before` processes) must start there at once."""
    first = start_granary(tmp_path / "a", config("5s", local_workers=0), processes=before)
    host, _, port_text = first.address.rpartition(":")
    port = int(port_text)
    try:
        peers = [socket.create_connection((host, port), timeout=30) for _ in range(8)]
        client = ExecClient(first.address)
        assert client.missing([]) == []  # serving, so every connection was accepted
        client.close()
        first.proc.send_signal(signal.SIGTERM)
        assert exit_code(first) == 0
        for peer in peers:  # the server closed first; closing ours leaves its side in TIME_WAIT
            while peer.recv(65536):
                pass
            peer.close()
    finally:
        first.stop()
    assert _time_wait_on(port), "the test needs connections in TIME_WAIT on the port"
    second = start_granary(tmp_path / "b", config("5s", local_workers=0), "--listen", f"127.0.0.1:{port}",
                           processes=2)
    try:
        assert second.address == f"127.0.0.1:{port}"
        client = ExecClient(second.address)
        assert client.missing([]) == []
        client.close()
    finally:
        second.stop()
    assert "Traceback" not in second.log.read_text()


def _time_wait_on(port: int) -> bool:
    """Sockets in TIME_WAIT (state 06) whose local port is `port` (gRPC listens on IPv6 sockets)."""
    rows = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            rows += [line.split() for line in f.readlines()[1:]]
    return any(int(r[1].rsplit(":", 1)[1], 16) == port and r[3] == "06" for r in rows)


def test_draining_server_gives_bots_no_new_leases(tmp_path):
    server = start_granary(tmp_path, config("3s", local_workers=0), processes=1)
    try:
        client = ExecClient(server.address)
        bot = FakeBot(server.address)
        bot.connect(timeout=3)
        d, _ = client.action(["queued", "at", "shutdown"])
        stream = Stream(client.execute(d, timeout=120))
        stream.wait_stage(QUEUED)
        name = stream.name
        server.proc.send_signal(signal.SIGTERM)
        wait_draining(client)
        assert not bot.update(timeout=5).leases  # the queued job is not handed out any more
        assert exit_code(server) == 0
        bot.close()
        client.close()
    finally:
        server.stop()
    quiet(server.log.read_text())

    again = start_granary(tmp_path, config("3s", local_workers=0), processes=1)
    try:
        client = ExecClient(again.address)
        op = client.ops.GetOperation(operations_pb2.GetOperationRequest(name=name))
        assert not op.done and stage_of(op) == QUEUED
        bot = FakeBot(again.address)
        bot.connect(timeout=3)
        waiter = Stream(client.wait(name))
        bot.run(stdout=b"after restart")
        assert waiter.result().result.stdout_raw == b"after restart"
        bot.close()
        client.close()
    finally:
        again.stop()
