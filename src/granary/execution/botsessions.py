"""The Remote Workers API side: bot sessions, leases offered, acknowledged, finished, revoked."""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Mapping
from typing import Any

from google.protobuf import timestamp_pb2
from google.rpc import code_pb2, status_pb2

from granary import digest as dg
from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from granary._proto.google.devtools.remoteworkers.v1test2 import bots_pb2
from granary.config import ExecutionConfig
from granary.errors import InvalidArgument
from granary.execution import leases
from granary.execution.jobqueue import JobQueue
from granary.execution.logstreams import LogStreams
from granary.execution.notifier import Notifier
from granary.execution.operations import COMPLETED, EXECUTING
from granary.execution.platform import Capabilities
from granary.execution.resultcheck import RefusedResult, check_result
from granary.execution.scheduler import Scheduler, execution_of
from granary.instance import Instance, Instances

log = logging.getLogger("granary.execution.bots")
SEPARATOR = "botSessions/"
ACCEPTING = (bots_pb2.BotStatus.BOT_STATUS_UNSPECIFIED, bots_pb2.BotStatus.OK)
DEADLINE_MARGIN = 1.0  # answer this long before the caller's deadline
DEFAULT_MAX_BOT_CONCURRENCY = 64
TOUCH_EVERY = 5.0  # at most this many seconds between writes of an unchanged bot row (capped: bot_timeout / 4)
MAX_TOUCHED = 10_000  # sessions remembered as written before the memory is cleared


def parent_of(session_name: str) -> str:
    if session_name.startswith(SEPARATOR):
        return ""
    parent, sep, _ = session_name.rpartition("/" + SEPARATOR)
    if not sep:
        raise InvalidArgument(f"bot session name {session_name!r} is not of the form [INSTANCE/]botSessions/ID")
    return parent


