"""Turning job and operation rows into google.longrunning Operations."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.longrunning import operations_pb2
from google.protobuf import timestamp_pb2
from google.rpc import code_pb2, status_pb2

from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from granary.execution.leases import pack

Stage = re_pb2.ExecutionStage
CACHE_CHECK = Stage.CACHE_CHECK
QUEUED = Stage.QUEUED
EXECUTING = Stage.EXECUTING
COMPLETED = Stage.COMPLETED
STAGE_NAMES = {name: value for name, value in Stage.Value.items()}  # "QUEUED" -> 2


def error_response(code: int, message: str) -> re_pb2.ExecuteResponse:
    return re_pb2.ExecuteResponse(status=status_pb2.Status(code=code, message=message))


def cancelled_response(message: str = "operation cancelled") -> re_pb2.ExecuteResponse:
    return error_response(code_pb2.CANCELLED, message)


def action_digest_proto(action_key: str) -> re_pb2.Digest:
    hash_, _, size = action_key.partition("/")
    return re_pb2.Digest(hash=hash_, size_bytes=int(size or 0))


def metadata(stage: int, action_digest: re_pb2.Digest, digest_function: int) -> re_pb2.ExecuteOperationMetadata:
    return re_pb2.ExecuteOperationMetadata(stage=stage, action_digest=action_digest, digest_function=digest_function)


def make_operation(
    name: str,
    meta: re_pb2.ExecuteOperationMetadata,
    response: re_pb2.ExecuteResponse | None = None,
) -> operations_pb2.Operation:
    op = operations_pb2.Operation(name=name, metadata=pack(meta), done=response is not None)
    if response is not None:
        op.response.CopyFrom(pack(response))
    return op


def render(op: Mapping[str, Any], job: Mapping[str, Any]) -> operations_pb2.Operation:
    """The Operation a client sees for one operation row and its job row."""
    digest = action_digest_proto(job["action_key"])
    if op["cancelled"]:
        return make_operation(op["name"], metadata(COMPLETED, digest, job["digest_function"]), cancelled_response())
    stage = job["stage"]
    response = None
    if stage == COMPLETED:
        response = re_pb2.ExecuteResponse()
        if job["response"]:
            response.ParseFromString(job["response"])
    meta = metadata(stage, digest, job["digest_function"])
    # the live output streams of its (last) run: the read names, never the write names the job row keeps
    meta.stdout_stream_name = stream_read_name(job.get("stdout_stream"))
    meta.stderr_stream_name = stream_read_name(job.get("stderr_stream"))
    return make_operation(op["name"], meta, response)


def stream_read_name(write_name: str | None) -> str:
    """A log stream's read name: its write name without the last segment (the writer's secret)."""
    return write_name.rsplit("/", 1)[0] if write_name else ""


def timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts
