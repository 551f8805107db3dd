"""Workers are trusted parties: attack tests against a real `granary serve` (no local workers),
with fake bots speaking the Remote Workers API over real gRPC.

- a bot claiming more concurrency than execution.max_bot_concurrency gets no more leases than that;
- a lease a bot does not acknowledge within execution.lease_ack_timeout goes to another bot;
- a result whose outputs are not in the CAS (with the sizes claimed) fails the operation and is
  never cached;
- a bot's report about a lease that is not its own changes nothing.

The server runs with the defaults of those two settings (64 slots, 30 s), as an operator gets them.
"""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from execsetup import config
from google.rpc import code_pb2
from reapi import digest
from rwapi import LINUX, ExecClient, FakeBot, Stream
from serverutil import start_granary
from sqlalchemy import create_engine, select

from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from granary._proto.google.devtools.remoteworkers.v1test2 import bots_pb2
from granary.execution import leases
from granary.execution.schema import jobs

EXECUTING = 3
DEFAULT_MAX_BOT_CONCURRENCY = 64
DEFAULT_LEASE_ACK_TIMEOUT = 30.0


@pytest.fixture
def server(tmp_path):
    with start_granary(tmp_path, config()) as srv:
        yield srv


@pytest.fixture
def any_server(tmp_path, database):
    """A server on SQLite, then on PostgreSQL (their assignment paths lock differently)."""
    with start_granary(tmp_path, config(database)) as srv:
        yield srv, database


def cached_result(client: ExecClient, d: re_pb2.Digest) -> re_pb2.ActionResult | None:
    try:
        return client.ac.GetActionResult(re_pb2.GetActionResultRequest(action_digest=d))
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND, e
        return None


def operation_done(client: ExecClient, name: str) -> bool:
    from google.longrunning import operations_pb2

    return client.ops.GetOperation(operations_pb2.GetOperationRequest(name=name)).done


# ---- 1. claimed concurrency is capped -----------------------------------------------------


