"""Observability of a real `granary serve` (issue 10): /metrics summed across server processes,
/healthz and /readyz (also while draining), grpc.health.v1 and reflection, request log lines in text
and JSON, and the HTTP port turned off. Real processes and real gRPC on loopback throughout."""

from __future__ import annotations

import json
import signal
import time
import uuid

import bcrypt
import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from obsutil import get, http_url, pids_in, scrape, scrape_until
from reapi import digest
from rwapi import ExecClient, FakeBot, Stream
from serverutil import start_granary

from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from granary._proto.google.bytestream import bytestream_pb2 as bs_pb2
from granary._proto.google.bytestream import bytestream_pb2_grpc as bs_grpc

EXECUTING = 3
METADATA_KEY = "build.bazel.remote.execution.v2.requestmetadata-bin"
RE = "build.bazel.remote.execution.v2"

CACHE = """
storage: {main: {type: disk, path: cas}}
action_caches: {main: {type: disk, path: ac}}
instances: {"team/linux": {cas: main, action_cache: main}, "*": {cas: main, action_cache: main}}
"""


def request_metadata(tool: str = "bazel", version: str = "7.4.1", invocation: str = "", action: str = ""):
    md = re_pb2.RequestMetadata(tool_invocation_id=invocation, action_id=action, action_mnemonic="Genrule")
    md.tool_details.tool_name = tool
    md.tool_details.tool_version = version
    return [(METADATA_KEY, md.SerializeToString())]


def channels(address: str, n: int) -> list[grpc.Channel]:
    """n channels with connections of their own (a distinct argument keeps gRPC from sharing one)."""
    return [grpc.insecure_channel(address, options=[("granary.test.channel", i)]) for i in range(n)]


def test_metrics_count_known_calls_summed_over_two_processes(tmp_path):
    server = start_granary(tmp_path, CACHE, "--log-level", "info", processes=2)
    try:
        base = http_url(server)
        chans = channels(server.address, 12)
        sizes, update_bytes, read_bytes = [], 0, 0
        for i, ch in enumerate(chans):
            cas, ac, bs = re_grpc.ContentAddressableStorageStub(ch), re_grpc.ActionCacheStub(ch), bs_grpc.ByteStreamStub(ch)
            instance = "team/linux" if i % 2 else f"ci-{i % 3}"
            blob = f"blob {i} {uuid.uuid4()}".encode() * (i + 1)
            d = digest(blob)
            req = re_pb2.BatchUpdateBlobsRequest(
                instance_name=instance, requests=[re_pb2.BatchUpdateBlobsRequest.Request(digest=d, data=blob)])
            update_bytes += req.ByteSize()
            assert cas.BatchUpdateBlobs(req, timeout=30).responses[0].status.code == 0
            sizes.append(len(blob))
            action = digest(f"action {i} {uuid.uuid4()}".encode())
            with pytest.raises(grpc.RpcError) as miss:
                ac.GetActionResult(re_pb2.GetActionResultRequest(instance_name=instance, action_digest=action),
                                   timeout=30)
            assert miss.value.code() == grpc.StatusCode.NOT_FOUND
            result = re_pb2.ActionResult(exit_code=0, stdout_digest=d)
            ac.UpdateActionResult(re_pb2.UpdateActionResultRequest(
                instance_name=instance, action_digest=action, action_result=result), timeout=30)
            got = ac.GetActionResult(re_pb2.GetActionResultRequest(instance_name=instance, action_digest=action),
                                     timeout=30)
            assert got.stdout_digest == d
            prefix = f"{instance}/"
            chunks = list(bs.Read(bs_pb2.ReadRequest(resource_name=f"{prefix}blobs/{d.hash}/{d.size_bytes}"),
                                  timeout=30))
            assert b"".join(c.data for c in chunks) == blob
            read_bytes += sum(c.ByteSize() for c in chunks)
        n = len(chans)
        lines = server.log.read_text().splitlines()
        assert len(pids_in(lines, "ActionCache/GetActionResult")) == 2, "both server processes must serve calls"

        call = "granary_grpc_requests_total"
        scrape_until(base, lambda m: m.total(call, method="Read") == n)  # both processes wrote their counts
        for _ in range(4):  # any process answers a scrape, each with the sum of both
            m = scrape(base)
            assert m.total(call, method="BatchUpdateBlobs", code="OK") == n
            assert m.total(call, method="GetActionResult", code="NOT_FOUND") == n
            assert m.total(call, method="GetActionResult", code="OK") == n
            assert m.total(call, method="UpdateActionResult", code="OK") == n
            assert m.total(call, method="Read", service="google.bytestream.ByteStream", code="OK") == n
            assert m.total("granary_grpc_request_duration_seconds_count", method="GetActionResult") == 2 * n
            assert m.total("granary_grpc_received_bytes_total", method="BatchUpdateBlobs") == update_bytes
            assert m.total("granary_grpc_sent_bytes_total", method="Read") == read_bytes
            assert m.total("granary_action_cache_hits_total") == n
            assert m.total("granary_action_cache_misses_total") == n
            assert m.total("granary_action_cache_updates_total") == n
            assert m.total("granary_action_cache_hits_total", instance="team/linux") == n // 2
            assert m.total("granary_cas_written_blobs_total", store="main") == n
            assert m.total("granary_cas_written_bytes_total", store="main") == sum(sizes)
            assert m.total("granary_cas_read_blobs_total", store="main") == n
            assert m.total("granary_cas_read_bytes_total", store="main") == sum(sizes)
            assert m.total("granary_cas_stored_blobs", store="main") == n
            assert m.total("granary_cas_stored_bytes", store="main") == sum(sizes)
            assert m.label_values(call, "instance") == {"team/linux", "ci-0", "ci-1", "ci-2"}
            assert m.total("granary_uploads_in_progress") == 0
        for ch in chans:
            ch.close()
    finally:
        server.stop()
    assert server.proc.returncode == 0, server.log.read_text()


