"""Live output of running actions (LogStream API) over real gRPC: a client follows an action's
stdout through another server process than the one its worker writes to, and the streams'
names, permissions, bounds and retention; on SQLite and on PostgreSQL."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from execsetup import config
from google.longrunning import operations_pb2
from rwapi import ExecClient, FakeBot, Stream, stage_of
from serverutil import start_granary

from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from granary._proto.build.bazel.remote.logstream.v1 import remote_logstream_pb2 as ls_pb2
from granary._proto.build.bazel.remote.logstream.v1 import remote_logstream_pb2_grpc as ls_grpc
from granary._proto.google.bytestream import bytestream_pb2 as bs_pb2
from granary._proto.google.devtools.remoteworkers.v1test2 import bots_pb2
from granary.execution import leases

EXECUTING, COMPLETED = 3, 4
# prints a numbered line to stdout every 0.5 s for 5 s, and one line to stderr
TICKER = "for i in 1 2 3 4 5 6 7 8 9 10; do echo line $i; sleep 0.5; done; echo done >&2"


def meta_of(op: operations_pb2.Operation) -> re_pb2.ExecuteOperationMetadata:
    meta = re_pb2.ExecuteOperationMetadata()
    assert op.metadata.Unpack(meta)
    return meta


def shared(url: str, tmp_path, **execution) -> str:
    """The config of a server sharing queue database, CAS and AC with others on this host."""
    cfg = config(url, **execution)
    return cfg.replace("path: cas", f"path: {tmp_path / 'cas'}").replace("path: ac", f"path: {tmp_path / 'ac'}")


def read_all(client: ExecClient, name: str, offset: int = 0, limit: int = 0, timeout: float = 60) -> bytes:
    request = bs_pb2.ReadRequest(resource_name=name, read_offset=offset, read_limit=limit)
    return b"".join(r.data for r in client.bs.Read(request, timeout=timeout))


def write(client: ExecClient, name: str, *pieces: bytes, offset: int = 0, finish: bool = False) -> int:
    """One Write call sending `pieces` from `offset` (finish_write on the last one if asked)."""
    def requests():
        at = offset
        for i, data in enumerate(pieces):
            last = i == len(pieces) - 1
            yield bs_pb2.WriteRequest(resource_name=name if i == 0 else "", write_offset=at, data=data,
                                      finish_write=finish and last)
            at += len(data)
        if not pieces:
            yield bs_pb2.WriteRequest(resource_name=name, write_offset=offset, finish_write=finish)

    return client.bs.Write(requests(), timeout=30).committed_size


def refused(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        result = call(*args, **kwargs)
        if hasattr(result, "__iter__") and not isinstance(result, bytes):
            list(result)
    return e.value


def test_proto_matches_the_public_spec():
    assert ls_pb2.DESCRIPTOR.package == "build.bazel.remote.logstream.v1"
    service = ls_pb2.DESCRIPTOR.services_by_name["LogStreamService"]
    [method] = service.methods
    assert (method.name, method.input_type.name, method.output_type.name) == (
        "CreateLogStream", "CreateLogStreamRequest", "LogStream")
    assert not method.client_streaming and not method.server_streaming
    assert ls_pb2.CreateLogStreamRequest.DESCRIPTOR.fields_by_name["parent"].number == 1
    fields = ls_pb2.LogStream.DESCRIPTOR.fields_by_name
    assert (fields["name"].number, fields["write_resource_name"].number) == (1, 2)
    assert all(f.type == f.TYPE_STRING for f in fields.values())


def test_follow_a_running_action_live_through_another_server(tmp_path, database):
    """The worker runs next to server A and writes there; the client executes and reads through B."""
    url = database or f"sqlite:///{tmp_path / 'queue.sqlite'}"
    a = start_granary(tmp_path / "a", shared(url, tmp_path, local_workers=1, known_platforms="[]",
                                             platform_grace="30s"))
    b = start_granary(tmp_path / "b", shared(url, tmp_path, known_platforms="[]", platform_grace="30s"))
    try:
        client = ExecClient(b.address)
        d, _ = client.action(["sh", "-c", TICKER])
        stream = Stream(client.execute(d, timeout=120))
        # the operation names the streams once it executes
        deadline = time.monotonic() + 60
        while True:
            running = [o for o in stream.ops if stage_of(o) == EXECUTING and meta_of(o).stdout_stream_name]
            if running:
                break
            assert stream.error is None and not any(o.done for o in stream.ops), [str(o) for o in stream.ops]
            assert time.monotonic() < deadline, "no EXECUTING operation naming its streams"
            time.sleep(0.05)
        meta = meta_of(running[0])
        assert meta.stdout_stream_name.startswith("logstreams/") and meta.stderr_stream_name.startswith("logstreams/")
        assert meta.stdout_stream_name != meta.stderr_stream_name
        # follow stdout through B: the first line arrives while the operation still executes
        reader = client.bs.Read(bs_pb2.ReadRequest(resource_name=meta.stdout_stream_name), timeout=120)
        got = b""
        for response in reader:
            got += response.data
            if b"line 1\n" in got:
                break
        now = client.ops.GetOperation(operations_pb2.GetOperationRequest(name=stream.name))
        assert not now.done and stage_of(now) == EXECUTING, "line 1 arrived only after the action completed"
        for response in reader:  # the Read ends when the worker finishes the stream
            got += response.data
        result = stream.result(timeout=120).result
        assert result.exit_code == 0
        assert got == client.bs_read(result.stdout_digest) == b"".join(b"line %d\n" % i for i in range(1, 11))
        assert read_all(client, meta.stderr_stream_name) == client.bs_read(result.stderr_digest) == b"done\n"
        # the completed operation keeps naming the streams (read names only)
        final = client.ops.GetOperation(operations_pb2.GetOperationRequest(name=stream.name))
        assert final.done
        assert meta_of(final).stdout_stream_name == meta.stdout_stream_name
        assert meta_of(final).stderr_stream_name == meta.stderr_stream_name
        # and A serves the same bytes
        client_a = ExecClient(a.address)
        assert read_all(client_a, meta.stdout_stream_name, offset=5, limit=7) == got[5:12]
        client_a.close()
        client.close()
    finally:
        a.stop()
        b.stop()


def test_output_past_the_stream_bound_still_reaches_the_cas(tmp_path):
    """A stream stops at max_stream_bytes; the action and its full stdout are unaffected."""
    cfg = config(None, local_workers=1, known_platforms="[]", platform_grace="30s",
                 logstream="{max_stream_bytes: 100KiB}")
    with start_granary(tmp_path, cfg) as server:
        client = ExecClient(server.address)
        # 300 KiB of output, written in pieces while the action runs
        d, _ = client.action(["sh", "-c", "for i in 1 2 3; do head -c 102400 /dev/zero | tr '\\0' x; sleep 0.5; done"])
        stream = Stream(client.execute(d, timeout=120))
        result = stream.result(timeout=120).result
        assert result.exit_code == 0
        stdout = client.bs_read(result.stdout_digest)
        assert stdout == b"x" * 307200
        name = meta_of(stream.ops[-1]).stdout_stream_name
        assert name
        streamed = read_all(client, name)  # ends: the worker finished the stream after the refusal
        assert 0 < len(streamed) <= 102400 and stdout.startswith(streamed)
        client.close()


@pytest.fixture
def server(tmp_path, database):
    """One server with small bounds and a short retention, and a client of it."""
    cfg = config(database, logstream="{max_stream_bytes: 1000, max_total_bytes: 3000, retention: 1s}")
    with start_granary(tmp_path, cfg) as s:
        client = ExecClient(s.address)
        yield client, ls_grpc.LogStreamServiceStub(client.channel)
        client.close()


def test_create_write_and_follow_a_stream(server):
    client, logstreams = server
    stream = logstreams.CreateLogStream(ls_pb2.CreateLogStreamRequest(parent=""))
    assert stream.name.startswith("logstreams/")
    assert stream.write_resource_name.startswith(stream.name + "/")
    token = stream.write_resource_name.rsplit("/", 1)[1]
    assert len(token) >= 20
    # a reader that starts before any byte is written follows the writes until the stream finishes
    followed: list[bytes] = []
    follower = threading.Thread(target=lambda: followed.extend(
        r.data for r in client.bs.Read(bs_pb2.ReadRequest(resource_name=stream.name), timeout=60)))
    follower.start()
    assert write(client, stream.write_resource_name, b"hello ", b"wor") == 9
    status = client.bs.QueryWriteStatus(bs_pb2.QueryWriteStatusRequest(resource_name=stream.write_resource_name))
    assert (status.committed_size, status.complete) == (9, False)
    assert read_all(client, stream.name, offset=6, limit=2) == b"wo"  # offset and limit, before the end
    # resumed in a second Write call at the committed size, then finished
    assert write(client, stream.write_resource_name, b"ld", offset=9, finish=True) == 11
    follower.join(60)
    assert not follower.is_alive() and b"".join(followed) == b"hello world"
    assert read_all(client, stream.name) == b"hello world"
    assert read_all(client, stream.name, offset=11) == b""
    status = client.bs.QueryWriteStatus(bs_pb2.QueryWriteStatusRequest(resource_name=stream.write_resource_name))
    assert (status.committed_size, status.complete) == (11, True)
    # finished is final
    e = refused(write, client, stream.write_resource_name, b"!", offset=11)
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and "finished" in e.details()
    e = refused(read_all, client, stream.name, offset=12)
    assert e.code() == grpc.StatusCode.OUT_OF_RANGE


def test_a_stream_of_many_small_writes(server):
    """Many more chunks than one read batch, followed as they come and read from the middle."""
    client, logstreams = server
    stream = logstreams.CreateLogStream(ls_pb2.CreateLogStreamRequest(parent=""))
    lines = [b"line %02d\n" % i for i in range(90)]  # 8 bytes each, one Write call (one chunk) each
    followed: list[bytes] = []
    follower = threading.Thread(target=lambda: followed.extend(
        r.data for r in client.bs.Read(bs_pb2.ReadRequest(resource_name=stream.name), timeout=60)))
    follower.start()
    at = 0
    for i, line in enumerate(lines):
        at = write(client, stream.write_resource_name, line, offset=at, finish=i == len(lines) - 1)
    follower.join(60)
    whole = b"".join(lines)
    assert not follower.is_alive() and b"".join(followed) == whole
    assert read_all(client, stream.name, offset=8 * 70 + 3) == whole[8 * 70 + 3 :]
    assert read_all(client, stream.name, offset=13, limit=8 * 40) == whole[13 : 13 + 8 * 40]


def test_names_and_permissions(server):
    client, logstreams = server
    stream = logstreams.CreateLogStream(ls_pb2.CreateLogStreamRequest(parent=""))
    # the write name cannot be read; the read name cannot be written
    e = refused(read_all, client, stream.write_resource_name)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and stream.name in e.details()
    e = refused(write, client, stream.name, b"x")
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and stream.name in e.details()
    # a write without the secret is refused and changes nothing
    e = refused(write, client, stream.name + "/guessed-token", b"x")
    assert e.code() == grpc.StatusCode.PERMISSION_DENIED and stream.name in e.details()
    e = refused(client.bs.QueryWriteStatus, bs_pb2.QueryWriteStatusRequest(resource_name=stream.name + "/nope"))
    assert e.code() == grpc.StatusCode.PERMISSION_DENIED
    assert write(client, stream.write_resource_name, b"ok", finish=True) == 2
    # a write_offset other than the committed size
    other = logstreams.CreateLogStream(ls_pb2.CreateLogStreamRequest(parent=""))
    e = refused(write, client, other.write_resource_name, b"x", offset=5)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "write_offset 5" in e.details()
    # unknown and malformed names
    e = refused(read_all, client, "logstreams/no-such-stream")
    assert e.code() == grpc.StatusCode.NOT_FOUND and "logstreams/no-such-stream" in e.details()
    e = refused(write, client, "logstreams/no-such-stream/token", b"x")
    assert e.code() == grpc.StatusCode.NOT_FOUND and "logstreams/no-such-stream" in e.details()
    for bad in ("logstreams/", "logstreams/a/b/c"):
        e = refused(read_all, client, bad)
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and repr(bad) in e.details()
    # a stream is read under its own instance only
    e = refused(read_all, client, "elsewhere/" + stream.name)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "elsewhere" in e.details()
    e = refused(logstreams.CreateLogStream, ls_pb2.CreateLogStreamRequest(parent="elsewhere"))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "'elsewhere'" in e.details()


def test_bounds_per_stream_and_in_total(server):
    client, logstreams = server

    def new() -> ls_pb2.LogStream:
        return logstreams.CreateLogStream(ls_pb2.CreateLogStreamRequest(parent=""))

    # one stream holds at most max_stream_bytes (1000): the write past it is refused, the rest stays
    s = new()
    assert write(client, s.write_resource_name, b"a" * 600) == 600
    e = refused(write, client, s.write_resource_name, b"b" * 401, offset=600)
    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_stream_bytes" in e.details()
    assert write(client, s.write_resource_name, b"b" * 400, offset=600, finish=True) == 1000
    # all streams hold at most max_total_bytes (3000): the oldest finished stream makes room ...
    t, u = new(), new()
    assert write(client, t.write_resource_name, b"t" * 1000) == 1000
    assert write(client, u.write_resource_name, b"u" * 1000) == 1000
    v = new()
    assert write(client, v.write_resource_name, b"v" * 1000) == 1000
    e = refused(read_all, client, s.name)  # dropped early for v
    assert e.code() == grpc.StatusCode.NOT_FOUND
    # ... and with no finished stream left, the write is refused
    w = new()
    e = refused(write, client, w.write_resource_name, b"w")
    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_total_bytes" in e.details()
    assert read_all(client, t.name, limit=1000) == b"t" * 1000


def test_finished_streams_are_deleted_after_retention(server):
    client, logstreams = server
    s = logstreams.CreateLogStream(ls_pb2.CreateLogStreamRequest(parent=""))
    assert write(client, s.write_resource_name, b"gone soon", finish=True) == 9
    open_ = logstreams.CreateLogStream(ls_pb2.CreateLogStreamRequest(parent=""))
    assert write(client, open_.write_resource_name, b"still open") == 10
    deadline = time.monotonic() + 30
    while True:
        try:
            read_all(client, s.name)
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND
            break
        assert time.monotonic() < deadline, "a finished stream outlived its retention by far"
        time.sleep(0.2)
    # the unfinished one (idle less than idle_timeout) is kept
    assert read_all(client, open_.name, limit=10) == b"still open"


class StreamingBot(FakeBot):
    """A fake bot that says it streams live output, as `granary worker` does."""

    def _session(self) -> bots_pb2.BotSession:
        session = super()._session()
        session.worker.configs.add(key=leases.LOGSTREAM_CONFIG, value="v1")
        return session


def test_streams_of_a_bot_that_stops_writing_are_finished_by_the_server(tmp_path, database):
    """Only bots that stream get streams; one that vanishes mid-stream (here: reports its result
    without finishing them) leaves streams the server finishes, so their readers end."""
    with start_granary(tmp_path, config(database)) as server:
        client = ExecClient(server.address)
        plain, streaming = FakeBot(server.address), StreamingBot(server.address)
        plain.connect()
        d, _ = client.action(["plain"])
        stream = Stream(client.execute(d))
        lease = plain.wait_lease()
        assert leases.lease_streams(lease) == ("", "")
        plain.accept(lease.id)
        stream.wait_stage(EXECUTING)
        plain.complete(lease.id, re_pb2.ActionResult())
        assert not meta_of(stream.ops[-1]).stdout_stream_name and stream.result().status.code == 0
        plain.close()

        streaming.connect()
        d, _ = client.action(["streaming"])
        stream = Stream(client.execute(d))
        lease = streaming.wait_lease()
        stdout_w, stderr_w = leases.lease_streams(lease)
        assert stdout_w and stderr_w
        streaming.accept(lease.id)
        meta = meta_of(stream.wait_stage(EXECUTING))
        assert stdout_w.startswith(meta.stdout_stream_name + "/") and stderr_w.startswith(meta.stderr_stream_name + "/")
        assert write(client, stdout_w, b"partial") == 7
        followed: list[bytes] = []
        follower = threading.Thread(target=lambda: followed.extend(
            r.data for r in client.bs.Read(bs_pb2.ReadRequest(resource_name=meta.stdout_stream_name), timeout=60)))
        follower.start()
        streaming.complete(lease.id, re_pb2.ActionResult(stdout_raw=b"partial and more"))
        assert stream.result().status.code == 0
        follower.join(60)
        assert not follower.is_alive() and b"".join(followed) == b"partial"
        assert read_all(client, meta.stderr_stream_name) == b""
        e = refused(write, client, stdout_w, b" late", offset=7)
        assert e.code() == grpc.StatusCode.FAILED_PRECONDITION
        streaming.close()
        client.close()


def test_logstream_off(tmp_path):
    with start_granary(tmp_path, config(None, logstream="{enabled: false}")) as server:
        client = ExecClient(server.address)
        bot = StreamingBot(server.address)
        bot.connect()
        d, _ = client.action(["x"])
        stream = Stream(client.execute(d))
        lease = bot.wait_lease()
        assert leases.lease_streams(lease) == ("", "")
        bot.accept(lease.id)
        bot.complete(lease.id, re_pb2.ActionResult())
        stream.result()
        assert not meta_of(stream.ops[-1]).stdout_stream_name
        e = refused(ls_grpc.LogStreamServiceStub(client.channel).CreateLogStream, ls_pb2.CreateLogStreamRequest())
        assert e.code() == grpc.StatusCode.UNIMPLEMENTED
        e = refused(read_all, client, "logstreams/x")
        assert e.code() == grpc.StatusCode.UNIMPLEMENTED and "execution.logstream.enabled" in e.details()
        bot.close()
        client.close()
