"""The dashboard's HTTP side against a real `granary serve` whose local workers run real actions: the
pages and their security headers, the overview's totals and rates, operations listed with the very
filter, sorting, paging and errors of ListOperations, one operation in full, workers, the CAS browser
and streamed downloads, the builds the Build Event Service stored (as ListInvocations and GetInvocation
give them) linked to their operations and back, a running action's output read live, hostile input, and
the gRPC port's credentials and permissions."""

from __future__ import annotations

import hashlib
import os
import threading
import time
import urllib.parse
import uuid

import bcrypt
import grpc
import pytest
from bazelutil import copy_workspace, have_bazel
from besutil import publish_build, query_stub
from dashutil import CONFIG, basic, client, get_bytes, get_json, run
from google.longrunning import operations_pb2
from obsutil import get, http_url
from reapi import digest
from serverutil import start_granary

from granary._proto.build.bazel.remote.logstream.v1 import remote_logstream_pb2 as ls_pb2
from granary._proto.build.bazel.remote.logstream.v1 import remote_logstream_pb2_grpc as ls_grpc
from granary._proto.build_event_stream import build_event_stream_pb2 as bep
from granary._proto.google.bytestream import bytestream_pb2 as bs_pb2
from granary._proto.granary.builds.v1 import builds_pb2

# prints a numbered line to stdout every 0.5 s for 5 s, and one line to stderr (as test_logstream.py)
TICKER = "for i in 1 2 3 4 5 6 7 8 9 10; do echo line $i; sleep 0.5; done; echo done >&2"


def q(**params: str) -> str:
    return urllib.parse.urlencode(params)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A server with two local workers, after a few real actions ran on it."""
    tmp = tmp_path_factory.mktemp("dashboard")
    server = start_granary(tmp, CONFIG)
    try:
        c = client(server.address)
        name, response, action, root = run(
            c, "cat in.txt; echo to-stderr >&2; mkdir -p d/e; echo deep > d/e/f; printf 'data' > out; env > envs",
            outputs=("out", "d", "envs"), files={"in.txt": b"hello from the input\n", "tool.sh": b"#!/bin/sh\n"},
            env={"GREETING": "<b>hi</b>"}, invocation="inv-main")
        assert response.result.exit_code == 0, response
        failed, fresponse, _, _ = run(c, "echo failing; exit 3", outputs=(), invocation="inv-fail")
        assert fresponse.result.exit_code == 3
        for i in range(7):  # seven more, for paging
            run(c, f"echo {i}", outputs=(), invocation=f"inv-page-{i}")
        # the builds of some of those invocations, as Bazel's --bes_backend sends them
        publish_build(server.address, "inv-main", ["//app:bin", "//app:lib"], build_id="req-1")
        publish_build(server.address, "inv-fail", ["//gen:ok", "//gen:broken"], failing="//gen:broken", build_id="req-1",
                      tests={"//gen:ok_test": bep.PASSED, "//gen:slow_test": bep.TIMEOUT})
        for i in range(5):
            publish_build(server.address, f"inv-page-{i}", [f"//page:t{i}"])
        yield server, http_url(server), c, {"name": name, "response": response, "action": action, "root": root,
                                            "failed": failed}
        c.close()
    finally:
        server.stop()


def test_pages_are_one_shell_with_security_headers(served):
    _, base, _, _ = served
    status, body, headers = get_bytes(f"{base}/", {})
    assert status == 200 and b'<script src="/ui/static/app.js">' in body  # followed the redirect to /ui/
    for page in ("/ui/", "/ui/operations", "/ui/operation?name=x", "/ui/workers", "/ui/cas", "/ui/builds",
                 "/ui/build?id=x"):
        status, body, headers = get_bytes(base + page)
        assert status == 200, page
        assert headers["Content-Type"].startswith("text/html")
        csp = headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp and "'unsafe-inline'" not in csp
        assert headers["X-Frame-Options"] == "DENY"
        assert b"<script>" not in body and b"http://" not in body and b"https://" not in body
    status, js, headers = get_bytes(f"{base}/ui/static/app.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    assert b"innerHTML" not in js and b"http://" not in js and b"eval(" not in js
    assert get_bytes(f"{base}/ui/static/style.css")[0] == 200
    for bad in ("/ui/static/nope.js", "/ui/static/..%2Fhttp.py", "/ui/static/index.html.bak"):
        assert get_bytes(base + bad)[0] == 404, bad


def test_overview_totals_and_rates(served):
    _, base, c, _ = served
    status, first, headers = get_json(f"{base}/api/v1/overview")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert "Content-Security-Policy" in headers
    assert first["workers"] == 2 and first["slots"] == 2 and first["execution"] is True
    assert first["by_method"]["Execution/Execute"] >= 9
    assert first["completed"] >= 9 and first["stored_blobs"] > 0 and first["stored_bytes"] > 0
    for _ in range(20):
        c.upload(os.urandom(1000))
    time.sleep(1.2)  # past the reuse of a snapshot
    deadline = time.monotonic() + 30
    while True:
        status, later, _ = get_json(f"{base}/api/v1/overview")
        if later["rates"] is not None and later["rates"]["requests"] > 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert later["requests"] > first["requests"]
    assert later["rates"]["requests"] > 0 and later["rates"]["seconds"] > 0
    assert later["bytes_in"] > first["bytes_in"]


def test_operations_list_is_listoperations(served):
    _, base, c, ran = served
    status, page, _ = get_json(f"{base}/api/v1/operations?" + q(filter="tool_name = dash-test & sort_order = queued_time"))
    assert status == 200, page
    ops = page["operations"]
    assert len(ops) == 9 and page["next_page_token"] == ""
    main = next(o for o in ops if o["name"] == ran["name"])
    assert main["stage"] == "COMPLETED" and main["exit_code"] == 0 and main["tool_name"] == "dash-test"
    assert main["invocation_id"] == "inv-main" and main["worker"].startswith("local-")
    assert main["action_digest"] == f"{ran['action'].hash}/{ran['action'].size_bytes}"
    assert main["queued_time"] <= main["start_time"] <= main["completed_time"]
    assert next(o for o in ops if o["name"] == ran["failed"])["exit_code"] == 3
    # the same filter, sorting and paging as the gRPC call, page by page
    flt = "stage = COMPLETED & tool_name = dash-test & sort_order = completed_time(desc)"
    names, token, pages = [], "", 0
    grpc_names, grpc_token = [], ""
    while True:
        status, page, _ = get_json(f"{base}/api/v1/operations?" + q(filter=flt, page_size="4", page_token=token))
        assert status == 200, page
        names += [o["name"] for o in page["operations"]]
        reply = c.ops.ListOperations(operations_pb2.ListOperationsRequest(
            name="", filter=flt, page_size=4, page_token=grpc_token), timeout=30)
        grpc_names += [o.name for o in reply.operations]
        assert page["next_page_token"] == reply.next_page_token
        pages += 1
        token = grpc_token = page["next_page_token"]
        if not token:
            break
    assert pages == 3 and names == grpc_names and len(set(names)) == 9
    status, filtered, _ = get_json(f"{base}/api/v1/operations?" + q(filter="invocation_id = inv-fail"))
    assert [o["name"] for o in filtered["operations"]] == [ran["failed"]]
    # other instances have their own operations
    status, other, _ = get_json(f"{base}/api/v1/operations?" + q(instance="team/linux", filter="sort_order = name"))
    assert status == 200 and other["operations"] == []


@pytest.mark.parametrize("params", [
    {"filter": "colour = red"},
    {"filter": "stage = SIDEWAYS"},
    {"filter": "queued_time > yesterday"},
    {"filter": "stage = COMPLETED &"},
    {"filter": "sort_order = colour(desc)"},
    {"page_token": "bm90IGEgdG9rZW4"},
])
def test_bad_filters_and_tokens_get_the_grpc_message(served, params):
    _, base, c, _ = served
    status, body, _ = get_json(f"{base}/api/v1/operations?" + q(**params))
    with pytest.raises(grpc.RpcError) as refused:
        c.ops.ListOperations(operations_pb2.ListOperationsRequest(
            name="", filter=params.get("filter", ""), page_token=params.get("page_token", "")), timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert status == 400 and body == {"error": refused.value.details(), "code": "INVALID_ARGUMENT"}


@pytest.mark.parametrize("params, says", [
    ({"page_size": "0"}, "page_size 0 is outside 1..200"),
    ({"page_size": "201"}, "page_size 201 is outside 1..200"),
    ({"page_size": "-1"}, "page_size '-1' is not a whole number"),
    ({"page_size": "9" * 50}, "is not a whole number"),
    ({"filter": "name = " + "x" * 3000}, "filter is 3007 characters long; at most 2000 are accepted"),
    ({"page_token": "A" * 500}, "page_token is 500 characters long"),
    ({"instance": "i" * 2000}, "instance is 2000 characters long"),
])
def test_operations_input_is_bounded(served, params, says):
    _, base, _, _ = served
    status, body, _ = get_json(f"{base}/api/v1/operations?" + q(**params))
    assert status == 400 and says in body["error"], body


def test_one_operation_in_full(served):
    _, base, _, ran = served
    status, d, _ = get_json(f"{base}/api/v1/operation?" + q(name=ran["name"]))
    assert status == 200, d
    result = ran["response"].result
    assert d["operation"]["stage"] == "COMPLETED" and d["operation"]["exit_code"] == 0
    assert d["action"]["digest"] == f"{ran['action'].hash}/{ran['action'].size_bytes}"
    assert d["action"]["timeout"] == 120 and d["action"]["do_not_cache"] is False
    root = digest(ran["root"].SerializeToString())
    assert d["action"]["input_root_digest"] == f"{root.hash}/{root.size_bytes}"
    assert d["command"]["arguments"][:2] == ["sh", "-c"]
    assert d["command"]["environment_variables"] == [{"name": "GREETING", "value": "<b>hi</b>"}]
    assert d["command"]["output_paths"] == ["out", "d", "envs"]
    r = d["result"]
    assert r["stdout"]["text"] == "hello from the input\n" and r["stderr"]["text"] == "to-stderr\n"
    assert r["stdout"]["digest"] == f"{result.stdout_digest.hash}/{result.stdout_digest.size_bytes}"
    files = {f["path"]: f for f in r["output_files"]}
    assert files["out"]["digest"] == f"{hashlib.sha256(b'data').hexdigest()}/4"
    assert [x["path"] for x in r["output_directories"]] == ["d"]
    meta = r["execution_metadata"]
    assert meta["worker"] == result.execution_metadata.worker
    stamps = meta["timestamps"]
    order = ["queued", "worker_start", "input_fetch_start", "input_fetch_completed", "execution_start",
             "execution_completed", "output_upload_start", "output_upload_completed", "worker_completed"]
    assert all(stamps[k] is not None for k in order)
    assert [stamps[k] for k in order] == sorted(stamps[k] for k in order)
    assert d["status"]["code"] == "OK" and d["notes"] == []
    status, missing, _ = get_json(f"{base}/api/v1/operation?" + q(name="operations/no-such-thing"))
    assert status == 404 and "operations/no-such-thing" in missing["error"]
    assert get_json(f"{base}/api/v1/operation")[0] == 400


def test_stdout_is_capped_with_the_whole_blob_downloadable(served):
    _, base, c, _ = served
    name, response, _, _ = run(c, "i=0; while [ $i -lt 3000 ]; do echo line-$i-0123456789012345678901234567890; i=$((i+1)); done",
                                outputs=(), tool="dash-big")
    status, d, _ = get_json(f"{base}/api/v1/operation?" + q(name=name))
    out = d["result"]["stdout"]
    size = response.result.stdout_digest.size_bytes
    assert size > 64 << 10 and out["size"] == size and out["truncated"] is True
    assert len(out["text"].encode()) == 64 << 10 and out["text"].startswith("line-0-")
    status, whole, headers = get_bytes(f"{base}/api/v1/download?" + q(digest=out["digest"], name="stdout.txt"))
    assert status == 200 and len(whole) == size and whole.endswith(b"line-2999-0123456789012345678901234567890\n")
    assert headers["Content-Disposition"] == 'attachment; filename="stdout.txt"'


def test_workers(served):
    _, base, _, _ = served
    status, d, _ = get_json(f"{base}/api/v1/workers")
    assert status == 200 and d["execution"] is True
    sessions = d["sessions"]
    assert len(sessions) == 2 and all(s["alive"] and s["bot_id"].startswith("local-") for s in sessions)
    assert all(s["slots"] == 1 and {"name": "OSFamily", "value": "linux"} in s["properties"] for s in sessions)


def test_cas_browser_and_downloads(served):
    _, base, c, ran = served
    root = digest(ran["root"].SerializeToString())
    key = f"{root.hash}/{root.size_bytes}"
    status, b, _ = get_json(f"{base}/api/v1/blob?" + q(digest=key))
    assert status == 200 and b["view"] == "directory", b
    files = {f["name"]: f for f in b["directory"]["files"]}
    assert set(files) == {"in.txt", "tool.sh"} and files["tool.sh"]["is_executable"] is True
    assert files["in.txt"]["size"] == len(b"hello from the input\n")
    status, t, _ = get_json(f"{base}/api/v1/blob?" + q(digest=files["in.txt"]["digest"].replace("/", "-")))
    assert t["view"] == "text" and t["text"] == "hello from the input\n" and t["truncated"] is False
    status, data, headers = get_bytes(f"{base}/api/v1/download?" + q(digest=files["in.txt"]["digest"], name="a/in.txt"))
    assert status == 200 and data == b"hello from the input\n"
    assert headers["Content-Disposition"] == 'attachment; filename="in.txt"'
    assert headers["Content-Type"] == "application/octet-stream" and headers["Content-Length"] == str(len(data))
    # an output directory: its Tree walked by path
    tree = ran["response"].result.output_directories[0].tree_digest
    tkey = f"{tree.hash}/{tree.size_bytes}"
    status, top, _ = get_json(f"{base}/api/v1/blob?" + q(digest=tkey, view="tree"))
    assert status == 200 and [x["name"] for x in top["directory"]["directories"]] == ["e"]
    status, inner, _ = get_json(f"{base}/api/v1/blob?" + q(digest=tkey, view="tree", path="e"))
    assert inner["path"] == "e" and [f["name"] for f in inner["directory"]["files"]] == ["f"]
    status, nope, _ = get_json(f"{base}/api/v1/blob?" + q(digest=tkey, view="tree", path="e/zz"))
    assert status == 404 and "'e/zz' is not a directory" in nope["error"]
    # binary blobs are shown in hex; a large one streams out whole
    blob = os.urandom(5 << 20)
    c.bs_write(blob)
    d = digest(blob)
    status, bin_view, _ = get_json(f"{base}/api/v1/blob?" + q(digest=f"{d.hash}/{d.size_bytes}"))
    assert status == 200 and bin_view["binary"] is True and bin_view["hex"] == blob[:512].hex()
    status, data, headers = get_bytes(f"{base}/api/v1/download?" + q(digest=f"{d.hash}/{d.size_bytes}"))
    assert status == 200 and data == blob
    assert headers["Content-Disposition"] == f'attachment; filename="{d.hash}"'


@pytest.mark.parametrize("params, status, says", [
    ({}, 400, "digest is missing"),
    ({"digest": "abc"}, 400, "digest 'abc' is not of the form HASH/SIZE"),
    ({"digest": "ab/12"}, 400, "cannot infer the digest function of hash 'ab'"),
    ({"digest": "zz" * 32 + "/1"}, 400, "is not of the form HASH/SIZE"),
    ({"digest": "a" * 64 + "/-1"}, 400, "is not of the form HASH/SIZE"),
    ({"digest": "a" * 64 + "/" + "9" * 20}, 400, "is not a 64-bit size"),
    ({"digest": "a" * 64 + "/1", "function": "crc32"}, 400, "digest function 'crc32' is unknown"),
    ({"digest": "a" * 64 + "/1", "function": "sha1"}, 400, "expected 40 lowercase hex characters for SHA1"),
    ({"digest": "a" * 64 + "/1", "view": "xml"}, 400, "view 'xml' is unknown"),
    ({"digest": "a" * 64 + "/1"}, 404, f"blob {'a' * 64}/1 is not in the CAS of instance ''"),
    ({"digest": "a" * 64 + "/1", "instance": "nobody"}, 400, "unknown instance name 'nobody'"),
    ({"digest": "<script>/1"}, 400, "'<script>/1' is not of the form"),
])
def test_bad_digests_are_named(served, params, status, says):
    _, base, _, _ = served
    for route in ("blob", "download"):
        if route == "download" and "view" in params:
            continue
        got, body, headers = get_json(f"{base}/api/v1/{route}?" + q(**params))
        assert got == status and says in body["error"], (route, body)
        assert headers["Content-Type"].startswith("application/json")


def test_builds_list_is_listinvocations(served):
    server, base, _, _ = served
    status, page, headers = get_json(f"{base}/api/v1/builds")
    assert status == 200 and page["enabled"] is True, page
    assert "Content-Security-Policy" in headers
    builds = page["invocations"]
    assert [b["invocation_id"] for b in builds] == [f"inv-page-{i}" for i in range(4, -1, -1)] + ["inv-fail", "inv-main"]
    main = builds[-1]
    assert main["command"] == "build" and main["patterns"] == ["//app:bin", "//app:lib"]
    assert main["user"] == "alice" and main["host"] == "ci-1" and main["tool_version"] == "4.2.3"
    assert main["result"] == "success" and main["exit_code"] == 0 and main["build_id"] == "req-1"
    assert main["start_time"] == 1_700_000_000 and main["duration"] == 2.5
    assert (main["actions_executed"], main["actions_created"], main["cache_hits"], main["processes"]) == (3, 7, 1, 4)
    assert main["operations_filter"] == "invocation_id = inv-main & sort_order = queued_time"
    fail = builds[-2]
    assert fail["result"] == "failed" and fail["exit_code_name"] == "BUILD_FAILURE" and fail["targets_failed"] == 1
    assert fail["first_failure"].startswith("//gen:broken: Genrule exited 1")
    # paged as ListInvocations pages, token for token
    ids, token, grpc_ids, grpc_token = [], "", [], ""
    with grpc.insecure_channel(server.address) as ch:
        while True:
            status, page, _ = get_json(f"{base}/api/v1/builds?" + q(page_size="3", page_token=token))
            assert status == 200, page
            reply = query_stub(ch).ListInvocations(builds_pb2.ListInvocationsRequest(page_size=3, page_token=grpc_token))
            ids += [b["invocation_id"] for b in page["invocations"]]
            grpc_ids += [s.invocation_id for s in reply.invocations]
            assert page["next_page_token"] == reply.next_page_token
            token = grpc_token = page["next_page_token"]
            if not token:
                break
    assert ids == grpc_ids == [b["invocation_id"] for b in builds]
    status, same_request, _ = get_json(f"{base}/api/v1/builds?" + q(build_id="req-1"))
    assert [b["invocation_id"] for b in same_request["invocations"]] == ["inv-fail", "inv-main"]
    for params, says in (({"page_size": "0"}, "page_size 0 is outside 1..200"),
                         ({"page_token": "garbage"}, "is not one this server gave out"),
                         ({"build_id": "b" * 1001}, "build_id is 1001 characters long")):
        status, body, _ = get_json(f"{base}/api/v1/builds?" + q(**params))
        assert status == 400 and says in body["error"], body


def test_one_build_in_full_linked_to_its_operations_and_back(served):
    server, base, _, ran = served
    status, d, _ = get_json(f"{base}/api/v1/build?" + q(id="inv-fail"))
    assert status == 200, d
    with grpc.insecure_channel(server.address) as ch:
        detail = query_stub(ch).GetInvocation(builds_pb2.GetInvocationRequest(invocation_id="inv-fail"))
    assert d["summary"]["invocation_id"] == "inv-fail" and d["summary"]["result"] == "failed"
    assert [(t["label"], t["success"], t["kind"]) for t in d["targets"]] == [
        (t.label, t.success, t.kind) for t in detail.targets] == [("//gen:ok", True, "genrule rule"),
                                                                  ("//gen:broken", False, "genrule rule")]
    [failure] = d["failures"]
    assert (failure["kind"], failure["label"], failure["what"], failure["exit_code"]) == ("action", "//gen:broken",
                                                                                         "Genrule", 1)
    assert failure["message"] == "Executing genrule failed: exit 1"
    assert d["tests"] == [{"label": "//gen:ok_test", "status": "PASSED", "runs": 1, "duration": 1.2, "cached": False},
                          {"label": "//gen:slow_test", "status": "TIMEOUT", "runs": 1, "duration": 1.2, "cached": False}]
    assert (d["summary"]["tests_passed"], d["summary"]["tests_failed"]) == (1, 1)
    assert d["counts"] == {"targets": 2, "tests": 2, "failures": 1} and d["truncated"] is False
    # its operations: one on the default instance, listed with the filter the page links to
    ops = d["operations"]
    assert ops["listed"] is True and ops["instances"] == [{"instance": "", "count": 1, "more": False}]
    status, listed, _ = get_json(f"{base}/api/v1/operations?" + q(filter=ops["filter"]))
    assert [o["name"] for o in listed["operations"]] == [ran["failed"]]
    # and back: the operations list and the operation name their build
    assert listed["invocations"]["inv-fail"]["result"] == "failed"
    assert listed["invocations"]["inv-fail"]["patterns"] == ["//gen:ok", "//gen:broken"]
    status, op, _ = get_json(f"{base}/api/v1/operation?" + q(name=ran["failed"]))
    assert op["invocation"]["invocation_id"] == "inv-fail" and op["invocation"]["command"] == "build"
    # an invocation with operations but no build stored, and a build without operations
    status, unlinked, _ = get_json(f"{base}/api/v1/operations?" + q(filter="invocation_id = inv-page-6"))
    assert len(unlinked["operations"]) == 1 and unlinked["invocations"] == {}
    status, op, _ = get_json(f"{base}/api/v1/operation?" + q(name=unlinked["operations"][0]["name"]))
    assert op["invocation"] is None
    publish_build(server.address, "inv-no-ops", ["//x:y"])
    status, d, _ = get_json(f"{base}/api/v1/build?" + q(id="inv-no-ops"))
    assert status == 200 and d["operations"]["instances"] == []
    # unknown and missing ids: the gRPC message
    status, missing, _ = get_json(f"{base}/api/v1/build?" + q(id="no-such-invocation"))
    with grpc.insecure_channel(server.address) as ch, pytest.raises(grpc.RpcError) as refused:
        query_stub(ch).GetInvocation(builds_pb2.GetInvocationRequest(invocation_id="no-such-invocation"))
    assert status == 404 and missing == {"error": refused.value.details(), "code": "NOT_FOUND"}
    assert get_json(f"{base}/api/v1/build")[0] == 400


def _operation_of(base: str, invocation: str, deadline: float) -> dict:
    """The operation of an invocation once it executes and names its log streams (via the dashboard's API)."""
    while True:
        status, page, _ = get_json(f"{base}/api/v1/operations?" + q(filter=f"invocation_id = {invocation}"))
        assert status == 200, page
        if page["operations"]:
            status, d, _ = get_json(f"{base}/api/v1/operation?" + q(name=page["operations"][0]["name"]))
            if d["operation"]["stage"] == "EXECUTING" and d["streams"]["stdout"]:
                return d
            assert d["operation"]["stage"] != "COMPLETED", "the action completed before its streams were seen"
        assert time.monotonic() < deadline, "no EXECUTING operation naming its streams"
        time.sleep(0.1)


def test_live_log_of_a_running_action(served):
    _, base, c, _ = served
    finished: dict = {}
    runner = threading.Thread(target=lambda: finished.update(
        zip(("name", "response"), run(c, TICKER, outputs=(), invocation="inv-live")[:2])), daemon=True)
    runner.start()
    d = _operation_of(base, "inv-live", time.monotonic() + 60)
    name, streams = d["operation"]["name"], d["streams"]
    assert streams["stdout"].startswith("logstreams/") and streams["stderr"].startswith("logstreams/")
    # the first line arrives while the operation still executes
    got, offset = "", 0
    while "line 1\n" not in got:
        status, r, _ = get_json(f"{base}/api/v1/logstream?" + q(name=streams["stdout"], offset=str(offset)))
        assert status == 200, r
        assert r["offset"] == offset and r["next_offset"] == offset + len(r["text"].encode())
        got += r["text"]
        offset = r["next_offset"]
        assert not r["finished"]
    status, now, _ = get_json(f"{base}/api/v1/operation?" + q(name=name))
    assert now["operation"]["stage"] == "EXECUTING", "line 1 arrived only after the action completed"
    while True:  # the rest, until the worker finishes the stream
        status, r, _ = get_json(f"{base}/api/v1/logstream?" + q(name=streams["stdout"], offset=str(offset)))
        assert status == 200, r
        got += r["text"]
        offset = r["next_offset"]
        if r["finished"]:
            break
    runner.join(60)
    result = finished["response"].result
    assert got.encode() == c.bs_read(result.stdout_digest) == b"".join(b"line %d\n" % i for i in range(1, 11))
    assert r["size"] == offset == len(got)
    status, err, _ = get_json(f"{base}/api/v1/logstream?" + q(name=streams["stderr"], wait="0"))
    assert (err["text"], err["finished"]) == ("done\n", True)
    # once completed, the operation shows the result's output and still names the streams
    status, final, _ = get_json(f"{base}/api/v1/operation?" + q(name=name))
    assert final["operation"]["stage"] == "COMPLETED" and final["result"]["stdout"]["text"] == got
    assert final["streams"] == streams
    # at the end of a finished stream: nothing more, at once; past it: refused
    status, end, _ = get_json(f"{base}/api/v1/logstream?" + q(name=streams["stdout"], offset=str(offset)))
    assert status == 200 and (end["text"], end["next_offset"], end["finished"]) == ("", offset, True)
    status, past, _ = get_json(f"{base}/api/v1/logstream?" + q(name=streams["stdout"], offset=str(offset + 1)))
    assert status == 400 and past["code"] == "OUT_OF_RANGE" and "past the end" in past["error"]


def test_live_log_answers_are_capped_and_end_on_whole_characters(served):
    """A stream written by hand (CreateLogStream, ByteStream Write): 100 KiB come in two answers, a
    UTF-8 character cut between writes is returned whole once its last byte is there."""
    _, base, c, _ = served
    made = ls_grpc.LogStreamServiceStub(c.channel).CreateLogStream(ls_pb2.CreateLogStreamRequest(parent=""), timeout=30)

    def write(offset: int, data: bytes, finish: bool = False) -> None:
        c.bs.Write(iter([bs_pb2.WriteRequest(resource_name=made.write_resource_name, write_offset=offset, data=data,
                                             finish_write=finish)]), timeout=30)

    def read(offset: int, wait: str = "0") -> dict:
        status, r, _ = get_json(f"{base}/api/v1/logstream?" + q(name=made.name, offset=str(offset), wait=wait))
        assert status == 200, r
        return r

    big = b"x" * (100 << 10)
    write(0, big + b"caf\xc3")
    first = read(0)
    assert len(first["text"]) == 64 << 10 and first["next_offset"] == 64 << 10 and first["finished"] is False
    second = read(first["next_offset"])
    assert second["text"] == "x" * ((100 << 10) - (64 << 10)) + "caf"  # the é is not complete yet
    at = second["next_offset"]
    assert at == len(big) + 3 and second["size"] == len(big) + 4
    assert read(at)["text"] == ""  # still only half a character, and wait=0 does not wait
    writer = threading.Timer(1.0, write, (len(big) + 4, b"\xa9!", True))
    writer.start()
    last = read(at, wait="10")  # waits for the write
    writer.join()
    assert (last["text"], last["finished"], last["next_offset"]) == ("é!", True, len(big) + 6)


@pytest.mark.parametrize("params, status, says", [
    ({}, 400, "name is missing"),
    ({"name": "blobs/abc/1"}, 400, "is not a log stream name"),
    ({"name": "logstreams/a/b/c"}, 400, "invalid log stream resource name"),
    ({"name": "logstreams/nope"}, 404, "log stream 'logstreams/nope' not found"),
    ({"name": "logstreams/nope/token"}, 400, "write resource name cannot be read"),
    ({"name": "logstreams/nope", "offset": "-1"}, 400, "offset '-1' is not a whole number"),
    ({"name": "logstreams/nope", "wait": "11"}, 400, "wait '11' is outside 0..10 seconds"),
    ({"name": "logstreams/nope", "wait": "nan"}, 400, "wait 'nan' is outside"),
    ({"name": "nobody/logstreams/x"}, 400, "unknown instance name 'nobody'"),
])
def test_bad_log_stream_requests_are_named(served, params, status, says):
    _, base, _, _ = served
    got, body, _ = get_json(f"{base}/api/v1/logstream?" + q(**params))
    assert got == status and says in body["error"], body


def test_builds_when_build_events_are_off(tmp_path):
    config = CONFIG.replace("local_workers: 2", "local_workers: 0") + "build_events: {enabled: false}\n"
    with start_granary(tmp_path, config) as s:
        base = http_url(s)
        status, page, _ = get_json(f"{base}/api/v1/builds")
        assert status == 200 and page["enabled"] is False and page["invocations"] == []
        assert "build_events.enabled: false" in page["message"]
        status, body, _ = get_json(f"{base}/api/v1/build?" + q(id="x"))
        assert status == 404 and body["code"] == "UNIMPLEMENTED" and "build events are off" in body["error"]
        assert get_bytes(f"{base}/ui/builds")[0] == 200


def test_the_dashboard_can_be_turned_off(tmp_path):
    with start_granary(tmp_path, CONFIG.replace("local_workers: 2", "local_workers: 0") + "http: {dashboard: false}\n") as s:
        base = http_url(s)
        for path in ("/", "/ui/", "/api/v1/overview", "/api/v1/download"):
            assert get(base + path)[0] == 404, path
        assert get(f"{base}/metrics")[0] == 200


AUTH = CONFIG + """
auth:
  htpasswd: htpasswd
  rules:
    - {identities: [alice, bob], instance: "", permissions: [execute, cache-write]}
    - {identities: [alice], instance: "", permissions: [cache-read]}
    - {identities: [root], instance: "", permissions: [admin]}
"""


def test_credentials_and_permissions_are_the_grpc_ones(tmp_path):
    data = tmp_path / "granary-data"
    data.mkdir()
    users = {"alice": "a-pw", "bob": "b-pw", "root": "r-pw"}
    (data / "htpasswd").write_text("".join(
        f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=4)).decode()}\n" for u, p in users.items()))
    alice, bob, root = ({"Authorization": basic(u, users[u])} for u in ("alice", "bob", "root"))
    with start_granary(tmp_path, AUTH) as server:
        base = http_url(server)
        a = client(server.address, authorization=alice["Authorization"])
        b = client(server.address, authorization=bob["Authorization"])
        alices, response, _, _ = run(a, "echo from alice > out", invocation="alice-1")
        bobs, _, _, _ = run(b, "echo from bob > out", invocation="bob-1")
        # no or wrong credentials: 401 with a Basic challenge, so a browser asks
        for path in ("/ui/", "/ui/operations", "/api/v1/overview", "/api/v1/operations", "/api/v1/workers",
                     "/api/v1/operation?name=" + alices, "/api/v1/blob?digest=x", "/api/v1/download?digest=x"):
            for headers in ({}, {"Authorization": basic("alice", "wrong")}):
                status, _, h = get_bytes(base + path, headers)
                assert status == 401 and h["WWW-Authenticate"].startswith("Basic"), (path, headers, status)
        assert get_bytes(f"{base}/ui/static/app.js")[0] == 200  # the script holds no data
        assert get_bytes(f"{base}/ui/", bob)[0] == 200
        assert get_json(f"{base}/api/v1/overview", bob)[0] == 200
        # operations: each sees its own; admin sees all (ListOperations' rule)
        mine = lambda who: [o["name"] for o in get_json(
            f"{base}/api/v1/operations?" + q(filter="sort_order = name"), who)[1]["operations"]]
        assert mine(alice) == [alices] and mine(bob) == [bobs] and sorted(mine(root)) == sorted([alices, bobs])
        status, body, _ = get_json(f"{base}/api/v1/operation?" + q(name=alices), bob)
        assert status == 403 and "belongs to another identity" in body["error"]
        with pytest.raises(grpc.RpcError) as refused:
            b.ops.GetOperation(operations_pb2.GetOperationRequest(name=alices), timeout=30)
        assert body["error"] == refused.value.details()
        # the CAS: cache-read on the instance, as ByteStream Read
        out = response.result.output_files[0].digest
        key = f"{out.hash}/{out.size_bytes}"
        assert get_bytes(f"{base}/api/v1/download?" + q(digest=key), alice)[1] == b"from alice\n"
        status, body, _ = get_json(f"{base}/api/v1/download?" + q(digest=key), bob)
        assert status == 403 and body["error"] == "'bob' (basic) lacks permission cache-read on instance ''"
        assert get_json(f"{base}/api/v1/blob?" + q(digest="nonsense"), bob)[0] == 403  # says nothing of the digest
        # an operation page shows blob contents only to who may read them
        status, seen, _ = get_json(f"{base}/api/v1/operation?" + q(name=bobs), bob)
        assert status == 200 and seen["cas_readable"] is False and seen["command"] is None
        assert seen["result"]["output_files"][0]["path"] == "out" and "needs cache-read" in seen["notes"][0]
        status, seen, _ = get_json(f"{base}/api/v1/operation?" + q(name=alices), alice)
        assert seen["command"]["arguments"][-1] == "echo from alice > out"
        # builds: what the BuildEvents query service needs (cache-read on the root instance)
        for path in ("/ui/builds", "/api/v1/builds", "/api/v1/build?id=x"):
            assert get_bytes(base + path)[0] == 401, path
        status, body, _ = get_json(f"{base}/api/v1/builds", bob)
        with grpc.insecure_channel(server.address) as ch, pytest.raises(grpc.RpcError) as refused:
            query_stub(ch).ListInvocations(builds_pb2.ListInvocationsRequest(),
                                           metadata=[("authorization", bob["Authorization"])])
        assert status == 403 and body == {"error": refused.value.details(), "code": "PERMISSION_DENIED"}
        assert get_json(f"{base}/api/v1/build?" + q(id="x"), bob)[0] == 403
        status, page, _ = get_json(f"{base}/api/v1/builds", alice)
        assert status == 200 and page["invocations"] == []
        assert get_json(f"{base}/api/v1/build?" + q(id="x"), alice)[0] == 404
        publish_build(server.address, "alice-1", ["//a:b"], metadata=(("authorization", basic("root", "r-pw")),))
        status, page, _ = get_json(f"{base}/api/v1/builds", alice)
        assert [b["invocation_id"] for b in page["invocations"]] == ["alice-1"]
        # the build is linked from an operation only for who may read builds
        assert get_json(f"{base}/api/v1/operation?" + q(name=alices), alice)[1]["invocation"]["invocation_id"] == "alice-1"
        assert get_json(f"{base}/api/v1/operation?" + q(name=alices), root)[1]["invocation"] is not None
        # a log stream: cache-read on its instance, as ByteStream Read
        stream = seen["streams"]["stdout"]
        status, log, _ = get_json(f"{base}/api/v1/logstream?" + q(name=stream, wait="0"), alice)
        assert status == 200 and log["finished"] is True and log["text"] == ""
        status, body, _ = get_json(f"{base}/api/v1/logstream?" + q(name=stream, wait="0"), bob)
        assert status == 403 and body["error"] == "'bob' (basic) lacks permission cache-read on instance ''"
        assert get_bytes(f"{base}/api/v1/logstream?" + q(name=stream))[0] == 401
        a.close()
        b.close()


