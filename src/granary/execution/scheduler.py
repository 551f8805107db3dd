"""Execute, WaitExecution and the Operations API on top of the job queue."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from google.longrunning import operations_pb2
from google.protobuf import duration_pb2
from google.rpc import code_pb2

from granary import digest as dg
from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from granary.config import ExecutionConfig
from granary.errors import FailedPrecondition, InvalidArgument, NotFound, Unimplemented
from granary.execution import platform
from granary.execution.inputs import load_action
from granary.execution.jobqueue import JobQueue
from granary.execution.notifier import Notifier
from granary.execution.operations import COMPLETED, QUEUED, error_response, render
from granary.execution.owners import EVERYONE, Caller
from granary.instance import Instance

log = logging.getLogger("granary.execution.scheduler")
EXECUTION_DIGEST_FUNCTIONS = (dg.SHA256,)  # workers infer the function from hash length
KEEPALIVE = 60.0  # re-send the current state on an idle stream this often


@dataclass
class ExecutionInstance:
    """What an instance needs to execute: the queue its jobs go to (one per CAS store)."""

    queue: str


def execution_capabilities(cfg: ExecutionConfig) -> re_pb2.ExecutionCapabilities:
    props = sorted({k for p in cfg.known_platforms for k, _ in p} | set(platform.CONVENTIONAL))
    return re_pb2.ExecutionCapabilities(
        digest_function=dg.SHA256,
        digest_functions=list(EXECUTION_DIGEST_FUNCTIONS),
        exec_enabled=True,
        execution_priority_capabilities=re_pb2.PriorityCapabilities(
            priorities=[re_pb2.PriorityCapabilities.PriorityRange(min_priority=-(2**31), max_priority=2**31 - 1)]
        ),
        supported_node_properties=props,
    )


def execution_of(inst: Instance) -> ExecutionInstance:
    ex = inst.extras.get("execution")
    if ex is None:
        raise Unimplemented(f"instance {inst.name!r} does not execute actions (execution is off)")
    return ex


def request_metadata(raw: bytes | None) -> re_pb2.RequestMetadata:
    md = re_pb2.RequestMetadata()
    if raw:
        try:
            md.ParseFromString(raw)
        except Exception:  # noqa: BLE001 - a bad header only loses the labels
            md = re_pb2.RequestMetadata()
    return md


class Scheduler:
    def __init__(self, cfg: ExecutionConfig, queue: JobQueue, notifier: Notifier):
        self.cfg = cfg
        self.queue = queue
        self.notifier = notifier
        self.started = time.time()
        self._known = [platform.Capabilities(p) for p in cfg.known_platforms]
        self._live: dict[str, tuple[float, list[platform.Capabilities]]] = {}
        self._grace_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task] = set()
        queue.set_platform_policy(self._known, cfg.platform_grace)

    # ---- Execute ------------------------------------------------------------

    async def execute(
        self, inst: Instance, request: re_pb2.ExecuteRequest, md: re_pb2.RequestMetadata,
        caller: Caller = EVERYONE,
    ) -> AsyncIterator[operations_pb2.Operation]:
        """`caller` owns the operation made (its identity is recorded on it and logged)."""
        ex = execution_of(inst)
        if not request.HasField("action_digest"):
            raise InvalidArgument("Execute needs an action_digest")
        action_digest = dg.from_proto(request.digest_function, request.action_digest)
        if action_digest.function not in EXECUTION_DIGEST_FUNCTIONS:
            raise InvalidArgument(
                f"digest function {dg.function_name(action_digest.function).upper()} is not supported for"
                " execution (use SHA256)"
            )
        prefix = f"{inst.name}/" if inst.name else ""
        op_name = f"{prefix}operations/{uuid.uuid4()}"
        log.info("Execute %s on instance %r by %s: operation %s", action_digest, inst.name,
                 caller.shown or "(no authentication)", op_name)
        return self._execute(inst, ex, request, md, action_digest, op_name, action_digest.function, caller.name)

    async def _execute(
        self, inst: Instance, ex: ExecutionInstance, request: re_pb2.ExecuteRequest, md: re_pb2.RequestMetadata,
        action_digest: dg.BlobDigest, op_name: str, fn: int, owner: str,
    ) -> AsyncIterator[operations_pb2.Operation]:
        # Nothing is yielded before the operation is committed to the queue database: a client
        # may ask any server process about an operation name as soon as it has seen it.
        op = {"name": op_name, "instance": inst.name, "created_time": time.time(), "cancelled": False,
              "identity": owner, **_labels(md)}
        if not request.skip_cache_lookup and inst.action_cache is not None:
            try:
                cached = await inst.action_cache.get(
                    action_digest,
                    inline_stdout=request.inline_stdout,
                    inline_stderr=request.inline_stderr,
                    inline_output_files=request.inline_output_files,
                )
            except NotFound:
                cached = None
            if cached is not None:
                response = re_pb2.ExecuteResponse(result=cached, cached_result=True)
                yield await self._record_finished(ex.queue, inst.name, action_digest, op, response)
                return
        loaded = await load_action(inst.cas, action_digest)
        if loaded.missing:
            yield await self._record_finished(ex.queue, inst.name, action_digest, op,
                                              _missing_response(loaded.missing))
            return
        action, command = loaded.action, loaded.command
        assert action is not None and command is not None
        timeout = self._timeout(action)
        if not action.HasField("timeout") or action.timeout.ToNanoseconds() == 0:
            action.timeout.CopyFrom(duration_pb2.Duration(seconds=int(timeout), nanos=int(timeout % 1 * 1e9)))
        reqs = platform.requirements_of(action.platform, command.platform)
        on_grace = await self._check_platform(ex.queue, reqs)
        now = time.time()
        job_name = str(uuid.uuid4())
        do_not_cache = action.do_not_cache
        job = {
            "name": job_name, "queue": ex.queue, "instance": inst.name, "action_key": str(action_digest),
            "digest_function": fn, "action": action.SerializeToString(deterministic=True),
            "platform_key": platform.key_of(reqs), "priority": request.execution_policy.priority,
            "queued_time": now, "stage": QUEUED, "lease_state": 0, "timeout": timeout,
            "do_not_cache": do_not_cache, "retries": 0, "version": 0,
            "active_key": None if do_not_cache else _merge_key(ex.queue, inst.name, action_digest),
        }
        row, merged = await self.queue.run(self.queue.enqueue, job, op)
        if on_grace:
            self._check_when_grace_ends()
        if not merged:
            self.notifier.queue_changed(ex.queue)
        else:
            self.notifier.job_changed(row["name"])
        async for operation in self.follow(op_name, row["name"]):
            yield operation

    async def _record_finished(
        self, queue: str, instance: str, action_digest: dg.BlobDigest, op: dict[str, Any],
        response: re_pb2.ExecuteResponse,
    ) -> operations_pb2.Operation:
        """Store an operation answered without running anything (cache hit, missing inputs)."""
        now = time.time()
        job = {
            "name": str(uuid.uuid4()), "queue": queue, "instance": instance, "action_key": str(action_digest),
            "digest_function": action_digest.function, "action": b"", "platform_key": platform.key_of(()),
            "priority": 0, "queued_time": now, "stage": COMPLETED, "lease_state": 0, "timeout": 0.0,
            "do_not_cache": True, "retries": 0, "version": 0, "active_key": None, "completed_time": now,
            "response": response.SerializeToString(),
        }
        row, _ = await self.queue.run(self.queue.enqueue, job, op)
        return render(op, row)

    def _timeout(self, action: re_pb2.Action) -> float:
        requested = action.timeout.ToNanoseconds() / 1e9 if action.HasField("timeout") else 0.0
        if requested < 0:
            raise InvalidArgument(f"action timeout {requested:g}s is negative")
        if requested > self.cfg.max_timeout:
            raise InvalidArgument(
                f"action timeout {requested:g}s is above this server's maximum of {self.cfg.max_timeout:g}s"
            )
        return requested or self.cfg.default_timeout

    async def _check_platform(self, queue: str, reqs: platform.Requirements) -> bool:
        """Refuse what nothing could run; -> True if accepted only because bots may still connect."""
        offers = list(self._known)
        offers += await self._live_offers(queue)
        reason = platform.unsatisfied_reason(reqs, offers)
        if reason is None:
            return False
        if time.time() - self.started < self.cfg.platform_grace:
            return True
        raise FailedPrecondition(f"cannot execute this action: {reason}")

    def _check_when_grace_ends(self) -> None:
        """Fail what is still unsatisfiable the moment the grace ends (the reaper also checks)."""
        if self._grace_timer is not None:
            return
        loop = asyncio.get_running_loop()

        async def check() -> None:
            try:
                await self.fail_unsatisfiable()
            except Exception:
                log.exception("checking queued jobs against the connected workers failed")

        def fire() -> None:
            self._grace_timer = None
            task = loop.create_task(check())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        delay = self.started + self.cfg.platform_grace - time.time()
        self._grace_timer = loop.call_later(max(0.0, delay), fire)

    async def fail_unsatisfiable(self) -> list[str]:
        """Fail queued jobs that no live bot and no known platform could run."""
        now = time.time()
        failed = await self.queue.run(self.queue.fail_unsatisfiable, self._known, now - self.cfg.bot_timeout, now)
        if failed:
            self.notifier.job_changed(*failed)
        return failed

    async def _live_offers(self, queue: str) -> list[platform.Capabilities]:
        now = time.monotonic()
        cached = self._live.get(queue)
        if cached is not None and now - cached[0] < 1.0:
            return cached[1]
        since = time.time() - self.cfg.bot_timeout
        props = await self.queue.run(self.queue.live_bot_properties, queue, since)
        offers = [platform.Capabilities(p) for p in props]
        self._live[queue] = (now, offers)
        return offers

    def forget_live_offers(self) -> None:
        self._live.clear()

    # ---- following an operation ---------------------------------------------

    async def follow(
        self, op_name: str, job_name: str | None = None, caller: Caller = EVERYONE
    ) -> AsyncIterator[operations_pb2.Operation]:
        """Stream an operation's state: once now, then on every stage change until done."""
        last: tuple[int, bool] | None = None
        idle = 0.0
        while True:
            with self.notifier.subscribe([job_name] if job_name else []) as sub:
                found = await self.queue.read(self.queue.get_operation, op_name)
                if found is None:
                    raise NotFound(f"operation {op_name!r} not found (finished long ago, deleted or never made)")
                op_row, job_row = found
                if job_name is None:
                    caller.check(op_row["instance"], op_row["identity"], op_name)
                    job_name = job_row["name"]
                    continue  # subscribe to the job before deciding we are up to date
                operation = render(op_row, job_row)
                state = (job_row["stage"], operation.done)
                if state != last or idle >= KEEPALIVE:
                    yield operation
                    last, idle = state, 0.0
                if operation.done:
                    return
                started = time.monotonic()
                await sub.wait(KEEPALIVE)
                idle += time.monotonic() - started

    # ---- Operations API -----------------------------------------------------

    async def operation_rows(self, name: str, caller: Caller = EVERYONE) -> tuple[Any, Any]:
        """(operation row, job row) of an operation the caller may see (GetOperation's check);
        the dashboard shows the rows in full."""
        found = await self.queue.read(self.queue.get_operation, name)
        if found is None:
            raise NotFound(f"operation {name!r} not found")
        caller.check(found[0]["instance"], found[0]["identity"], name)
        return found

    async def get_operation(self, name: str, caller: Caller = EVERYONE) -> operations_pb2.Operation:
        return render(*await self.operation_rows(name, caller))

    async def list_operation_rows(
        self, instance: str, filter_text: str, page_size: int, page_token: str, caller: Caller = EVERYONE
    ) -> tuple[list[tuple[Any, Any]], str]:
        """The (operation, job) rows of a ListOperations page and the next page token: what
        ListOperations renders and the dashboard shows (one filter, sort and paging for both)."""
        if page_size < 0:
            raise InvalidArgument(f"page_size {page_size} is negative")
        owner = None if caller.sees_all(instance) else caller.name
        return await self.queue.run(self.queue.list_operations, instance, filter_text, page_size, page_token, owner)

    async def list_operations(
        self, instance: str, filter_text: str, page_size: int, page_token: str, caller: Caller = EVERYONE
    ) -> operations_pb2.ListOperationsResponse:
        """The caller's operations on `instance`, everyone's when it may see them all (admin)."""
        rows, token = await self.list_operation_rows(instance, filter_text, page_size, page_token, caller)
        return operations_pb2.ListOperationsResponse(
            operations=[render(op, job) for op, job in rows], next_page_token=token
        )

    async def cancel_operation(self, name: str, caller: Caller = EVERYONE) -> None:
        await self.operation_rows(name, caller)
        job_name, _bot = await self.queue.run(self.queue.cancel_operation, name, time.time())
        self.notifier.job_changed(job_name)

    async def delete_operation(self, name: str, caller: Caller = EVERYONE) -> None:
        await self.operation_rows(name, caller)
        await self.queue.run(self.queue.delete_operation, name)


