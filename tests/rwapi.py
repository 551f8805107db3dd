"""Test helpers for remote execution: a fake bot driven over the real Remote Workers API,
actions built and uploaded through the real CAS, and Execute streams read in threads."""

from __future__ import annotations

import threading
import time
import uuid

import grpc
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.rpc import code_pb2, status_pb2
from reapi import Client, digest

from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from granary._proto.google.devtools.remoteworkers.v1test2 import bots_pb2, bots_pb2_grpc
from granary.execution import leases

LINUX = (("OSFamily", "linux"), ("ISA", "x86-64"))
METADATA_HEADER = "build.bazel.remote.execution.v2.requestmetadata-bin"


class FakeBot:
    """A bot that does what the test tells it, over real gRPC."""

    def __init__(self, address: str, instance: str = "", properties=LINUX, concurrency: int = 1, bot_id: str = ""):
        self.channel = grpc.insecure_channel(address)
        self.stub = bots_pb2_grpc.BotsStub(self.channel)
        self.instance = instance
        self.properties = list(properties)
        self.concurrency = concurrency
        self.bot_id = bot_id or f"fake-{uuid.uuid4().hex[:8]}"
        self.name = ""
        self.leases: dict[str, bots_pb2.Lease] = {}

    def close(self) -> None:
        self.channel.close()

    def _session(self) -> bots_pb2.BotSession:
        return bots_pb2.BotSession(
            name=self.name, bot_id=self.bot_id, status=bots_pb2.BotStatus.OK,
            worker=leases.make_worker(self.properties, self.concurrency),
            leases=list(self.leases.values()),
        )

    def connect(self, timeout: float = 10) -> bots_pb2.BotSession:
        reply = self.stub.CreateBotSession(
            bots_pb2.CreateBotSessionRequest(parent=self.instance, bot_session=self._session()), timeout=timeout
        )
        self.name = reply.name
        self._take(reply)
        return reply

    def update(self, timeout: float = 10) -> bots_pb2.BotSession:
        reply = self.stub.UpdateBotSession(
            bots_pb2.UpdateBotSessionRequest(name=self.name, bot_session=self._session()), timeout=timeout
        )
        self._take(reply)
        return reply

    def _take(self, reply: bots_pb2.BotSession) -> None:
        fresh = {}
        for lease in reply.leases:
            mine = self.leases.get(lease.id)
            if lease.state == leases.CANCELLED:
                fresh[lease.id] = lease
            elif mine is not None and mine.state == leases.ACTIVE and lease.state == leases.PENDING:
                fresh[lease.id] = mine  # we already run it
            else:
                fresh[lease.id] = lease
        self.leases = fresh

    def pending(self) -> list[bots_pb2.Lease]:
        return [lease for lease in self.leases.values() if lease.state == leases.PENDING]

    def wait_lease(self, timeout: float = 30) -> bots_pb2.Lease:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            waiting = self.pending()
            if waiting:
                return waiting[0]
            self.update()
        raise AssertionError(f"bot {self.bot_id} got no lease in {timeout}s")

    def accept(self, lease_id: str) -> None:
        self.leases[lease_id].state = leases.ACTIVE
        self.update()

    def complete(self, lease_id: str, result: re_pb2.ActionResult | None, code: int = code_pb2.OK) -> None:
        lease = self.leases[lease_id]
        leases.complete_lease(lease, result, status_pb2.Status(code=code, message="" if code == 0 else "failed"))
        self.update()

    def run(self, exit_code: int = 0, stdout: bytes = b"") -> str:
        """Take one lease, accept it, finish it with exit_code; returns the lease id."""
        lease = self.wait_lease()
        self.accept(lease.id)
        result = re_pb2.ActionResult(exit_code=exit_code, stdout_raw=stdout)
        self.complete(lease.id, result)
        return lease.id