class BotSessions:
    def __init__(
        self, cfg: ExecutionConfig, queue: JobQueue, notifier: Notifier, instances: Instances, scheduler: Scheduler,
        *, max_bot_concurrency: int = DEFAULT_MAX_BOT_CONCURRENCY,
    ):
        """max_bot_concurrency (execution.max_bot_concurrency): the most leases one bot session
        holds at once, whatever concurrency it claims (a claim above it is capped, not refused)."""
        if max_bot_concurrency < 1:
            raise ValueError(f"max_bot_concurrency must be 1 or more, got {max_bot_concurrency}")
        self.cfg = cfg
        self.max_bot_concurrency = max_bot_concurrency
        self.queue = queue
        self.notifier = notifier
        self.instances = instances
        self.scheduler = scheduler
        # session -> (row without its times, when it was last written): a bot reports several times
        # per action, and rewriting its unchanged row each time was a write transaction per report
        self._touched: dict[str, tuple[tuple, float]] = {}
        self._touch_every = min(TOUCH_EVERY, cfg.bot_timeout / 4)
        self.logstreams: LogStreams | None = None  # set by the farm when execution.logstream is on

    async def create(
        self, parent: str, session: bots_pb2.BotSession, time_remaining: float | None
    ) -> bots_pb2.BotSession:
        inst = self.instances.get(parent)
        execution_of(inst)
        if not session.bot_id:
            raise InvalidArgument("CreateBotSession: bot_session.bot_id is required")
        session.name = f"{parent}/{SEPARATOR}{uuid.uuid4()}" if parent else f"{SEPARATOR}{uuid.uuid4()}"
        return await self._exchange(inst, session.name, session, time_remaining, created=True)

    async def update(
        self, name: str, session: bots_pb2.BotSession, time_remaining: float | None
    ) -> bots_pb2.BotSession:
        if session.name and session.name != name:
            raise InvalidArgument(f"UpdateBotSession: name {name!r} differs from bot_session.name {session.name!r}")
        inst = self.instances.get(parent_of(name))
        execution_of(inst)
        return await self._exchange(inst, name, session, time_remaining, created=False)

    async def _exchange(
        self, inst: Instance, name: str, session: bots_pb2.BotSession, remaining: float | None, created: bool
    ) -> bots_pb2.BotSession:
        queue = execution_of(inst).queue
        started = time.monotonic()
        budget = min(self.cfg.bot_long_poll, math.inf if remaining is None else remaining - DEADLINE_MARGIN)
        props = leases.worker_properties(session)
        caps = Capabilities(props)
        claimed = leases.worker_concurrency(session)
        concurrency = min(claimed, self.max_bot_concurrency)
        if created and claimed > concurrency:
            log.warning("bot %s (session %s) claims %d slots: capped to execution.max_bot_concurrency %d",
                        session.bot_id, name, claimed, concurrency)
        row = {
            "name": name, "bot_id": session.bot_id or name, "instance": inst.name, "queue": queue,
            "properties": json.dumps(props), "concurrency": concurrency, "status": session.status,
            "created_time": time.time(), "last_seen": time.time(),
        }
        await self._touch(row, created)
        reported = {lease.id: lease for lease in session.leases if lease.id}
        if created:
            self.scheduler.forget_live_offers()
            await self._replace_older_sessions(row["bot_id"], queue, name, list(reported))
        accepting = session.status in ACCEPTING
        busy = sum(1 for lease in reported.values() if lease.state in (leases.PENDING, leases.ACTIVE))
        wants_work = accepting and busy < concurrency
        while True:
            # Only a bot with a free slot waits for the queue: a full one was woken (and read the
            # database) by every Execute, several times per action with a few bots.
            listening = wants_work
            with self.notifier.subscribe(list(reported), queue=queue if listening else None) as sub:
                out, acted = await self._reconcile(name, reported)
                free = concurrency - len(out)
                if accepting and free > 0:
                    now = time.time()
                    streams = (self.logstreams.attach if self.logstreams is not None
                               and leases.streams_live_output(session) else None)
                    fresh = await self.queue.run(
                        self.queue.assign, name, session.bot_id or name, queue, caps, free, now, concurrency, streams
                    )
                    for job in fresh:
                        out.append(self._offer(job))
                    if fresh:
                        self.notifier.job_changed(*[j["name"] for j in fresh])
                left = budget - (time.monotonic() - started)
                if acted or _differs(reported, out) or left <= 0:
                    break
                wants_work = accepting and concurrency - len(out) > 0
                if wants_work != listening:
                    continue  # subscribe again as it should be, then look once more
                await sub.wait(left)
        if time.monotonic() - started > 1.0:
            await self.queue.run(self.queue.seen_bot, name, time.time())
        return self._session(name, session, out, concurrency)

    async def _touch(self, row: dict[str, Any], created: bool) -> None:
        """Write the bot's row when new, changed, or not written for a while (last_seen stays far
        fresher than bot_timeout, which is what the reaper and platform checks read)."""
        key = tuple(v for k, v in row.items() if k not in ("created_time", "last_seen"))
        now = time.monotonic()
        last = self._touched.get(row["name"])
        if not created and last is not None and last[0] == key and now - last[1] < self._touch_every:
            return
        await self.queue.run(self.queue.touch_bot, row)
        if len(self._touched) >= MAX_TOUCHED:
            self._touched.clear()
        self._touched[row["name"]] = (key, now)

    def _session(
        self, name: str, session: bots_pb2.BotSession, out: list[bots_pb2.Lease], concurrency: int
    ) -> bots_pb2.BotSession:
        reply = bots_pb2.BotSession(
            name=name, bot_id=session.bot_id, status=session.status, version=session.version, leases=out
        )
        reply.worker.CopyFrom(session.worker)
        leases.set_worker_concurrency(reply.worker, concurrency)  # what it is granted, not what it claimed
        expire = timestamp_pb2.Timestamp()
        expire.FromNanoseconds(int((time.time() + self.cfg.bot_timeout) * 1e9))
        reply.expire_time.CopyFrom(expire)
        return reply

    def _offer(self, job: Mapping[str, Any]) -> bots_pb2.Lease:
        action = re_pb2.Action()
        action.ParseFromString(job["action"])
        return leases.make_lease(job["name"], action, stdout_stream=job.get("stdout_stream") or "",
                                 stderr_stream=job.get("stderr_stream") or "")

    async def _reconcile(
        self, name: str, reported: dict[str, bots_pb2.Lease]
    ) -> tuple[list[bots_pb2.Lease], bool]:
        """Apply what the bot reports; -> (the leases it should hold now, whether its report changed anything).

        A report that changed something the bot waits to hear about (a result or a lease given
        back, which it keeps reporting until answered; an acknowledgement that came too late) is
        answered at once rather than long-polled.
        """
        held = await self.queue.read(self.queue.held_jobs, name)
        out: list[bots_pb2.Lease] = []
        acted = False
        now = time.time()
        for lease_id, lease in reported.items():
            job = held.pop(lease_id, None)
            state = lease.state
            if job is None:  # not (or no longer) this bot's: re-queued elsewhere, cancelled, finished
                if state in (leases.PENDING, leases.ACTIVE):
                    out.append(bots_pb2.Lease(id=lease_id, state=leases.CANCELLED))
                continue
            if job["stage"] == COMPLETED or job["lease_state"] == leases.CANCELLED:
                if state in (leases.COMPLETED, leases.CANCELLED):
                    await self.queue.run(self.queue.release, lease_id, name)
                else:
                    out.append(bots_pb2.Lease(id=lease_id, state=leases.CANCELLED))
                continue
            if state == leases.COMPLETED:
                await self._finish(job, lease, name, now)
                acted = True
            elif state == leases.CANCELLED:
                await self._requeue(lease_id, name, "the worker gave the lease back", now)
                acted = True
            elif state == leases.ACTIVE:
                if job["lease_state"] != leases.PENDING:
                    out.append(bots_pb2.Lease(id=lease_id, state=leases.ACTIVE))
                elif await self.queue.run(self.queue.mark_active, lease_id, name, now):
                    # Not `acted`: the bot needs no answer to an acknowledgement, so the call goes on
                    # as its long poll (answered when the lease is cancelled or the bot has news),
                    # instead of an answer at once and a second call to wait on: one call per action.
                    self.notifier.job_changed(lease_id)
                    out.append(bots_pb2.Lease(id=lease_id, state=leases.ACTIVE))
                else:  # taken back meanwhile (not acknowledged in time, or cancelled): it must not run
                    out.append(bots_pb2.Lease(id=lease_id, state=leases.CANCELLED))
                    acted = True
            else:
                out.append(self._offer(job))
        for job_name, job in held.items():  # the bot did not mention these
            if job["stage"] == COMPLETED or job["lease_state"] == leases.CANCELLED:
                await self.queue.run(self.queue.release, job_name, name)
            elif job["lease_state"] == leases.PENDING:
                out.append(self._offer(job))  # the offer never reached it (or it ignored it): offer again
            elif job["stage"] == EXECUTING:
                await self._requeue(job_name, name, "the worker dropped the lease", now)
        return out, acted

    async def _replace_older_sessions(self, bot_id: str, queue: str, name: str, reported: list[str]) -> None:
        """A bot that opens a new session restarted: what it no longer reports runs elsewhere now,
        not after bot_timeout."""
        changed = await self.queue.run(self.queue.replace_sessions, bot_id, queue, name, reported, time.time())
        if changed:
            self.notifier.job_changed(*changed)
            self.notifier.queue_changed(queue)

    async def _requeue(self, job_name: str, bot_name: str, reason: str, now: float) -> None:
        what = await self.queue.run(self.queue.requeue, job_name, bot_name, reason, now)
        if what in ("requeued", "failed"):
            self.notifier.job_changed(job_name)
            self.notifier.queue_changed()

    async def _finish(self, job: Mapping[str, Any], lease: bots_pb2.Lease, bot_name: str, now: float) -> None:
        result = leases.lease_result(lease)
        status = lease.status if lease.HasField("status") else status_pb2.Status(code=code_pb2.OK)
        if result is None and status.code == code_pb2.OK:
            status = status_pb2.Status(code=code_pb2.INTERNAL, message="the worker reported no ActionResult")
        inst = self.instances.get(job["instance"])
        if result is not None:
            try:
                await check_result(inst.cas, result, job["digest_function"])
            except RefusedResult as e:
                log.warning("job %s: refused the result of worker %s: %s", job["name"], bot_name, e.message)
                result = None
                status = status_pb2.Status(
                    code=code_pb2.INTERNAL, message=f"the worker's result was refused: {e.message}"
                )
        response = re_pb2.ExecuteResponse(status=status)
        if result is not None:
            meta = result.execution_metadata
            if not meta.HasField("queued_timestamp"):
                meta.queued_timestamp.FromNanoseconds(int(job["queued_time"] * 1e9))
            if not meta.worker:
                meta.worker = job["worker"] or bot_name
            response.result.CopyFrom(result)
            cacheable = (
                status.code == code_pb2.OK
                and not job["do_not_cache"]
                and inst.action_cache is not None
                and (result.exit_code == 0 or self.cfg.cache_failed_actions)
            )
            if cacheable:
                hash_, _, size = job["action_key"].partition("/")
                digest = dg.make_digest(job["digest_function"], hash_, int(size))
                await inst.action_cache.put_unchecked(digest, result)
        done = await self.queue.run(self.queue.complete, job["name"], bot_name, response.SerializeToString(), now)
        if done:
            self.notifier.job_changed(job["name"])


def _differs(reported: dict[str, bots_pb2.Lease], out: list[bots_pb2.Lease]) -> bool:
    if len(out) != len(reported):
        return True
    for lease in out:
        mine = reported.get(lease.id)
        if mine is None or mine.state != lease.state:
            return True
    return False
