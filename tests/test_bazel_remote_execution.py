"""End-to-end: a real Bazel (4.2.3 here) executes remotely on Granary (issue 3).

The workspace tests/workspaces/bazel_basic (genrules with one and several
outputs, chained genrules, a Starlark rule with a tree-artifact output,
cc_library/cc_binary/cc_test, sh_test, py_binary/py_test) is built and tested
three times, each in its own copy and Bazel state:

1. locally, with no remote at all: the reference outputs;
2. against a fresh `granary serve` (default config: execution on, local
   `granary worker` processes) with --remote_executor and strategies that
   forbid local execution: every non-internal process must be `remote`, the
   outputs byte-identical to the local build, the three tests passed remotely;
3. after `bazel clean`, again against the same server: every non-internal
   process must be a `remote cache hit`.

The server's google.longrunning Operations service must then list one
COMPLETED operation per remotely executed action, labelled with the
tool_name "bazel" that Bazel sent in its RequestMetadata header.

The Bazel runs are done once, in a module-scoped fixture; the tests below
check one property each.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from bazelutil import BazelResult, BazelWorkspace, bazel_version, copy_workspace, have_bazel
from google.longrunning import operations_pb2, operations_pb2_grpc
from serverutil import GranaryProcess, start_granary

from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2

pytestmark = [
    pytest.mark.bazel,
    pytest.mark.skipif(not have_bazel(), reason="bazel is not on PATH"),
    pytest.mark.timeout(1800),
]

WORKSPACE = "bazel_basic"
TARGETS = ("//...",)
TESTS = ("//cc:greet_test", "//pyapp:hello_py_test", "//sh:outputs_test")

# Process kinds Bazel reports for spawns that ran on this machine.
LOCAL_KINDS = ("linux-sandbox", "processwrapper-sandbox", "local", "worker", "sandbox", "standalone")

# What Bazel prints when a remote call failed but the build went on (or fell back).
REMOTE_WARNINGS = (
    "Reading from Remote Cache",
    "Writing to Remote Cache",
    "Failed to query remote execution capabilities",
    "falling back to local execution",
    "Remote execution failed",
)

# Everything the MakeTree action writes into tree/tree_out (see tree/defs.bzl,
# count = 7, and the copy of //gen:hello), with its contents. Bazel 4.2.3 leaves
# every output file executable (0555), locally and remotely alike, so the
# executable bit is compared with the local build but not checked per file.
TREE_CONTENTS = {
    "hello.txt": b"hello from granary\n",
    "sub/deeper/leaf.txt": b"deep\n",
    "other/keep.txt": b"keep\n",
    "run.sh": b"#!/bin/sh\necho tree-exec\n",
    **{f"sub/f{i}.txt": f"file {i}\n".encode() for i in range(7)},
}


def remote_exec_flags(address: str) -> list[str]:
    """Flags that send every spawn to Granary and forbid running one locally."""
    return [
        f"--remote_executor=grpc://{address}",
        "--remote_timeout=60",
        "--spawn_strategy=remote",
        "--genrule_strategy=remote",
        "--strategy=TestRunner=remote",
        "--remote_local_fallback=false",
    ]


@dataclass
class Run:
    result: BazelResult
    seconds: float
    outputs: dict[str, str] = field(default_factory=dict)


@dataclass
class Session:
    server: GranaryProcess
    local: Run
    cold: Run
    warm: Run
    ops_after_cold: list[operations_pb2.Operation]

    def server_log(self) -> str:
        try:
            return self.server.log.read_text(errors="replace")[-4000:]
        except OSError:
            return "<no server log>"


def _timed(ws: BazelWorkspace, *args: str) -> Run:
    started = time.monotonic()
    result = ws.test(*args)
    seconds = time.monotonic() - started
    return Run(result, seconds, ws.output_hashes())


def list_operations(address: str, filter_text: str, instance: str = "", page_size: int = 7):
    """Every operation ListOperations returns for filter_text, following next_page_token."""
    ops: list[operations_pb2.Operation] = []
    token = ""
    with grpc.insecure_channel(address) as channel:
        stub = operations_pb2_grpc.OperationsStub(channel)
        for _ in range(1000):
            resp = stub.ListOperations(
                operations_pb2.ListOperationsRequest(
                    name=instance, filter=filter_text, page_size=page_size, page_token=token
                ),
                timeout=30,
            )
            ops.extend(resp.operations)
            token = resp.next_page_token
            if not token:
                return ops
    raise AssertionError(f"ListOperations({filter_text!r}) never stopped paging")


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> Iterator[Session]:
    base: Path = tmp_path_factory.mktemp("bazel-remote-exec")
    print(f"\n{bazel_version()}")

    # 1. The reference: a purely local build+test in its own copy and state.
    local_ws = copy_workspace(WORKSPACE, base / "local")
    local = _timed(local_ws, *TARGETS)

    # 2. Remote execution against a fresh server, in a fresh copy and state.
    server = start_granary(base / "server", processes=None)  # the defaults: one process per core
    try:
        ws = copy_workspace(WORKSPACE, base / "remote")
        flags = remote_exec_flags(server.address)
        cold = _timed(ws, *TARGETS, *flags)
        ops_after_cold = list_operations(server.address, "stage = COMPLETED")

        # 3. Throw the local outputs away and do it again: all from the cache.
        ws.clean()
        warm = _timed(ws, *TARGETS, *flags)

        for name, run in (("local", local), ("remote", cold), ("remote after clean", warm)):
            print(f"{name}: {run.seconds:.1f}s summary={run.result.summary}")
        yield Session(server, local, cold, warm, ops_after_cold)
    finally:
        server.stop()


def _no_remote_warnings(run: Run, s: Session) -> None:
    for w in REMOTE_WARNINGS:
        assert w not in run.result.output, (
            f"Bazel warned: {w!r}\n{run.result.describe()}\n--- server log ---\n{s.server_log()}"
        )


def test_local_reference_build(session):
    local = session.local.result
    assert local.summary is not None, local.describe()
    assert local.count("remote") == 0 and local.cache_hits == 0, local.describe()
    assert local.non_internal >= 15, local.describe()


def test_every_action_executes_remotely(session):
    cold = session.cold.result
    assert cold.summary is not None, cold.describe()
    _no_remote_warnings(session.cold, session)
    ran_here = {k: cold.count(k) for k in LOCAL_KINDS if cold.count(k)}
    assert not ran_here, f"processes ran locally: {ran_here}\n{cold.describe()}"
    assert set(cold.summary) <= {"total", "internal", "remote"}, cold.describe()
    # As many spawns as the local build ran, all of them on Granary's workers.
    assert cold.count("remote") == session.local.result.non_internal, (
        f"local {session.local.result.summary} vs remote {cold.summary}"
    )
    assert cold.count("remote") >= 15, cold.describe()


def test_remote_outputs_identical_to_local(session):
    local, remote = session.local.outputs, session.cold.outputs
    assert local, "no local outputs were hashed"
    missing = sorted(set(local) - set(remote))
    extra = sorted(set(remote) - set(local))
    changed = sorted(k for k in set(local) & set(remote) if local[k] != remote[k])
    assert not (missing or extra or changed), f"missing={missing} extra={extra} changed={changed}"


def test_tree_artifact_came_back_whole(session):
    prefix = "tree/tree_out/"
    tree = {k[len(prefix) :].rstrip("*"): v for k, v in session.cold.outputs.items() if k.startswith(prefix)}
    expected = {name: hashlib.sha256(data).hexdigest() for name, data in TREE_CONTENTS.items()}
    assert tree == expected, sorted(tree)
    # The action that listed the directory on a worker saw the same files.
    manifest = [k for k in session.cold.outputs if k.rstrip("*") == "tree/tree_out.manifest"]
    assert manifest, sorted(session.cold.outputs)
    assert session.cold.outputs[manifest[0]] == session.local.outputs.get(manifest[0])


def test_tests_passed_remotely(session):
    out = session.cold.result.output
    for target in TESTS:
        assert any(
            target in line and "PASSED" in line and "(cached)" not in line for line in out.splitlines()
        ), f"{target} did not pass (uncached):\n{session.cold.result.describe()}"
    assert "Executed 3 out of 3 tests: 3 tests pass." in out, session.cold.result.describe()


def test_clean_build_served_fully_from_cache(session):
    cold, warm = session.cold.result, session.warm.result
    assert warm.summary is not None, warm.describe()
    _no_remote_warnings(session.warm, session)
    assert set(warm.summary) <= {"total", "internal", "remote cache hit"}, warm.describe()
    assert warm.non_internal == cold.non_internal, f"cold {cold.summary} vs warm {warm.summary}"
    assert warm.count("remote cache hit") == warm.non_internal > 0, warm.describe()
    assert warm.hit_rate == 1.0, warm.describe()
    for target in TESTS:
        assert any(target in line and "(cached) PASSED" in line for line in warm.output.splitlines()), (
            f"{target} not a cached pass:\n{warm.describe()}"
        )
    # Served from the cache, the outputs are still those of the local build.
    assert session.warm.outputs == session.local.outputs


def _digest_of(op: operations_pb2.Operation) -> str:
    meta = re_pb2.ExecuteOperationMetadata()
    op.metadata.Unpack(meta)
    return f"{meta.action_digest.hash}/{meta.action_digest.size_bytes}"


def _status_of(op: operations_pb2.Operation) -> tuple[int, str]:
    resp = re_pb2.ExecuteResponse()
    op.response.Unpack(resp)
    return resp.status.code, resp.status.message


def test_list_operations_shows_bazel_actions(session):
    address = session.server.address
    remote = session.cold.result.count("remote")
    everything = session.ops_after_cold
    names = [op.name for op in everything]
    # An attempt that ended in an error Bazel retries (for instance inputs reported missing, which it
    # uploads again) is a COMPLETED operation of its own, and so is a second Execute answered from
    # the cache; each must be of an action that also has its one successful execution.
    done, retried = [], []
    for op in everything:
        resp = re_pb2.ExecuteResponse()
        op.response.Unpack(resp)
        (done if resp.status.code == 0 and not resp.cached_result else retried).append(op)
    described = [(op.name, _digest_of(op), _status_of(op)) for op in everything]
    if retried:
        print(f"attempts Bazel retried: {[d for d in described if d[2][0] != 0]}")
    assert len(done) == remote, (
        f"{len(done)} successful COMPLETED operations for {remote} remote processes: {described}\n"
        f"{session.server_log()}")
    assert {_digest_of(op) for op in retried} <= {_digest_of(op) for op in done}, described
    assert len(set(names)) == len(names), names
    for op in done:
        assert op.name.startswith("operations/"), op.name
        assert op.done, op
        meta = re_pb2.ExecuteOperationMetadata()
        assert op.metadata.Unpack(meta), op
        assert meta.stage == re_pb2.ExecutionStage.COMPLETED, op
        resp = re_pb2.ExecuteResponse()
        assert op.response.Unpack(resp), op
        assert resp.status.code == 0, (op.name, resp.status)
        assert not resp.cached_result, op.name
        assert resp.result.exit_code == 0, (op.name, resp.result)
        assert resp.result.execution_metadata.worker, (op.name, resp.result.execution_metadata)

    # Every one of them was labelled from Bazel's RequestMetadata header.
    by_tool = list_operations(address, "stage = COMPLETED & tool_name = bazel")
    assert sorted(op.name for op in by_tool) == sorted(names)
    assert list_operations(address, "tool_name != bazel") == []
    # The default filter (stage != COMPLETED) has nothing left in flight.
    assert list_operations(address, "") == []
    # The cache-served build after `bazel clean` executed nothing new.
    after_warm = list_operations(address, "stage = COMPLETED")
    assert sorted(op.name for op in after_warm) == sorted(names)