class ExecClient(Client):
    def __init__(self, address: str, instance: str = ""):
        super().__init__(address, instance)
        self.exec = re_grpc.ExecutionStub(self.channel)
        self.ops = operations_pb2_grpc.OperationsStub(self.channel)

    def action(
        self,
        argv: list[str],
        *,
        platform=(),
        command_platform=(),
        timeout: float | None = None,
        do_not_cache: bool = False,
        files: dict[str, bytes] | None = None,
        upload: bool = True,
    ) -> tuple[re_pb2.Digest, dict[str, bytes]]:
        """Build an Action (and its Command and input root); returns its digest and every blob."""
        blobs: dict[str, bytes] = {}

        def add(data: bytes) -> re_pb2.Digest:
            d = digest(data)
            blobs[d.hash] = data
            return d

        command = re_pb2.Command(arguments=argv, output_files=["out"])
        for k, v in command_platform:
            command.platform.properties.add(name=k, value=v)
        root = re_pb2.Directory()
        for name, data in sorted((files or {}).items()):
            root.files.add(name=name, digest=add(data))
        action = re_pb2.Action(command_digest=add(command.SerializeToString()),
                               input_root_digest=add(root.SerializeToString()), do_not_cache=do_not_cache)
        for k, v in platform:
            action.platform.properties.add(name=k, value=v)
        if timeout is not None:
            action.timeout.FromNanoseconds(int(timeout * 1e9))
        d = add(action.SerializeToString())
        if upload:
            self.upload(*blobs.values())
        return d, blobs

    def execute(self, action_digest: re_pb2.Digest, *, skip_cache: bool = False, priority: int = 0,
                tool: str = "", invocation: str = "", correlated: str = "", timeout: float = 60):
        md = re_pb2.RequestMetadata(
            tool_details=re_pb2.ToolDetails(tool_name=tool, tool_version="1.0" if tool else ""),
            tool_invocation_id=invocation, correlated_invocations_id=correlated,
        )
        request = re_pb2.ExecuteRequest(
            instance_name=self.instance, action_digest=action_digest, skip_cache_lookup=skip_cache,
            execution_policy=re_pb2.ExecutionPolicy(priority=priority),
        )
        return self.exec.Execute(request, metadata=[(METADATA_HEADER, md.SerializeToString())], timeout=timeout)

    def wait(self, name: str, timeout: float = 60):
        return self.exec.WaitExecution(re_pb2.WaitExecutionRequest(name=name), timeout=timeout)


class Stream:
    """Reads an Operation stream in a thread; `ops` grows as updates arrive."""

    def __init__(self, call):
        self.call = call
        self.ops: list[operations_pb2.Operation] = []
        self.error: grpc.RpcError | None = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for op in self.call:
                self.ops.append(op)
        except grpc.RpcError as e:
            self.error = e

    def wait_stage(self, stage: int, timeout: float = 30) -> operations_pb2.Operation:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for op in self.ops:
                if stage_of(op) == stage:
                    return op
            if self.error is not None:
                raise self.error
            time.sleep(0.02)
        raise AssertionError(f"no operation reached stage {stage}: {[stage_of(o) for o in self.ops]}")

    @property
    def name(self) -> str:
        self.wait_first()
        return self.ops[0].name

    def wait_first(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not self.ops and time.monotonic() < deadline:
            if self.error is not None:
                raise self.error
            time.sleep(0.02)
        assert self.ops, "no operation arrived"

    def result(self, timeout: float = 60) -> re_pb2.ExecuteResponse:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the Execute stream did not finish"
        if self.error is not None:
            raise self.error
        assert self.ops and self.ops[-1].done, [str(o) for o in self.ops]
        return response_of(self.ops[-1])


def stage_of(op: operations_pb2.Operation) -> int:
    meta = re_pb2.ExecuteOperationMetadata()
    op.metadata.Unpack(meta)
    return meta.stage


def response_of(op: operations_pb2.Operation) -> re_pb2.ExecuteResponse:
    response = re_pb2.ExecuteResponse()
    assert op.response.Unpack(response)
    return response


def final(call) -> re_pb2.ExecuteResponse:
    ops = list(call)
    assert ops[-1].done
    return response_of(ops[-1])
