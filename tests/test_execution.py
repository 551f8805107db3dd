"""Remote execution end to end over real gRPC: Execute/WaitExecution, Operations and the Bots
service, with a fake bot driven over the Remote Workers API, on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import signal
import time

import grpc
import pytest
from execsetup import config
from google.longrunning import operations_pb2
from google.rpc import code_pb2, error_details_pb2
from rwapi import ExecClient, FakeBot, Stream, final, response_of, stage_of
from serverutil import start_granary

from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from granary.execution import leases

QUEUED, EXECUTING, COMPLETED = 2, 3, 4


@pytest.fixture
def farm(tmp_path, database):
    """A server, a client and a connected fake bot."""
    server = start_granary(tmp_path, config(database))
    client = ExecClient(server.address)
    bot = FakeBot(server.address)
    bot.connect()
    yield server, client, bot
    bot.close()
    client.close()
    server.stop()


def action_result_or_none(client: ExecClient, d) -> re_pb2.ActionResult | None:
    try:
        return client.ac.GetActionResult(re_pb2.GetActionResultRequest(action_digest=d))
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND
        return None


def command_of(lease) -> str:
    return leases.lease_action(lease).command_digest.hash


def test_capabilities_report_execution(farm):
    _, client, _ = farm
    caps = client.caps.GetCapabilities(re_pb2.GetCapabilitiesRequest()).execution_capabilities
    assert caps.exec_enabled
    assert caps.digest_function == re_pb2.DigestFunction.SHA256
    assert list(caps.digest_functions) == [re_pb2.DigestFunction.SHA256]
    assert caps.execution_priority_capabilities.priorities
    assert "OSFamily" in caps.supported_node_properties


def test_execute_happy_path_then_cached(farm):
    _, client, bot = farm
    d, _ = client.action(["echo", "hi"])
    stream = Stream(client.execute(d, tool="bazel", invocation="inv-1"))
    lease = bot.wait_lease()
    assert lease.state == leases.PENDING
    action = leases.lease_action(lease)
    assert action.timeout.seconds == 600  # the server's default is filled in
    stream.wait_stage(QUEUED)
    bot.accept(lease.id)
    stream.wait_stage(EXECUTING)
    bot.complete(lease.id, re_pb2.ActionResult(exit_code=0, stdout_raw=b"hi\n"))
    response = stream.result()
    assert [stage_of(o) for o in stream.ops] == [QUEUED, EXECUTING, COMPLETED]
    assert response.status.code == code_pb2.OK
    assert not response.cached_result
    assert response.result.stdout_raw == b"hi\n"
    assert response.result.execution_metadata.worker == bot.bot_id
    assert response.result.execution_metadata.HasField("queued_timestamp")
    assert bot.leases == {}  # the completed lease is gone from the session
    assert action_result_or_none(client, d).stdout_raw == b"hi\n"
    again = final(client.execute(d))
    assert again.cached_result and again.result.stdout_raw == b"hi\n"
    # skip_cache_lookup runs it again
    stream = Stream(client.execute(d, skip_cache=True))
    bot.run(stdout=b"again\n")
    assert not stream.result().cached_result
    # the operation is listed with the RequestMetadata labels
    listed = client.ops.ListOperations(operations_pb2.ListOperationsRequest(name="", filter="tool_name = bazel"))
    assert len(listed.operations) == 1 and listed.operations[0].done


def test_missing_inputs_are_precondition_failures(farm):
    _, client, _ = farm
    d, blobs = client.action(["cat", "a", "b"], files={"a": b"aaa", "b": b"bbb"}, upload=False)
    response = final(client.execute(d))
    assert response.status.code == code_pb2.FAILED_PRECONDITION
    assert _violations(response) == [("MISSING", f"blobs/{d.hash}/{d.size_bytes}")]
    # upload everything except the command and one input file
    action = re_pb2.Action.FromString(blobs[d.hash])
    command_hash = action.command_digest.hash
    missing_file = re_pb2.Digest(hash=_sha(b"bbb"), size_bytes=3)
    client.upload(*[data for h, data in blobs.items() if h not in (command_hash, missing_file.hash)])
    response = final(client.execute(d))
    assert response.status.code == code_pb2.FAILED_PRECONDITION
    assert sorted(_violations(response)) == sorted([
        ("MISSING", f"blobs/{command_hash}/{action.command_digest.size_bytes}"),
        ("MISSING", f"blobs/{missing_file.hash}/3"),
    ])


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _violations(response: re_pb2.ExecuteResponse) -> list[tuple[str, str]]:
    failure = error_details_pb2.PreconditionFailure()
    assert response.status.details and response.status.details[0].Unpack(failure)
    return [(v.type, v.subject) for v in failure.violations]


def test_do_not_cache_is_never_merged_or_cached(farm):
    _, client, bot = farm
    bot.concurrency = 2
    d, _ = client.action(["date"], do_not_cache=True)
    first, second = Stream(client.execute(d)), Stream(client.execute(d))
    first.wait_stage(QUEUED), second.wait_stage(QUEUED)
    ids = set()
    while len(ids) < 2:
        bot.update()
        ids |= {lease.id for lease in bot.pending()}
    for lease_id in ids:
        bot.accept(lease_id)
        bot.complete(lease_id, re_pb2.ActionResult(exit_code=0))
    assert first.result().status.code == 0 and second.result().status.code == 0
    assert action_result_or_none(client, d) is None


def test_identical_actions_are_merged(farm):
    _, client, bot = farm
    bot.concurrency = 3
    d, _ = client.action(["sleep", "1"])
    streams = [Stream(client.execute(d, skip_cache=True)) for _ in range(3)]
    for s in streams:
        s.wait_stage(QUEUED)
    assert len({s.name for s in streams}) == 3  # one operation each
    lease = bot.wait_lease()
    bot.update()
    assert len(bot.leases) == 1  # ... but one job
    bot.accept(lease.id)
    bot.complete(lease.id, re_pb2.ActionResult(exit_code=0, stdout_raw=b"once"))
    for s in streams:
        assert s.result().result.stdout_raw == b"once"


def test_priority_then_age(tmp_path, database):
    with start_granary(tmp_path, config(database)) as server:
        client = ExecClient(server.address)
        order = {}
        streams = []
        for priority, word in [(5, "low"), (0, "normal-1"), (-3, "urgent"), (0, "normal-2")]:
            d, blobs = client.action(["echo", word])
            order[re_pb2.Action.FromString(blobs[d.hash]).command_digest.hash] = word
            streams.append(Stream(client.execute(d, priority=priority)))
            streams[-1].wait_stage(QUEUED)
        bot = FakeBot(server.address)
        bot.connect()
        taken = []
        for _ in streams:
            lease = bot.wait_lease()
            taken.append(order[command_of(lease)])
            bot.accept(lease.id)
            bot.complete(lease.id, re_pb2.ActionResult())
        assert taken == ["urgent", "normal-1", "normal-2", "low"]
        for s in streams:
            assert s.result().status.code == 0
        bot.close()
        client.close()


def test_platform_matching_and_refusal(tmp_path, database):
    cfg = config(database, known_platforms="[{OSFamily: linux, ISA: x86-64}, {OSFamily: windows}]")
    with start_granary(tmp_path, cfg) as server:
        client = ExecClient(server.address)
        # nobody offers this, not even a known platform: refused, naming the property
        d, _ = client.action(["x"], platform=[("OSFamily", "plan9")])
        with pytest.raises(grpc.RpcError) as e:
            final(client.execute(d))
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "OSFamily=plan9" in e.value.details()
        # a custom property only a connected bot offers is accepted
        d, _ = client.action(["x"], platform=[("Pool", "gpu")])
        with pytest.raises(grpc.RpcError):
            final(client.execute(d))
        gpu = FakeBot(server.address, properties=[("OSFamily", "linux"), ("Pool", "gpu")])
        gpu.connect()
        gpu_stream = Stream(client.execute(d))
        # a windows action (known platform) waits for a windows bot; the linux bot never gets it
        win_d, _ = client.action(["cmd"], command_platform=[("OSFamily", "windows")])
        win_stream = Stream(client.execute(win_d))
        linux = FakeBot(server.address)
        linux.connect()
        win_stream.wait_stage(QUEUED)
        for _ in range(2):
            linux.update()
        assert linux.leases == {}
        gpu.run()
        assert gpu_stream.result().status.code == 0
        windows = FakeBot(server.address, properties=[("OSFamily", "windows")])
        windows.connect()
        windows.run()
        assert win_stream.result().status.code == 0
        for b in (gpu, linux, windows):
            b.close()
        client.close()


def test_timeouts(tmp_path, database):
    cfg = config(database, default_timeout="2s", max_timeout="10s", bot_timeout="2s")
    with start_granary(tmp_path, cfg) as server:
        client = ExecClient(server.address)
        d, _ = client.action(["sleep", "100"], timeout=60)
        with pytest.raises(grpc.RpcError) as e:
            final(client.execute(d))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "maximum" in e.value.details()
        bot = FakeBot(server.address)
        bot.connect()
        # the worker reports DEADLINE_EXCEEDED with the partial result: passed on, not cached
        d, _ = client.action(["sleep", "5"], timeout=1)
        stream = Stream(client.execute(d))
        lease = bot.wait_lease()
        assert leases.lease_action(lease).timeout.seconds == 1
        bot.accept(lease.id)
        partial = re_pb2.ActionResult(exit_code=-9, stdout_raw=b"partial")
        bot.complete(lease.id, partial, code=code_pb2.DEADLINE_EXCEEDED)
        response = stream.result()
        assert response.status.code == code_pb2.DEADLINE_EXCEEDED
        assert response.result.stdout_raw == b"partial"
        assert action_result_or_none(client, d) is None
        # a worker that ignores the timeout: the server gives up and revokes the lease
        d, _ = client.action(["sleep", "6"])  # default timeout 2s
        stream = Stream(client.execute(d))
        lease = bot.wait_lease()
        assert leases.lease_action(lease).timeout.seconds == 2
        bot.accept(lease.id)
        deadline = time.monotonic() + 30
        while bot.leases[lease.id].state != leases.CANCELLED and time.monotonic() < deadline:
            bot.update()
        assert bot.leases[lease.id].state == leases.CANCELLED
        assert stream.result().status.code == code_pb2.DEADLINE_EXCEEDED
        bot.close()
        client.close()


def test_failed_actions_are_returned_and_cached_only_if_configured(tmp_path, database):
    for cache_failed in (False, True):
        with start_granary(tmp_path / str(cache_failed), config(database, cache_failed_actions=cache_failed)) as s:
            client = ExecClient(s.address)
            bot = FakeBot(s.address)
            bot.connect()
            d, _ = client.action(["false", str(cache_failed)])
            stream = Stream(client.execute(d))
            bot.run(exit_code=1)
            response = stream.result()
            assert response.status.code == 0 and response.result.exit_code == 1
            assert (action_result_or_none(client, d) is not None) == cache_failed
            bot.close()
            client.close()


def test_bot_that_vanishes_loses_its_job_with_a_retry_limit(tmp_path, database):
    cfg = config(database, bot_timeout="2s", retry_limit=1)
    with start_granary(tmp_path, cfg) as server:
        client = ExecClient(server.address)
        d, _ = client.action(["long"])
        stream = Stream(client.execute(d))
        first = FakeBot(server.address)
        first.connect()
        lease = first.wait_lease()
        first.accept(lease.id)
        stream.wait_stage(EXECUTING)
        # `first` stops calling; after bot_timeout its job goes back to the queue
        second = FakeBot(server.address)
        second.connect()
        again = second.wait_lease(timeout=30)
        assert again.id == lease.id
        second.accept(again.id)
        # when `first` comes back, the server tells it to drop the lease
        first.update()
        assert first.leases[lease.id].state == leases.CANCELLED
        # `second` vanishes too: past the retry limit the job fails
        response = stream.result(timeout=60)
        assert response.status.code == code_pb2.UNAVAILABLE
        assert "retry_limit" in response.status.message
        first.close()
        second.close()
        client.close()


def test_cancel_queued_and_executing(farm):
    _, client, bot = farm
    d, _ = client.action(["queued"])
    queued_stream = Stream(client.execute(d))
    queued_stream.wait_stage(QUEUED)
    # running: the bot takes the first (only) lease; cancel tells it to kill it
    lease = bot.wait_lease()
    bot.accept(lease.id)
    queued_stream.wait_stage(EXECUTING)
    client.ops.CancelOperation(operations_pb2.CancelOperationRequest(name=queued_stream.name))
    response = queued_stream.result()
    assert response.status.code == code_pb2.CANCELLED
    deadline = time.monotonic() + 20
    while bot.leases.get(lease.id) and bot.leases[lease.id].state != leases.CANCELLED:
        assert time.monotonic() < deadline
        bot.update()
    assert bot.leases[lease.id].state == leases.CANCELLED
    bot.update()  # the bot drops it
    assert bot.leases == {}
    # cancel while still queued (the bot is busy elsewhere: concurrency 1, holding another lease)
    busy, _ = client.action(["busy"])
    busy_stream = Stream(client.execute(busy))
    busy_lease = bot.wait_lease()
    bot.accept(busy_lease.id)
    d2, _ = client.action(["waiting"])
    waiting = Stream(client.execute(d2))
    waiting.wait_stage(QUEUED)
    client.ops.CancelOperation(operations_pb2.CancelOperationRequest(name=waiting.name))
    assert waiting.result().status.code == code_pb2.CANCELLED
    got = client.ops.GetOperation(operations_pb2.GetOperationRequest(name=waiting.name))
    assert got.done and response_of(got).status.code == code_pb2.CANCELLED
    bot.complete(busy_lease.id, re_pb2.ActionResult())
    assert busy_stream.result().status.code == 0
    assert bot.leases == {}  # the cancelled job was never offered


def test_wait_execution_and_operations(farm):
    _, client, bot = farm
    d, _ = client.action(["wait"])
    stream = Stream(client.execute(d))
    stream.wait_stage(QUEUED)
    waiter = Stream(client.wait(stream.name))
    waiter.wait_stage(QUEUED)
    bot.run(stdout=b"w")
    assert waiter.result().result.stdout_raw == b"w"
    assert stream.result().result.stdout_raw == b"w"
    done = list(client.wait(stream.name))
    assert len(done) == 1 and done[0].done
    with pytest.raises(grpc.RpcError) as e:
        list(client.wait("operations/nope"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as e:
        client.ops.GetOperation(operations_pb2.GetOperationRequest(name="operations/nope"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    client.ops.DeleteOperation(operations_pb2.DeleteOperationRequest(name=stream.name))
    with pytest.raises(grpc.RpcError) as e:
        client.ops.GetOperation(operations_pb2.GetOperationRequest(name=stream.name))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_list_operations_filters_sorting_paging(farm):
    _, client, bot = farm
    names = {}
    for i, tool in enumerate(["bazel", "bazel", "pants", "bazel", "bst"]):
        d, _ = client.action(["op", str(i)])
        s = Stream(client.execute(d, tool=tool, invocation=f"inv-{i % 2}", correlated="build-7"))
        s.wait_stage(QUEUED)
        names[i] = s.name
        time.sleep(0.01)
    # finish the first one
    lease = bot.wait_lease()
    bot.accept(lease.id)
    bot.complete(lease.id, re_pb2.ActionResult())

    def ls(flt: str, page_size: int = 0, token: str = "") -> operations_pb2.ListOperationsResponse:
        return client.ops.ListOperations(
            operations_pb2.ListOperationsRequest(name="", filter=flt, page_size=page_size, page_token=token)
        )

    deadline = time.monotonic() + 10
    while len(ls("").operations) != 4:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    default = [o.name for o in ls("").operations]  # not completed, oldest first
    assert default == [names[i] for i in (1, 2, 3, 4)]
    assert [o.name for o in ls("stage = COMPLETED").operations] == [names[0]]
    assert [o.name for o in ls("tool_name = bazel & sort_order = queued_time(desc)").operations] == [
        names[3], names[1], names[0]]
    assert [o.name for o in ls("tool_name != bazel & invocation_id = inv-0").operations] == [names[2], names[4]]
    assert len(ls("correlated_invocations_id = build-7 & stage >= QUEUED").operations) == 5
    sorted_two = [o.name for o in ls("sort_order = tool_name(desc) & sort_order = queued_time(asc)").operations]
    assert sorted_two == [names[2], names[4], names[0], names[1], names[3]]
    assert len(ls("queued_time > 2000-01-01T00:00:00Z & queued_time < 2999-01-01").operations) == 5
    assert ls("queued_time < 2000-01-01T00:00:00").operations == []
    assert [o.name for o in ls(f"name = {names[2]}").operations] == [names[2]]
    # paging
    seen, token, pages = [], "", 0
    while True:
        page = ls("stage != UNKNOWN & sort_order = queued_time", page_size=2, token=token)
        seen += [o.name for o in page.operations]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == [names[i] for i in range(5)] and pages == 3
    for bad in ("nonsense", "colour = red", "stage = SLEEPING", "queued_time > soon", "sort_order = whatever"):
        with pytest.raises(grpc.RpcError) as e:
            ls(bad)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
    with pytest.raises(grpc.RpcError) as e:
        ls("", token="garbage!")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_server_killed_and_restarted_keeps_queued_and_running_jobs(tmp_path, database):
    cfg = config(database, bot_timeout="30s")
    server = start_granary(tmp_path, cfg)
    client = ExecClient(server.address)
    bot = FakeBot(server.address)
    bot.connect()
    running_d, _ = client.action(["running"])
    running = Stream(client.execute(running_d))
    lease = bot.wait_lease()
    bot.accept(lease.id)
    running.wait_stage(EXECUTING)
    queued_d, _ = client.action(["queued"])
    queued = Stream(client.execute(queued_d))
    queued.wait_stage(QUEUED)
    names = (running.name, queued.name)
    server.stop(signal.SIGKILL)
    client.close()

    server = start_granary(tmp_path, cfg)
    try:
        client = ExecClient(server.address)
        for name, stage in zip(names, (EXECUTING, QUEUED)):
            got = client.ops.GetOperation(operations_pb2.GetOperationRequest(name=name))
            assert not got.done and stage_of(got) == stage
        # the bot reconnects to the new address with the same session and finishes its job
        back = FakeBot(server.address, bot_id=bot.bot_id)
        back.name, back.leases = bot.name, bot.leases
        waiter = Stream(client.wait(names[0]))
        back.complete(lease.id, re_pb2.ActionResult(stdout_raw=b"survived"))
        assert waiter.result().result.stdout_raw == b"survived"
        # then takes the job that was queued
        queued_waiter = Stream(client.wait(names[1]))
        back.run(stdout=b"queued too")
        assert queued_waiter.result().result.stdout_raw == b"queued too"
        back.close()
        bot.close()
        client.close()
    finally:
        server.stop()


def test_running_job_of_a_bot_lost_in_a_crash_is_requeued(tmp_path, database):
    cfg = config(database, bot_timeout="2s")
    server = start_granary(tmp_path, cfg)
    client = ExecClient(server.address)
    bot = FakeBot(server.address)
    bot.connect()
    d, _ = client.action(["crash"])
    stream = Stream(client.execute(d))
    bot.accept(bot.wait_lease().id)
    stream.wait_stage(EXECUTING)
    name = stream.name
    server.stop(signal.SIGKILL)
    server = start_granary(tmp_path, cfg)
    try:
        client2 = ExecClient(server.address)
        other = FakeBot(server.address)
        other.connect()
        waiter = Stream(client2.wait(name))
        other.run(stdout=b"second try")  # the old bot never came back: re-queued after bot_timeout
        assert waiter.result(timeout=60).result.stdout_raw == b"second try"
        other.close()
        client2.close()
    finally:
        server.stop()
        bot.close()
        client.close()


def test_two_servers_share_one_queue(tmp_path, database):
    """Two server processes (as on two hosts: PostgreSQL; or one host: a shared SQLite file)."""
    url = database or f"sqlite:///{tmp_path / 'queue.sqlite'}"
    cfg = config(url, bot_timeout="10s")  # both servers also share one disk CAS and AC
    cfg = cfg.replace("path: cas", f"path: {tmp_path / 'cas'}").replace("path: ac", f"path: {tmp_path / 'ac'}")
    a = start_granary(tmp_path / "a", cfg)
    b = start_granary(tmp_path / "b", cfg)
    try:
        client_a, client_b = ExecClient(a.address), ExecClient(b.address)
        # only a bot on B: work submitted on A is seen by B and its completion reaches A's stream
        bot_b = FakeBot(b.address)
        bot_b.connect()
        d, _ = client_a.action(["cross"])
        stream = Stream(client_a.execute(d))
        bot_b.run(stdout=b"from b")
        assert stream.result().result.stdout_raw == b"from b"
        # bots on both; many jobs submitted to both servers; each job runs exactly once
        bot_a = FakeBot(a.address)
        bot_a.connect()
        streams = []
        for i in range(8):
            client = client_a if i % 2 else client_b
            d, _ = client.action(["job", str(i)])
            streams.append(Stream(client.execute(d)))
        taken: dict[str, list[str]] = {"a": [], "b": []}
        deadline = time.monotonic() + 60
        while sum(map(len, taken.values())) < 8:
            assert time.monotonic() < deadline
            for key, bot in (("a", bot_a), ("b", bot_b)):  # one lease per turn, so both bots work
                if not bot.pending():
                    bot.update(timeout=5)
                for lease in bot.pending()[:1]:
                    bot.accept(lease.id)
                    bot.complete(lease.id, re_pb2.ActionResult(stdout_raw=key.encode()))
                    taken[key].append(lease.id)
        all_ids = taken["a"] + taken["b"]
        assert len(set(all_ids)) == 8
        assert taken["a"] and taken["b"]
        for s in streams:
            assert s.result().status.code == 0
        # WaitExecution on B for an operation made on A
        d, _ = client_a.action(["wait-on-b"])
        s = Stream(client_a.execute(d))
        s.wait_stage(QUEUED)
        waiter = Stream(client_b.wait(s.name))
        bot_a.run(stdout=b"x")
        assert waiter.result().result.stdout_raw == b"x"
        for x in (bot_a, bot_b, client_a, client_b):
            x.close()
    finally:
        a.stop()
        b.stop()


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if text.encode() in f.read():
                        found.append(int(entry))
            except OSError:
                continue
    return found


def _wait_gone(text: str, timeout: float = 45) -> None:
    deadline = time.monotonic() + timeout
    while _processes_mentioning(text):
        assert time.monotonic() < deadline, f"worker processes still running: {_processes_mentioning(text)}"
        time.sleep(0.2)


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_serve_starts_local_workers_that_run_actions(tmp_path, how):
    cfg = config(None, local_workers=2, known_platforms="[]", platform_grace="30s")
    server = start_granary(tmp_path, cfg)
    marker = str(server.data_dir / "worker")
    try:
        deadline = time.monotonic() + 30
        while len(_processes_mentioning(marker)) < 1:
            assert time.monotonic() < deadline, "no local worker started"
            time.sleep(0.1)
        client = ExecClient(server.address)
        d, _ = client.action(["sh", "-c", "echo local > out"])
        response = final(client.execute(d, timeout=60))
        assert response.status.code == 0 and response.result.exit_code == 0
        [out] = response.result.output_files
        assert out.path == "out" and client.bs_read(out.digest) == b"local\n"
        client.close()
    finally:
        server.stop(how)
    _wait_gone(marker)  # the workers go with the server, even when it is killed
