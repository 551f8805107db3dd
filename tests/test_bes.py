"""The Build Event Service over real gRPC: a `granary serve` process, publishers and queries.

Covers what Bazel's BES uploader relies on (in-order acknowledgements echoing the stream and
sequence number, retried streams resuming at the first unacknowledged event, identical
re-sent events acknowledged again) and what it must be refused (gaps, rewritten events) with
the codes it does not retry; lifecycle events; the query API with its bounded regex; the
limits; retention; and `granary builds` / `granary build ID`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import grpc
import pytest
from besutil import (
    all_events,
    bazel_build,
    lifecycle_request,
    progress,
    publish_stub,
    query_stub,
    tool_request,
)
from serverutil import start_granary

from granary._proto.google.devtools.build.v1 import build_status_pb2
from granary._proto.granary.builds.v1 import builds_pb2

SRC = Path(__file__).resolve().parent.parent / "src"


BASE = 'storage: {main: {type: memory}}\ninstances: {"*": {cas: main}}\n'


def config(database: str | None = None, **settings) -> str:
    lines = ["build_events:"]
    if database:
        lines.append(f"  database: {database}")
    lines += [f"  {k}: {v}" for k, v in settings.items()]
    return BASE + "\n".join(lines) + "\n"


@pytest.fixture
def server(tmp_path, database):
    with start_granary(tmp_path, config(database)) as g:
        yield g


def publish(channel, requests):
    """-> (acknowledged sequence numbers, the error that ended the call or None)."""
    acks: list = []
    try:
        acks.extend(publish_stub(channel).PublishBuildToolEventStream(iter(requests), timeout=60))
        return acks, None
    except grpc.RpcError as e:
        return acks, e


def seqs(acks):
    return [a.sequence_number for a in acks]


def test_events_are_acknowledged_in_order_echoing_their_stream(server, database):
    inv = str(uuid.uuid4())
    reqs = [tool_request("build-1", inv, i, project_id="proj", keywords=("team=a",)) for i in range(1, 301)]
    reqs.append(tool_request("build-1", inv, 301, finish=True))
    with grpc.insecure_channel(server.address) as ch:
        acks, err = publish(ch, reqs)
        assert err is None
        assert seqs(acks) == list(range(1, 302))
        assert {(a.stream_id.build_id, a.stream_id.invocation_id, a.stream_id.component) for a in acks} == {
            ("build-1", inv, 3)}
        stored = all_events(query_stub(ch), f"^build-1/{inv}/TOOL$", page_size=100)
    assert [e.event.sequence_number for e in stored] == list(range(1, 302))
    assert stored[0].project_id == "proj" and list(stored[0].notification_keywords) == ["team=a"]
    assert stored[-1].event.event.HasField("component_stream_finished")
    assert stored[4].event.event == reqs[4].ordered_build_event.event


def test_a_gap_is_refused_with_failed_precondition_after_acknowledging_what_came_before(server, database):
    inv = str(uuid.uuid4())
    with grpc.insecure_channel(server.address) as ch:
        acks, err = publish(ch, [tool_request("b", inv, 2)])
        assert acks == [] and err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "expected sequence_number 1, got 2" in err.details()
        acks, err = publish(ch, [tool_request("b", inv, i) for i in (1, 2, 4, 5)])
        assert seqs(acks) == [1, 2]
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "expected sequence_number 3, got 4" in err.details()
        assert [e.event.sequence_number for e in all_events(query_stub(ch), inv)] == [1, 2]


def test_a_rewritten_event_is_refused_and_an_identical_one_acknowledged_again(server, database):
    inv = str(uuid.uuid4())
    with grpc.insecure_channel(server.address) as ch:
        acks, err = publish(ch, [tool_request("b", inv, i) for i in (1, 2, 3)])
        assert err is None
        acks, err = publish(ch, [tool_request("b", inv, 2), tool_request("b", inv, 3, progress("other text"))])
        assert seqs(acks) == [2]
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "already stored with a different event" in err.details()
        stored = all_events(query_stub(ch), inv)
    assert [e.event.event.bazel_event == tool_request("b", inv, e.event.sequence_number)
            .ordered_build_event.event.bazel_event for e in stored] == [True, True, True]


def test_a_retried_stream_resumes_at_the_first_unacknowledged_event_without_duplicates(server, database):
    inv = str(uuid.uuid4())
    events = bazel_build(inv, ["//gen:a", "//gen:b"])
    reqs = [tool_request("b", inv, i + 1, ev) for i, ev in enumerate(events)]
    reqs.append(tool_request("b", inv, len(reqs) + 1, finish=True))
    with grpc.insecure_channel(server.address) as ch:
        # the first attempt is cut after 6 events (as if the connection dropped)
        acks, err = publish(ch, reqs[:6])
        assert err is None and seqs(acks) == list(range(1, 7))
        # Bazel re-sends from its first unacknowledged event; say the last two acks were lost
        acks, err = publish(ch, reqs[4:])
        assert err is None
        assert seqs(acks) == list(range(5, len(reqs) + 1))
        stored = all_events(query_stub(ch), inv)
        summary = query_stub(ch).ListInvocations(builds_pb2.ListInvocationsRequest()).invocations
    assert [e.event.sequence_number for e in stored] == list(range(1, len(reqs) + 1))
    (s,) = [s for s in summary if s.invocation_id == inv]
    assert s.events == len(reqs)  # the re-sent events were not counted twice
    assert (s.targets_configured, s.targets_completed, s.result, s.stream_finished) == (2, 2, "success", True)


def test_lifecycle_events_are_stored_and_give_the_invocation_its_result(server, database):
    inv = str(uuid.uuid4())
    failed = build_status_pb2.BuildStatus.COMMAND_FAILED
    with grpc.insecure_channel(server.address) as ch:
        stub = publish_stub(ch)
        stub.PublishLifecycleEvent(lifecycle_request("lb", "", 1, "enqueued"))
        stub.PublishLifecycleEvent(lifecycle_request("lb", inv, 1, "started"))
        stub.PublishLifecycleEvent(lifecycle_request("lb", inv, 1, "started"))  # a retry: accepted
        stub.PublishLifecycleEvent(lifecycle_request("lb", inv, 2, "finished", failed, check_preceding=True))
        stub.PublishLifecycleEvent(lifecycle_request("lb", "", 2, "build_finished", failed))
        with pytest.raises(grpc.RpcError) as e:
            stub.PublishLifecycleEvent(lifecycle_request("lb", inv, 2, "finished"))  # a different result
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.RpcError) as e:  # its predecessor never came
            stub.PublishLifecycleEvent(lifecycle_request("lb", "other", 2, "finished", check_preceding=True))
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        # a tool stream that asks for its InvocationAttemptStarted: present for inv, not for another
        acks, err = publish(ch, [tool_request("lb", inv, 1, check_preceding=True)])
        assert err is None and seqs(acks) == [1]
        acks, err = publish(ch, [tool_request("lb", "nobody-started-me", 1, check_preceding=True)])
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        controller = all_events(query_stub(ch), "^lb/.*/CONTROLLER$")
        detail = query_stub(ch).GetInvocation(builds_pb2.GetInvocationRequest(invocation_id=inv))
    assert sorted((e.stream_name, e.event.sequence_number) for e in controller) == [
        ("lb//CONTROLLER", 1), ("lb//CONTROLLER", 2), (f"lb/{inv}/CONTROLLER", 1), (f"lb/{inv}/CONTROLLER", 2)]
    assert detail.summary.result == "command_failed" and detail.summary.build_id == "lb"


def test_query_matches_stream_names_by_regex_and_pages(server, database):
    with grpc.insecure_channel(server.address) as ch:
        for build in ("alpha-1", "alpha-2", "beta-1"):
            assert publish(ch, [tool_request(build, "inv", i) for i in range(1, 6)])[1] is None
        q = query_stub(ch)
        assert {e.stream_name for e in all_events(q, "^alpha-")} == {"alpha-1/inv/TOOL", "alpha-2/inv/TOOL"}
        assert {e.stream_name for e in all_events(q, r"^(alpha-2|beta-\d)/")} == {"alpha-2/inv/TOOL", "beta-1/inv/TOOL"}
        assert {e.stream_name for e in all_events(q, "beta")} == {"beta-1/inv/TOOL"}
        assert all_events(q, "^ALPHA") == []  # case-sensitive, also where SQLite's LIKE is not
        paged = all_events(q, "inv/TOOL$", page_size=4)
        assert [(e.stream_name, e.event.sequence_number) for e in paged] == [
            (f"{b}/inv/TOOL", i) for b in ("alpha-1", "alpha-2", "beta-1") for i in range(1, 6)]
        for bad, why in (("(", "not a valid regular expression"), (r"(a)\1", "backreferences"),
                         ("(?=a)", "lookahead"), ("a" * 300, "max_regex_length")):
            with pytest.raises(grpc.RpcError) as e:
                q.QueryEvents(builds_pb2.QueryEventsRequest(stream_id_regex=bad))
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and why in e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            q.QueryEvents(builds_pb2.QueryEventsRequest(stream_id_regex="x", page_token="garbage"))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_regex_that_backtracks_forever_is_stopped(tmp_path):
    with start_granary(tmp_path, config(regex_timeout="0.5s")) as g, grpc.insecure_channel(g.address) as ch:
        assert publish(ch, [tool_request("a" * 60 + "!", "inv", 1)])[1] is None
        with pytest.raises(grpc.RpcError) as e:
            query_stub(ch).QueryEvents(builds_pb2.QueryEventsRequest(stream_id_regex="^(a|aa)+$"))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "regex_timeout" in e.value.details()
        # the server is still serving
        assert len(all_events(query_stub(ch), "^a+!/")) == 1


def test_limits_on_event_size_events_per_stream_and_open_streams(tmp_path):
    settings = {"max_event_size": "2KiB", "max_events_per_stream": 5, "max_streams_per_client": 1}
    with start_granary(tmp_path, config(**settings)) as g, grpc.insecure_channel(g.address) as ch:
        acks, err = publish(ch, [tool_request("b", "big", 1, progress("x" * 4096))])
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_event_size" in err.details()
        acks, err = publish(ch, [tool_request("b", "many", i) for i in range(1, 8)])
        assert seqs(acks) == [1, 2, 3, 4, 5]
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_events_per_stream" in err.details()
        # one stream held open; a second from the same client is refused until it ends
        release = threading.Event()

        def held():
            yield tool_request("b", "held", 1)
            release.wait(30)

        first = publish_stub(ch).PublishBuildToolEventStream(held(), timeout=60)
        assert next(first).sequence_number == 1
        acks, err = publish(ch, [tool_request("b", "second", 1)])
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_streams_per_client" in err.details()
        release.set()
        assert list(first) == []
        assert seqs(publish(ch, [tool_request("b", "second", 1)])[0]) == [1]


def test_retention_deletes_old_streams_and_invocations(tmp_path):
    with start_granary(tmp_path, config(retention="1s", cleanup_interval="0.2s")) as g, \
            grpc.insecure_channel(g.address) as ch:
        inv = str(uuid.uuid4())
        assert publish(ch, [tool_request("old", inv, i + 1, ev) for i, ev in enumerate(bazel_build(inv, ["//:x"]))])[1] is None
        q = query_stub(ch)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (all_events(q, "^old/") or q.ListInvocations(
                builds_pb2.ListInvocationsRequest()).invocations):
            time.sleep(0.2)
        assert all_events(q, "^old/") == []
        assert list(q.ListInvocations(builds_pb2.ListInvocationsRequest()).invocations) == []


def granary_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run([sys.executable, "-m", "granary", *args], capture_output=True, text=True, env=env,
                          timeout=60, check=False)


def test_cli_lists_builds_and_shows_one_decoded(server, database):
    ok, bad = str(uuid.uuid4()), str(uuid.uuid4())
    with grpc.insecure_channel(server.address) as ch:
        for inv, failing in ((ok, None), (bad, "//gen:broken")):
            evs = bazel_build(inv, ["//gen:fine", "//gen:broken"], failing)
            assert publish(ch, [tool_request("cli", inv, i + 1, ev) for i, ev in enumerate(evs)])[1] is None
    listing = granary_cli("builds", "--server", server.url)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0].split()[:3] == ["INVOCATION", "COMMAND", "PATTERNS"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == {ok, bad}
    fields = rows[ok].split()
    assert fields[1:5] == ["build", "//gen:fine", "//gen:broken", "alice"]
    assert fields[7:] == ["2.5s", "success", "3/7", "1/4"]  # duration, result, actions run/created, cache hits
    assert rows[bad].split()[8:10] == ["failed", "(BUILD_FAILURE)"]
    shown = granary_cli("build", bad, "--server", server.url)
    assert shown.returncode == 0, shown.stderr
    assert "//gen:fine  genrule rule  success" in shown.stdout
    assert "//gen:broken  genrule rule  FAILED" in shown.stdout
    assert "action  //gen:broken: Genrule exited 1: Executing genrule failed: exit 1" in shown.stdout
    data = json.loads(granary_cli("build", ok, "--server", server.url, "--json").stdout)
    assert data["summary"]["patterns"] == ["//gen:fine", "//gen:broken"] and data["summary"]["user"] == "alice"
    missing = granary_cli("build", "no-such-invocation", "--server", server.url)
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr


def test_with_auth_publishing_needs_cache_write_and_querying_cache_read(tmp_path):
    import base64

    import bcrypt

    users = {"builder": "b-secret", "reader": "r-secret"}
    data = tmp_path / "granary-data"
    data.mkdir(parents=True)
    (data / "htpasswd").write_text("".join(
        f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=4)).decode()}\n" for u, p in users.items()))
    cfg = BASE + """auth:
  htpasswd: htpasswd
  rules:
    - {identities: [builder], permissions: [cache-write]}
    - {identities: [reader], permissions: [cache-read]}
