"""How many calls one remotely executed action costs the server, counted by its own metrics.

On a small machine a remote build's time is decided by the server's per-call work (grpcio's
machinery costs about half a millisecond of CPU per call whatever the handler does), so the
worker's share of calls per action is a budget. These tests hold it, in calls, never in time:

* inputs: one GetTree for the whole input tree (not one BatchReadBlobs per level) and one
  BatchReadBlobs for the Command and the input files;
* outputs: small outputs in one BatchUpdateBlobs, without a FindMissingBlobs first;
* the Bots conversation: the acknowledgement of a lease is the bot's long poll, so a lease costs
  two UpdateBotSession calls (acknowledge, report), not three or four.
"""

from __future__ import annotations

import uuid

import grpc
from obsutil import http_url, settled
from reapi import Client, digest
from serverutil import start_granary

from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc

CONFIG = """
storage:
  main: {type: disk, path: cas}
action_caches:
  main: {type: disk, path: ac}
execution:
  local_workers: 1
instances:
  "*": {cas: main, action_cache: main}
"""
ACTIONS = 12
CALLS = "granary_grpc_requests_total"


def _tree(client: Client, depth: int, tag: str) -> re_pb2.Digest:
    """src/a/b/...: a chain of `depth` directories, new for each action, with a file at the bottom."""
    data = f"input {tag}\n".encode()
    client.upload(data)
    d = re_pb2.Directory(files=[re_pb2.FileNode(name="in.txt", digest=digest(data))])
    for i in reversed(range(depth)):
        blob = d.SerializeToString()
        client.upload(blob)
        d = re_pb2.Directory(directories=[re_pb2.DirectoryNode(name=f"d{i}", digest=digest(blob))])
    blob = d.SerializeToString()
    client.upload(blob)
    return digest(blob)


def _execute(client: Client, execution, tag: str) -> re_pb2.ExecuteResponse:
    path = "/".join(f"d{i}" for i in range(6)) + "/in.txt"
    cmd = re_pb2.Command(arguments=["sh", "-c", f"cat {path} > out.txt && echo {tag} >> out.txt"],
                         output_files=["out.txt"])
    cmd_blob = cmd.SerializeToString()
    client.upload(cmd_blob)
    action = re_pb2.Action(command_digest=digest(cmd_blob), input_root_digest=_tree(client, 6, tag))
    blob = action.SerializeToString()
    client.upload(blob)
    last = None
    for op in execution.Execute(re_pb2.ExecuteRequest(action_digest=digest(blob), skip_cache_lookup=True),
                                timeout=120):
        last = op
    assert last is not None and last.done, last
    resp = re_pb2.ExecuteResponse()
    last.response.Unpack(resp)
    return resp


def test_a_remotely_executed_action_costs_the_server_few_calls(tmp_path):
    with start_granary(tmp_path, CONFIG) as server:
        base = http_url(server)
        client = Client(server.address)
        try:
            execution = re_grpc.ExecutionStub(client.channel)
            _execute(client, execution, "warm-up")  # the worker's session and capabilities
            before = settled(base, (CALLS,))
            for i in range(ACTIONS):
                tag = f"{i}-{uuid.uuid4()}"
                resp = _execute(client, execution, tag)
                assert resp.status.code == grpc.StatusCode.OK.value[0] and resp.result.exit_code == 0, resp
                (out,) = resp.result.output_files
                assert client.bs_read(out.digest).endswith(f"{tag}\n".encode())
            after = settled(base, (CALLS,))
        finally:
            client.close()

    def calls(method: str, **labels: str) -> float:
        return after.total(CALLS, method=method, **labels) - before.total(CALLS, method=method, **labels)

    counts = {m: calls(m) for m in ("GetTree", "BatchReadBlobs", "FindMissingBlobs", "BatchUpdateBlobs",
                                    "UpdateBotSession", "Execute")}
    assert counts["Execute"] == ACTIONS, counts
    # the client above reads nothing in batches and asks FindMissingBlobs nothing: these are the worker's
    assert counts["GetTree"] == ACTIONS, counts
    assert counts["BatchReadBlobs"] <= 2 * ACTIONS, counts
    assert counts["FindMissingBlobs"] == 0, counts
    # the client uploads one blob per call: the file, six directories and the root, the Command and
    # the Action (10 per action); the worker sends its outputs in one
    assert counts["BatchUpdateBlobs"] - 10 * ACTIONS <= ACTIONS, counts
    # acknowledge (the long poll, cut short when the action ends) and report; a poll when the queue
    # was empty as the report was answered
    assert counts["UpdateBotSession"] <= 3 * ACTIONS + 2, counts