def _merge_key(queue: str, instance: str, action: dg.BlobDigest) -> str:
    """Identical in-flight actions share a job: same queue, instance, action digest and function."""
    raw = "\x00".join((queue, instance, action.key, str(action.size), str(action.function)))
    return hashlib.sha256(raw.encode()).hexdigest()


def _labels(md: re_pb2.RequestMetadata) -> dict[str, Any]:
    return {
        "tool_name": md.tool_details.tool_name[:255],
        "tool_version": md.tool_details.tool_version[:255],
        "invocation_id": md.tool_invocation_id[:255],
        "correlated_invocations_id": md.correlated_invocations_id[:255],
        "action_mnemonic": md.action_mnemonic[:255],
        "target_id": md.target_id,
        "configuration_id": md.configuration_id[:255],
    }


def _missing_response(missing: list[dg.BlobDigest]) -> re_pb2.ExecuteResponse:
    from granary.services.status import rich_status

    unique = list(dict.fromkeys(missing))
    err = FailedPrecondition(
        f"{len(unique)} input blob(s) missing from the CAS, e.g. {unique[0]}",
        [("MISSING", f"blobs/{d.hash}/{d.size}", "") for d in unique],
    )
    response = error_response(code_pb2.FAILED_PRECONDITION, err.message)
    response.status.CopyFrom(rich_status(err))
    return response