"""

    def as_user(user):
        token = base64.b64encode(f"{user}:{users[user]}".encode()).decode()
        return (("authorization", f"Basic {token}"),)

    def code(fn, *args, **kw):
        try:
            fn(*args, **kw)
        except grpc.RpcError as e:
            return e.code()
        return grpc.StatusCode.OK

    with start_granary(tmp_path, cfg) as g, grpc.insecure_channel(g.address) as ch:
        stub, q = publish_stub(ch), query_stub(ch)

        def stream(metadata=()):
            return list(stub.PublishBuildToolEventStream(iter([tool_request("auth", "inv", 1)]), metadata=metadata))

        lifecycle = lifecycle_request("auth", "", 1, "enqueued")
        assert code(stream) == grpc.StatusCode.UNAUTHENTICATED
        assert code(stub.PublishLifecycleEvent, lifecycle) == grpc.StatusCode.UNAUTHENTICATED
        assert code(stream, as_user("reader")) == grpc.StatusCode.PERMISSION_DENIED
        assert code(stream, as_user("builder")) == grpc.StatusCode.OK
        assert code(stub.PublishLifecycleEvent, lifecycle, metadata=as_user("builder")) == grpc.StatusCode.OK
        listing = builds_pb2.ListInvocationsRequest()
        assert code(q.ListInvocations, listing) == grpc.StatusCode.UNAUTHENTICATED
        assert code(q.ListInvocations, listing, metadata=as_user("builder")) == grpc.StatusCode.PERMISSION_DENIED
        page = q.QueryEvents(builds_pb2.QueryEventsRequest(stream_id_regex="^auth/"), metadata=as_user("reader"))
        assert sorted(e.stream_name for e in page.events) == ["auth//CONTROLLER", "auth/inv/TOOL"]


def test_test_results_are_decoded_and_counted(server, database):
    from granary._proto.build_event_stream import build_event_stream_pb2 as bep

    inv = str(uuid.uuid4())
    events = bazel_build(inv, ["//t:ok", "//t:bad"])
    events[0].started.command = "test"
    for label, status in (("//t:ok", bep.PASSED), ("//t:bad", bep.FAILED)):
        events.insert(-2, bep.BuildEvent(
            id=bep.BuildEventId(test_summary=bep.BuildEventId.TestSummaryId(label=label)),
            test_summary=bep.TestSummary(overall_status=status, total_run_count=2, total_run_duration_millis=1500,
                                         total_num_cached=1 if status == bep.PASSED else 0)))
    with grpc.insecure_channel(server.address) as ch:
        assert publish(ch, [tool_request("t", inv, i + 1, ev) for i, ev in enumerate(events)])[1] is None
        d = query_stub(ch).GetInvocation(builds_pb2.GetInvocationRequest(invocation_id=inv))
    assert (d.summary.command, d.summary.tests_passed, d.summary.tests_failed) == ("test", 1, 1)
    assert {(t.label, t.status, t.runs, t.duration_ms, t.cached) for t in d.tests} == {
        ("//t:ok", "PASSED", 2, 1500, True), ("//t:bad", "FAILED", 2, 1500, False)}
    shown = granary_cli("build", inv, "--server", server.url).stdout
    assert "//t:ok  PASSED  (2 runs, 1.5s, cached)" in shown and "//t:bad  FAILED  (2 runs, 1.5s)" in shown
