"""A worker's first contact with its server: say what is wrong and retry until it answers."""

from __future__ import annotations

import sys
import threading

import grpc

from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc

NOT_ANSWERED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def reason(err: grpc.RpcError) -> str:
    """`connection refused` from gRPC's `failed to connect ...: Connection refused`."""
    details = (err.details() or "") if hasattr(err, "details") else ""
    last = details.rstrip().rsplit(": ", 1)[-1].strip() or err.code().name.lower()
    return last[:1].lower() + last[1:]


def wait_until_answered(channel: grpc.Channel, instance: str, label: str, stop: threading.Event,
                        call_timeout: float = 10.0, max_backoff: float = 5.0) -> bool:
    """Call the server until it answers (any reply but UNAVAILABLE counts); False when `stop` is set first.

    Each new reason it cannot be reached is printed once on stderr, as
    `granary: LABEL: REASON; retrying`.
    """
    stub = re_grpc.CapabilitiesStub(channel)
    backoff, said = 0.2, ""
    while not stop.is_set():
        try:
            stub.GetCapabilities(re_pb2.GetCapabilitiesRequest(instance_name=instance), timeout=call_timeout)
            return True
        except grpc.RpcError as e:
            if e.code() not in NOT_ANSWERED:
                return True  # it answered: the bot sessions deal with what it said
            why = reason(e)
            if why != said:
                print(f"granary: {label}: {why}; retrying", file=sys.stderr, flush=True)
                said = why
        stop.wait(backoff)
        backoff = min(max_backoff, backoff * 2)
    return False
