"""The dashboard's HTTP side against a real `granary serve` whose local workers run real actions: the
pages and their security headers, the overview's totals and rates, operations listed with the very
filter, sorting, paging and errors of ListOperations, one operation in full, workers, the CAS browser
and streamed downloads, hostile input, and the gRPC port's credentials and permissions."""

from __future__ import annotations

import hashlib
import os
import time
import urllib.parse

import bcrypt
import grpc
import pytest
from dashutil import CONFIG, basic, client, get_bytes, get_json, run
from google.longrunning import operations_pb2
from obsutil import get, http_url
from reapi import digest
from serverutil import start_granary


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
        yield server, http_url(server), c, {"name": name, "response": response, "action": action, "root": root,
                                            "failed": failed}
        c.close()
    finally:
        server.stop()


def test_pages_are_one_shell_with_security_headers(served):
    _, base, _, _ = served
    status, body, headers = get_bytes(f"{base}/", {})
    assert status == 200 and b'<script src="/ui/static/app.js">' in body  # followed the redirect to /ui/
    for page in ("/ui/", "/ui/operations", "/ui/operation?name=x", "/ui/workers", "/ui/cas"):
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
        a.close()
        b.close()