def test_greedy_bot_never_holds_more_leases_than_the_cap(any_server):
    server, _ = any_server
    cap = DEFAULT_MAX_BOT_CONCURRENCY
    client = ExecClient(server.address)
    # the greedy bot first advertises a platform no job wants, so it holds nothing yet
    greedy = FakeBot(server.address, properties=[("OSFamily", "plan9"), ("ISA", "x86-64")], concurrency=10**6)
    greedy.connect()
    assert not greedy.leases
    streams = [Stream(client.execute(client.action(["echo", str(i)])[0], timeout=120)) for i in range(cap + 6)]
    for s in streams:
        s.wait_first()
    # now it turns into a linux bot claiming a million slots, from several calls at once
    greedy.properties = list(LINUX)
    session = greedy._session()
    replies: list[bots_pb2.BotSession] = []
    errors: list[Exception] = []

    def poll() -> None:
        try:
            replies.append(greedy.stub.UpdateBotSession(
                bots_pb2.UpdateBotSessionRequest(name=greedy.name, bot_session=session), timeout=30))
        except grpc.RpcError as e:
            errors.append(e)

    threads = [threading.Thread(target=poll) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    offered = {lease.id for r in replies for lease in r.leases if lease.state == leases.PENDING}
    assert 0 < len(offered) <= cap
    # however it reports its session (here: holding nothing), it holds at most the cap
    reply = greedy.update()
    held = [lease for lease in reply.leases if lease.state == leases.PENDING]
    assert len(held) == cap, len(held)
    claimed = {p.key: p.value for p in reply.worker.properties}
    assert claimed[leases.CONCURRENCY_PROPERTY] == str(cap)  # the server says what it grants
    # acknowledging everything and claiming even more still gets nothing beyond the cap
    for lease in held:
        greedy.leases[lease.id].state = leases.ACTIVE
    greedy.concurrency = 10**9
    reply = greedy.update()
    assert sum(lease.state == leases.ACTIVE for lease in reply.leases) == cap
    assert not [lease for lease in reply.leases if lease.state == leases.PENDING]
    # the jobs beyond the cap go to other bots
    honest = FakeBot(server.address)
    honest.connect()
    assert honest.wait_lease().id not in {lease.id for lease in held}
    honest.close()
    greedy.close()
    client.close()


# ---- 2. a lease nobody acknowledges goes back to the queue -----------------------------------


def test_unacknowledged_lease_goes_to_another_bot(any_server):
    server, database = any_server
    client = ExecClient(server.address)
    d, _ = client.action(["echo", "sleepy"])
    stream = Stream(client.execute(d, timeout=300))
    sleepy = FakeBot(server.address)
    sleepy.connect()
    lease = sleepy.wait_lease()
    other = FakeBot(server.address)
    other.connect()
    assert not other.leases
    # sleepy keeps its session alive but never acknowledges; the other bot keeps asking
    deadline = time.monotonic() + DEFAULT_LEASE_ACK_TIMEOUT + 90
    told_to_drop = False  # the take-back may reach sleepy before or after the other bot's offer
    while not other.pending():
        assert time.monotonic() < deadline, "the unacknowledged lease never went to another bot"
        sleepy.update()
        told_to_drop |= sleepy.leases.get(lease.id, lease).state == leases.CANCELLED
        other.update()
    again = other.pending()[0]
    assert again.id == lease.id
    sleepy.update()
    told_to_drop |= sleepy.leases.get(lease.id, lease).state == leases.CANCELLED
    assert told_to_drop
    # a late acknowledgement, then a forged completion, from sleepy change nothing
    sleepy.leases[lease.id] = bots_pb2.Lease(id=lease.id, state=leases.ACTIVE)
    sleepy.update()
    assert sleepy.leases[lease.id].state == leases.CANCELLED
    forged = bots_pb2.Lease(id=lease.id)
    leases.complete_lease(forged, re_pb2.ActionResult(exit_code=0, stdout_raw=b"sleepy forged\n"))
    sleepy.leases[lease.id] = forged
    sleepy.update()
    other.accept(again.id)
    stream.wait_stage(EXECUTING)
    other.complete(again.id, re_pb2.ActionResult(exit_code=0, stdout_raw=b"other ran it\n"))
    response = stream.result()
    assert response.status.code == code_pb2.OK
    assert response.result.stdout_raw == b"other ran it\n"
    assert response.result.execution_metadata.worker == other.bot_id
    # a lapsed offer never ran the action: it does not count toward the retry limit
    assert job_retries(server, database, lease.id) == 0
    sleepy.close()
    other.close()
    client.close()


def job_retries(server, database: str | None, job_name: str) -> int:
    engine = create_engine(database or f"sqlite:///{server.data_dir / 'execution.sqlite'}")
    try:
        with engine.connect() as conn:
            return conn.execute(select(jobs.c.retries).where(jobs.c.name == job_name)).scalar_one()
    finally:
        engine.dispose()


# ---- 3. a reported result is checked against the CAS -----------------------------------------


def run_with(client: ExecClient, bot: FakeBot, argv: list[str], result: re_pb2.ActionResult):
    d, _ = client.action(argv)
    stream = Stream(client.execute(d, timeout=120))
    lease = bot.wait_lease()
    bot.accept(lease.id)
    stream.wait_stage(EXECUTING)
    bot.complete(lease.id, result)
    return d, stream.result()


def assert_refused(response: re_pb2.ExecuteResponse, named: re_pb2.Digest) -> None:
    assert response.status.code == code_pb2.INTERNAL, response.status
    assert f"{named.hash}/{named.size_bytes}" in response.status.message, response.status.message
    assert not response.HasField("result")


def tree_of(files: dict[str, bytes]) -> re_pb2.Tree:
    root = re_pb2.Directory()
    for name, data in sorted(files.items()):
        root.files.add(name=name, digest=digest(data))
    return re_pb2.Tree(root=root)


def test_result_with_outputs_missing_from_the_cas_fails_and_is_not_cached(server):
    client = ExecClient(server.address)
    bot = FakeBot(server.address)
    bot.connect()

    # an output file that was never uploaded
    ghost = b"never uploaded\n"
    d, response = run_with(client, bot, ["ghost-file"], re_pb2.ActionResult(
        exit_code=0, output_files=[re_pb2.OutputFile(path="out", digest=digest(ghost))]))
    assert_refused(response, digest(ghost))
    assert cached_result(client, d) is None
    client.upload(ghost)  # even once the blob exists, the refused result was never stored
    assert cached_result(client, d) is None

    # stdout claimed by digest, not uploaded
    out = b"ghost stdout\n"
    d, response = run_with(client, bot, ["ghost-stdout"], re_pb2.ActionResult(exit_code=0, stdout_digest=digest(out)))
    assert_refused(response, digest(out))
    assert cached_result(client, d) is None

    # a blob that exists, claimed with another size
    real = b"real bytes\n"
    client.upload(real)
    liar = re_pb2.Digest(hash=digest(real).hash, size_bytes=len(real) + 1000)
    d, response = run_with(client, bot, ["wrong-size"], re_pb2.ActionResult(
        exit_code=0, output_files=[re_pb2.OutputFile(path="out", digest=liar)]))
    assert_refused(response, liar)
    assert cached_result(client, d) is None

    # an output directory whose Tree is uploaded but a file inside it is not
    inside = b"inside the tree, never uploaded\n"
    tree = tree_of({"present": real, "absent": inside})
    tree_blob = tree.SerializeToString()
    client.upload(tree_blob)
    d, response = run_with(client, bot, ["ghost-in-tree"], re_pb2.ActionResult(
        exit_code=0, output_directories=[re_pb2.OutputDirectory(path="dir", tree_digest=digest(tree_blob))]))
    assert_refused(response, digest(inside))
    assert cached_result(client, d) is None

    # an output directory whose Tree itself was never uploaded
    lost = tree_of({"present": real, "other": b"x"}).SerializeToString()
    d, response = run_with(client, bot, ["ghost-tree"], re_pb2.ActionResult(
        exit_code=0, output_directories=[re_pb2.OutputDirectory(path="dir", tree_digest=digest(lost))]))
    assert_refused(response, digest(lost))
    assert cached_result(client, d) is None

    # inline contents that are not what the digest says
    d, response = run_with(client, bot, ["inline-lie"], re_pb2.ActionResult(
        exit_code=0, output_files=[re_pb2.OutputFile(path="out", digest=digest(real), contents=b"something else")]))
    assert_refused(response, digest(real))
    assert cached_result(client, d) is None

    # the same shapes with everything uploaded are delivered and cached
    client.upload(inside, out)
    good = re_pb2.ActionResult(
        exit_code=0, stdout_digest=digest(out),
        output_files=[re_pb2.OutputFile(path="out", digest=digest(real), contents=real)],
        output_directories=[re_pb2.OutputDirectory(path="dir", tree_digest=digest(tree_blob))],
    )
    d, response = run_with(client, bot, ["all-there"], good)
    assert response.status.code == code_pb2.OK, response.status
    assert response.result.output_files[0].digest == digest(real)
    stored = cached_result(client, d)
    assert stored is not None and stored.output_directories[0].tree_digest == digest(tree_blob)
    bot.close()
    client.close()


# ---- 4. a bot cannot report another bot's lease ----------------------------------------------


def test_report_about_another_bots_lease_changes_nothing(server):
    client = ExecClient(server.address)
    d, _ = client.action(["echo", "owner"])
    stream = Stream(client.execute(d, timeout=120))
    owner = FakeBot(server.address)
    owner.connect()
    lease = owner.wait_lease()
    owner.accept(lease.id)
    stream.wait_stage(EXECUTING)
    thief = FakeBot(server.address)
    thief.connect()
    # the thief claims to run it, to have given it back, and to have finished it with its own result
    for state in (leases.ACTIVE, leases.CANCELLED, leases.PENDING):
        thief.leases = {lease.id: bots_pb2.Lease(id=lease.id, state=state)}
        reply = thief.update()
        assert all(x.state == leases.CANCELLED for x in reply.leases if x.id == lease.id), reply
    forged = bots_pb2.Lease(id=lease.id)
    leases.complete_lease(forged, re_pb2.ActionResult(exit_code=0, stdout_raw=b"forged\n"))
    thief.leases = {lease.id: forged}
    thief.update()
    assert not operation_done(client, stream.name)
    assert cached_result(client, d) is None
    # the owner still holds it, and its result is the one delivered
    reply = owner.update()
    assert [(x.id, x.state) for x in reply.leases] == [(lease.id, leases.ACTIVE)]
    owner.complete(lease.id, re_pb2.ActionResult(exit_code=0, stdout_raw=b"owner ran it\n"))
    response = stream.result()
    assert response.status.code == code_pb2.OK
    assert response.result.stdout_raw == b"owner ran it\n"
    assert cached_result(client, d).stdout_raw == b"owner ran it\n"
    thief.close()
    owner.close()
    client.close()
