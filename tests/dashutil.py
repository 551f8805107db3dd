"""Helpers of the dashboard tests: real actions run through a server's Execution API (its local workers
run them), clients that send credentials, and JSON over HTTP."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from typing import Any

import grpc
from google.longrunning import operations_pb2_grpc
from reapi import digest
from rwapi import METADATA_HEADER, ExecClient

from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from granary._proto.google.bytestream import bytestream_pb2_grpc as bs_grpc

CONFIG = """
storage: {main: {type: disk, path: cas}}
action_caches: {main: {type: disk, path: ac}}
instances: {"": {cas: main, action_cache: main}, "team/linux": {cas: main, action_cache: main}}
execution: {local_workers: 2, known_platforms: [], platform_grace: 60s, bot_long_poll: 1}
"""


class _Header(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
              grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    def __init__(self, header: tuple[str, str]):
        self.header = header

    def _add(self, details):
        md = list(details.metadata or []) + [self.header]
        return details._replace(metadata=md) if hasattr(details, "_replace") else _Details(details, md)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._add(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._add(details), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(self._add(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._add(details), requests)


class _Details(grpc.ClientCallDetails):
    def __init__(self, d, metadata):
        self.method, self.timeout, self.metadata = d.method, d.timeout, metadata
        self.credentials, self.wait_for_ready, self.compression = d.credentials, d.wait_for_ready, d.compression


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def client(address: str, instance: str = "", authorization: str | None = None) -> ExecClient:
    """An ExecClient whose every call carries `authorization` (when given)."""
    c = ExecClient(address, instance)
    if authorization is not None:
        channel = grpc.intercept_channel(c.channel, _Header(("authorization", authorization)))
        c.cas = re_grpc.ContentAddressableStorageStub(channel)
        c.ac = re_grpc.ActionCacheStub(channel)
        c.bs = bs_grpc.ByteStreamStub(channel)
        c.exec = re_grpc.ExecutionStub(channel)
        c.ops = operations_pb2_grpc.OperationsStub(channel)
    return c


def run(c: ExecClient, script: str, *, outputs: tuple[str, ...] = ("out",), files: dict[str, bytes] | None = None,
        env: dict[str, str] | None = None, tool: str = "dash-test", invocation: str = "inv", skip_cache: bool = True,
        do_not_cache: bool = False) -> tuple[str, re_pb2.ExecuteResponse, re_pb2.Digest, re_pb2.Directory]:
    """Run `sh -c script` with `files` in its input root; -> (operation name, response, action digest, input root)."""
    command = re_pb2.Command(arguments=["sh", "-c", script], output_paths=list(outputs))
    for k, v in sorted((env or {}).items()):
        command.environment_variables.add(name=k, value=v)
    root = re_pb2.Directory()
    blobs = []
    for name, data in sorted((files or {}).items()):
        root.files.add(name=name, digest=digest(data), is_executable=name.endswith(".sh"))
        blobs.append(data)
    cmd, rt = command.SerializeToString(), root.SerializeToString()
    action = re_pb2.Action(command_digest=digest(cmd), input_root_digest=digest(rt), do_not_cache=do_not_cache)
    action.timeout.FromSeconds(120)
    act = action.SerializeToString()
    c.upload(cmd, rt, act, *blobs)
    md = re_pb2.RequestMetadata(tool_details=re_pb2.ToolDetails(tool_name=tool, tool_version="1.0"),
                                tool_invocation_id=invocation, action_mnemonic="Genrule")
    request = re_pb2.ExecuteRequest(instance_name=c.instance, action_digest=digest(act), skip_cache_lookup=skip_cache)
    ops = list(c.exec.Execute(request, metadata=[(METADATA_HEADER, md.SerializeToString())], timeout=120))
    response = re_pb2.ExecuteResponse()
    assert ops[-1].done and ops[-1].response.Unpack(response), ops[-1]
    return ops[-1].name, response, digest(act), root


def get_json(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
    """(status, parsed JSON body or text, headers)."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            status, raw, hdrs = r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        status, raw, hdrs = e.code, e.read(), dict(e.headers)
    try:
        return status, json.loads(raw), hdrs
    except ValueError:
        return status, raw.decode(errors="replace"), hdrs


def get_bytes(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)