def test_the_interceptor_buckets_latency_like_the_histogram():
    from granary.observability import interceptor, metrics

    assert interceptor.LATENCY_BOUNDS == metrics.LATENCY_BUCKETS


def test_instance_labels_are_bounded(tmp_path):
    config = CACHE + "http: {max_instance_labels: 2}\n"
    server = start_granary(tmp_path, config)
    try:
        with grpc.insecure_channel(server.address) as ch:
            ac = re_grpc.ActionCacheStub(ch)
            for name in ["team/linux", "a", "b", "c", "d", "team/linux"]:
                with pytest.raises(grpc.RpcError):
                    ac.GetActionResult(re_pb2.GetActionResultRequest(instance_name=name,
                                                                     action_digest=digest(b"x")), timeout=30)
        call = "granary_grpc_requests_total"
        m = scrape_until(http_url(server), lambda m: m.total(call, method="GetActionResult") == 6)
        assert m.label_values(call, "instance") == {"team/linux", "a", "b", "(other)"}
        assert m.total(call, instance="(other)") == 2
        assert m.total(call, instance="team/linux") == 2
    finally:
        server.stop()


def test_healthz_readyz_and_health_service(tmp_path):
    server = start_granary(tmp_path, CACHE + "execution: {local_workers: 0}\n")
    try:
        base = http_url(server)
        assert get(f"{base}/healthz")[:2] == (200, "ok\n")
        status, body, headers = get(f"{base}/readyz")
        assert status == 200, body
        assert body.splitlines()[0] == "ready"
        for what in ("storage main: ok", "action cache main: ok", "queue database: ok"):
            assert what in body, body
        assert headers["Cache-Control"] == "no-store"
        assert get(f"{base}/nothing-here")[0] == 404
        with grpc.insecure_channel(server.address) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            for service in ("", f"{RE}.ActionCache", f"{RE}.Execution", "google.bytestream.ByteStream"):
                status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
                assert status == health_pb2.HealthCheckResponse.SERVING, service
            with pytest.raises(grpc.RpcError) as unknown:
                health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
            assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        server.stop()


def test_readyz_and_health_say_not_ready_while_draining(tmp_path):
    config = """
server: {drain_timeout: 60s}
storage: {main: {type: disk, path: cas}}
action_caches: {main: {type: disk, path: ac}}
instances: {"": {cas: main, action_cache: main}}
execution: {local_workers: 1, bot_long_poll: 2s, bot_timeout: 20s}
"""
    server = start_granary(tmp_path, config)
    client = ExecClient(server.address)
    try:
        base = http_url(server)
        assert get(f"{base}/readyz")[0] == 200
        d, _ = client.action(["sh", "-c", "sleep 4; echo drained"])
        stream = Stream(client.execute(d, timeout=120))
        stream.wait_stage(EXECUTING, timeout=60)
        health = health_pb2_grpc.HealthStub(client.channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=60)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        server.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while True:
            status, body, _ = get(f"{base}/readyz")
            if status == 503:
                break
            assert time.monotonic() < deadline, "readyz never said not ready"
            time.sleep(0.05)
        assert body.splitlines()[0] == "not ready"
        assert "draining: the server is shutting down" in body, body
        assert get(f"{base}/healthz")[0] == 200  # still alive
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        status = health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert stream.result(timeout=90).result.exit_code == 0  # the running action still finished
        assert server.proc.wait(90) == 0
    finally:
        client.close()
        server.stop()