@pytest.mark.bazel
@pytest.mark.skipif(not have_bazel(), reason="bazel is not on PATH")
def test_a_real_bazel_build_is_linked_to_the_operations_it_ran(tmp_path):
    """Bazel's RequestMetadata tool_invocation_id is its BES invocation id: a build executed remotely
    and published here lists its operations, and they name it."""
    with start_granary(tmp_path / "server", CONFIG) as server:
        base = http_url(server)
        ws = copy_workspace("bazel_bes", tmp_path)
        inv = str(uuid.uuid4())
        ws.build("//gen:hello", "//gen:upper", f"--bes_backend=grpc://{server.address}", f"--invocation_id={inv}",
                 "--bes_timeout=120s", f"--remote_executor=grpc://{server.address}", "--remote_timeout=60",
                 "--spawn_strategy=remote", "--genrule_strategy=remote", "--remote_local_fallback=false")
        status, d, _ = get_json(f"{base}/api/v1/build?" + q(id=inv))
        assert status == 200 and d["summary"]["result"] == "success", d
        assert {t["label"] for t in d["targets"]} == {"//gen:hello", "//gen:upper"}
        assert d["operations"]["instances"] == [{"instance": "", "count": 2, "more": False}]
        status, page, _ = get_json(f"{base}/api/v1/operations?" + q(filter=d["operations"]["filter"]))
        ops = page["operations"]
        assert [(o["tool_name"], o["action_mnemonic"], o["stage"], o["exit_code"]) for o in ops] == [
            ("bazel", "Genrule", "COMPLETED", 0)] * 2
        assert {o["invocation_id"] for o in ops} == {inv} and page["invocations"][inv]["result"] == "success"
        status, op, _ = get_json(f"{base}/api/v1/operation?" + q(name=ops[0]["name"]))
        assert op["invocation"]["invocation_id"] == inv and op["invocation"]["patterns"] == ["//gen:hello", "//gen:upper"]