def test_reflection_lists_services_and_serves_their_descriptors(tmp_path):
    server = start_granary(tmp_path, CACHE + "execution: {local_workers: 0}\n")
    try:
        with grpc.insecure_channel(server.address) as ch:
            stub = reflection_pb2_grpc.ServerReflectionStub(ch)
            reply = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                                   timeout=30))
            names = {s.name for s in reply.list_services_response.service}
            assert {f"{RE}.ContentAddressableStorage", f"{RE}.ActionCache", f"{RE}.Capabilities",
                    f"{RE}.Execution", "google.bytestream.ByteStream", "google.longrunning.Operations",
                    "google.devtools.remoteworkers.v1test2.Bots", "grpc.health.v1.Health",
                    "grpc.reflection.v1alpha.ServerReflection"} <= names, names
            reply = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
                file_containing_symbol=f"{RE}.ActionCache")]), timeout=30))
            files = [descriptor_pb2.FileDescriptorProto.FromString(raw)
                     for raw in reply.file_descriptor_response.file_descriptor_proto]
            assert files[0].name == "build/bazel/remote/execution/v2/remote_execution.proto"
            assert "ActionCache" in {s.name for s in files[0].service}
            # what grpcurl does: resolve a method's types, dependencies included, from the server alone
            pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(ch))
            method = pool.FindServiceByName(f"{RE}.ActionCache").FindMethodByName("GetActionResult")
            assert method.input_type.full_name == f"{RE}.GetActionResultRequest"
            assert method.output_type.fields_by_name["execution_metadata"].message_type.full_name == (
                f"{RE}.ExecutedActionMetadata")
            ops = pool.FindServiceByName("google.longrunning.Operations").FindMethodByName("ListOperations")
            assert ops.output_type.full_name == "google.longrunning.ListOperationsResponse"
    finally:
        server.stop()


def _last_request_line(text: str, marker: str) -> str:
    lines = [line for line in text.splitlines() if marker in line]
    assert lines, text
    return lines[-1]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_request_log_lines(tmp_path, fmt):
    server = start_granary(tmp_path, CACHE, "--log-level", "info", "--log-format", fmt)
    try:
        with grpc.insecure_channel(server.address) as ch:
            ac = re_grpc.ActionCacheStub(ch)
            action = digest(b"logged action")
            md = request_metadata(invocation="inv-42", action=action.hash)
            with pytest.raises(grpc.RpcError):
                ac.GetActionResult(re_pb2.GetActionResultRequest(instance_name="team/linux", action_digest=action),
                                   metadata=md, timeout=30)
            hostile = request_metadata(tool="evil\nINFO forged line", invocation="x y")
            re_grpc.CapabilitiesStub(ch).GetCapabilities(re_pb2.GetCapabilitiesRequest(), metadata=hostile,
                                                         timeout=30)
        time.sleep(0.5)
        text = server.log.read_text()
        if fmt == "text":
            line = _last_request_line(text, "ActionCache/GetActionResult")
            assert " granary.requests INFO " in line
            assert "instance=team/linux code=NOT_FOUND" in line
            assert f"in={re_pb2.GetActionResultRequest(instance_name='team/linux', action_digest=action).ByteSize()}B"\
                in line
            assert "out=0B" in line and "ms " in line and "peer=ipv4:127.0.0.1:" in line
            assert "tool=bazel/7.4.1" in line and "invocation=inv-42" in line and f"action={action.hash}" in line
            assert not any(ln.startswith("INFO forged line") for ln in text.splitlines())
            caps = _last_request_line(text, "Capabilities/GetCapabilities")
            assert 'tool="evil\\nINFO forged line/7.4.1"' in caps and 'invocation="x y"' in caps
        else:
            records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
            assert records and all("time" in r and "level" in r for r in records)
            calls = [r for r in records if r.get("logger") == "granary.requests"]
            get_ar = [r for r in calls if r["method"] == "GetActionResult"][-1]
            assert get_ar["service"] == f"{RE}.ActionCache"
            assert get_ar["instance"] == "team/linux" and get_ar["code"] == "NOT_FOUND"
            assert get_ar["tool_name"] == "bazel" and get_ar["tool_version"] == "7.4.1"
            assert get_ar["invocation_id"] == "inv-42" and get_ar["action_id"] == action.hash
            assert get_ar["action_mnemonic"] == "Genrule"
            assert get_ar["bytes_out"] == 0 and get_ar["bytes_in"] > 0 and get_ar["duration_ms"] > 0
            caps = [r for r in calls if r["method"] == "GetCapabilities"][-1]
            assert caps["tool_name"] == "evil\nINFO forged line" and caps["code"] == "OK"
    finally:
        server.stop()


def test_no_request_lines_below_info(tmp_path):
    server = start_granary(tmp_path, CACHE)
    try:
        with grpc.insecure_channel(server.address) as ch:
            re_grpc.CapabilitiesStub(ch).GetCapabilities(re_pb2.GetCapabilitiesRequest(), timeout=30)
        m = scrape_until(http_url(server), lambda m: m.total("granary_grpc_requests_total", method="GetCapabilities"))
        assert m.total("granary_grpc_requests_total", method="GetCapabilities") == 1
        assert "granary.requests" not in server.log.read_text()
    finally:
        server.stop()


def test_http_port_off(tmp_path):
    server = start_granary(tmp_path, CACHE + "http: {enabled: false}\n", "--log-level", "info")
    try:
        with grpc.insecure_channel(server.address) as ch:
            status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10).status
            assert status == health_pb2.HealthCheckResponse.SERVING  # the gRPC side stays
        time.sleep(0.3)
        text = server.log.read_text()
        assert "metrics on" not in text
        assert "Health/Check" in text  # request logs do not need the HTTP port
        assert not (server.data_dir / "run").exists() or not any((server.data_dir / "run").iterdir())
    finally:
        server.stop()


def test_http_listen_set_explicitly_and_its_port_taken(tmp_path):
    import socket

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    taken = holder.getsockname()[1]
    try:
        from test_auth_serve import granary

        config = tmp_path / "g.yaml"
        config.write_text(CACHE + f"http: {{listen: '127.0.0.1:{taken}'}}\n")
        done = granary("serve", "--listen", "127.0.0.1:0", "--config", str(config), "--data-dir", str(tmp_path / "d"))
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith(f"granary: configuration error: http.listen: cannot listen on 127.0.0.1:{taken}")
        assert done.stderr.count("\n") == 1
    finally:
        holder.close()
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    server = start_granary(tmp_path / "ok", CACHE + f"http: {{listen: '127.0.0.1:{port}'}}\n")
    try:
        assert http_url(server) == f"http://127.0.0.1:{port}"
        assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
    finally:
        server.stop()


def test_http_beyond_loopback_needs_auth_like_grpc(tmp_path):
    from test_auth_serve import granary

    config = tmp_path / "g.yaml"
    config.write_text(CACHE + "http: {listen: '0.0.0.0:0'}\n")
    done = granary("serve", "--listen", "127.0.0.1:0", "--config", str(config), "--data-dir", str(tmp_path / "d"))
    assert done.returncode == 2
    assert done.stderr == ("granary: configuration error: http.listen: 0.0.0.0 is reachable from other hosts but no"
                           " authentication is configured (auth:); configure auth, listen on 127.0.0.1, or pass"
                           " --allow-unauthenticated-network-access\n")


def test_with_auth_health_is_public_reflection_and_metrics_need_credentials(tmp_path):
    data = tmp_path / "granary-data"
    data.mkdir()
    (data / "htpasswd").write_text(f"alice:{bcrypt.hashpw(b'secret', bcrypt.gensalt(rounds=4)).decode()}\n")
    config = CACHE + """
auth:
  htpasswd: htpasswd
  rules: [{identities: [alice], permissions: [cache-read]}]
"""
    server = start_granary(tmp_path, config)
    alice = ("authorization", "Basic YWxpY2U6c2VjcmV0")  # alice:secret
    try:
        base = http_url(server)
        assert get(f"{base}/healthz")[0] == 200
        assert get(f"{base}/readyz")[0] == 200
        status, body, headers = get(f"{base}/metrics")
        assert status == 401 and "needs credentials" in body and headers["WWW-Authenticate"].startswith("Basic")
        assert get(f"{base}/metrics", {"Authorization": "Basic YWxpY2U6d3Jvbmc="})[0] == 401  # alice:wrong
        assert get(f"{base}/metrics", {"Authorization": alice[1]})[0] == 200
        with grpc.insecure_channel(server.address) as ch:
            status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10).status
            assert status == health_pb2.HealthCheckResponse.SERVING
            stub = reflection_pb2_grpc.ServerReflectionStub(ch)
            ask = reflection_pb2.ServerReflectionRequest(list_services="")
            with pytest.raises(grpc.RpcError) as refused:
                next(stub.ServerReflectionInfo(iter([ask]), timeout=30))
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            reply = next(stub.ServerReflectionInfo(iter([ask]), metadata=[alice], timeout=30))
            assert f"{RE}.ActionCache" in {s.name for s in reply.list_services_response.service}
        m = scrape_until(base, lambda m: m.total("granary_grpc_requests_total", method="ServerReflectionInfo") == 2,
                         {"Authorization": alice[1]})
        assert m.total("granary_grpc_requests_total", method="ServerReflectionInfo", code="UNAUTHENTICATED") == 1
    finally:
        server.stop()
    public = tmp_path / "public"
    public.mkdir()
    (public / "granary-data").mkdir()
    (public / "granary-data" / "htpasswd").write_text((data / "htpasswd").read_text())
    server = start_granary(public, config + "http: {metrics_public: true}\n")
    try:
        assert get(f"{http_url(server)}/metrics")[0] == 200
    finally:
        server.stop()


def test_evictions_and_lost_workers_are_counted(tmp_path):
    config = """
storage: {main: {type: disk, path: cas, max_size: 64KiB, pack_max_blob: 1KiB}}
action_caches: {main: {type: disk, path: ac}}
instances: {"": {cas: main, action_cache: main}}
execution: {local_workers: 0, bot_timeout: 2s, bot_long_poll: 1s, lease_ack_timeout: 2s}
"""
    server = start_granary(tmp_path, config)
    try:
        base = http_url(server)
        bot = FakeBot(server.address)
        bot.connect()  # and then never heard from again
        client = ExecClient(server.address)
        blobs = [f"{i:04d}".encode() * 2048 for i in range(20)]  # 8 KiB files, 160 KiB in all
        for blob in blobs:
            client.upload(blob)
        client.close()
        bot.close()
        m = scrape_until(base, lambda m: m.total("granary_workers_lost_total") >= 1
                         and m.total("granary_cas_written_blobs_total") == len(blobs))
        assert m.total("granary_workers_lost_total") == 1
        assert m.total("granary_cas_evictions_total", store="main") >= 1
        evicted = m.total("granary_cas_evicted_blobs_total", store="main")
        stored = m.total("granary_cas_stored_blobs", store="main")
        assert evicted >= 1 and evicted + stored == len(blobs), (evicted, stored)
        assert m.total("granary_cas_evicted_bytes_total", store="main") == 8192 * evicted
        assert m.total("granary_cas_stored_bytes", store="main") <= 64 << 10
    finally:
        server.stop()


def test_instance_of_bytestream_names_log_streams_included():
    """ByteStream calls are labelled with the instance their resource name holds: blobs, compressed
    blobs, uploads and live log streams (a stream's name is read before its writer's token)."""
    from types import SimpleNamespace

    from granary.observability.interceptor import INVALID, instance_reader

    read = instance_reader("/google.bytestream.ByteStream/Read")
    write = instance_reader("/google.bytestream.ByteStream/Write")

    def named(name: str) -> SimpleNamespace:
        return SimpleNamespace(resource_name=name)

    h = "a" * 64
    assert read(named(f"blobs/{h}/3")) == ""
    assert read(named(f"main/ci/blobs/{h}/3")) == "main/ci"
    assert read(named(f"main/compressed-blobs/zstd/{h}/3")) == "main"
    assert read(named("main/logstreams/0f3a")) == "main"
    assert read(named("logstreams/0f3a")) == ""
    assert write(named(f"main/uploads/u1/blobs/{h}/3")) == "main"
    assert write(named("main/logstreams/0f3a/secret")) == "main"
    assert write(named("logstreams/0f3a/secret")) == ""
    assert read(named("nonsense")) == INVALID
