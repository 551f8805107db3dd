"""One bot session of the Remote Workers API: take leases, run them, report them.

The loop keeps one UpdateBotSession call in flight (the server long-polls it
when there is no work). When something changes locally (a lease finished,
shutdown began) the in-flight call is cancelled and the new state is sent at
once, so results never wait for a long poll to end.

Lease handling:
- PENDING lease offered, new id: accepted (reported ACTIVE) and started.
- CANCELLED by the server: the action's process group is killed and the lease
  dropped; it is not reported again.
- our lease finished: reported COMPLETED with result = Any(ActionResult) and
  status; dropped once a request carrying it has succeeded.
- offered while the worker shuts down, or killed because shutdown ran out of
  grace: given back (reported CANCELLED) so the server re-queues it at once.
- a lease the response leaves out is kept (a server may answer with only news).
"""

from __future__ import annotations

import logging
import random
import threading
from dataclasses import dataclass, field

import grpc
from google.rpc import status_pb2

from granary._proto.google.devtools.remoteworkers.v1test2 import bots_pb2, bots_pb2_grpc, worker_pb2
from granary.execution.leases import LOGSTREAM_CONFIG, complete_lease, lease_action, lease_streams
from granary.worker.execute import ActionRun, Executor

log = logging.getLogger("granary.worker.bot")

BACKOFF_START = 0.5
BACKOFF_MAX = 30.0
CREATE_TIMEOUT = 3.0  # seconds: servers that long-poll creation answer before it, so draining is quick
QUICK_GOODBYE = 1.5  # seconds: the deadline of a last report that carries no lease (servers long-poll it)


@dataclass
class BotConfig:
    instance: str
    bot_id: str
    properties: list[tuple[str, str]]
    poll_timeout: float = 60.0  # deadline of one UpdateBotSession (a server should answer before it)
    final_timeout: float = 10.0  # deadline of the last report on shutdown


@dataclass
class Shutdown:
    """Shared by all sessions of a worker: draining takes no new work; abandon kills running work."""

    draining: threading.Event = field(default_factory=threading.Event)
    abandon: threading.Event = field(default_factory=threading.Event)


class _Task:
    def __init__(self, lease: bots_pb2.Lease, run: ActionRun | None):
        self.lease = lease
        self.run = run
        self.done = run is None


class BotSession:
    def __init__(self, channel: grpc.Channel, executor: Executor, cfg: BotConfig, shutdown: Shutdown):
        self.stub = bots_pb2_grpc.BotsStub(channel)
        self.ex = executor
        self.cfg = cfg
        self.shutdown = shutdown
        self.name = ""
        self.tasks: dict[str, _Task] = {}
        self._cond = threading.Condition()
        self._changed = False
        self._backoff = BACKOFF_START
        self.completed = 0  # leases reported and acknowledged (for tests and logs)

    # ---- what we tell the server -------------------------------------------

    def worker(self) -> worker_pb2.Worker:
        device = worker_pb2.Device(handle=self.cfg.bot_id)
        for k, v in self.cfg.properties:
            device.properties.add(key=k, value=v)
        worker = worker_pb2.Worker(devices=[device])
        if self.ex.live_output is not None:  # leases then carry live output streams to write to
            worker.configs.add(key=LOGSTREAM_CONFIG, value="v1")
        return worker

    def _snapshot(self) -> tuple[bots_pb2.BotSession, list[str]]:
        with self._cond:
            self._changed = False
            leases = [bots_pb2.Lease() for _ in self.tasks]
            for msg, t in zip(leases, self.tasks.values()):
                msg.CopyFrom(t.lease)
            reported = [i for i, t in self.tasks.items() if t.done]
        status = bots_pb2.BOT_TERMINATING if self.shutdown.draining.is_set() else bots_pb2.OK
        return bots_pb2.BotSession(name=self.name, bot_id=self.cfg.bot_id, status=status,
                                   worker=self.worker(), leases=leases), reported

    def notify(self) -> None:
        with self._cond:
            self._changed = True
            self._cond.notify_all()

    # ---- the loop -----------------------------------------------------------

    def run(self) -> None:
        while True:
            if self.shutdown.abandon.is_set():
                for t in list(self.tasks.values()):
                    if t.run is not None:
                        t.run.cancel()
            if self.shutdown.draining.is_set() and not self._busy():
                if self.name:
                    self._final_report()
                return
            if self.name:
                self._update()
            else:
                self._create()

    def _busy(self) -> bool:
        with self._cond:
            return any(not t.done for t in self.tasks.values())

    def _call(self, method, request, interrupt, timeout: float):
        """One call that interrupt() may cut short (None then); RpcError when it fails."""
        fut = method.future(request, timeout=timeout)
        fut.add_done_callback(lambda _f: self._wake())
        with self._cond:
            while not fut.done() and not interrupt():
                self._cond.wait()
        if not fut.done():
            fut.cancel()
            return None
        try:
            return fut.result()
        except grpc.FutureCancelledError:
            return None

    def _create(self) -> None:
        session, _ = self._snapshot()
        request = bots_pb2.CreateBotSessionRequest(parent=self.cfg.instance, bot_session=session)
        try:
            # Only abandoning cuts a creation short: an offer in its answer would be stranded.
            resp = self._call(self.stub.CreateBotSession, request, self.shutdown.abandon.is_set,
                              min(self.cfg.poll_timeout, CREATE_TIMEOUT))
        except grpc.RpcError as e:
            log.warning("%s: CreateBotSession failed: %s %s", self.cfg.bot_id, e.code().name, e.details())
            self._sleep_backoff()
            return
        if resp is None:
            return
        self._backoff = BACKOFF_START
        self.name = resp.name
        log.info("%s: bot session %s", self.cfg.bot_id, self.name)
        self._apply(resp, [])

    def _update(self) -> None:
        session, reported = self._snapshot()
        request = bots_pb2.UpdateBotSessionRequest(name=self.name, bot_session=session)
        try:
            # Cut short when there is news to report: the next call carries it at once.
            resp = self._call(self.stub.UpdateBotSession, request, lambda: self._changed, self.cfg.poll_timeout)
        except grpc.RpcError as e:
            code = e.code()
            if code in (grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED):
                return  # a long poll that outlived its deadline
            if code == grpc.StatusCode.NOT_FOUND:
                log.warning("%s: server forgot session %s (%s); creating a new one",
                            self.cfg.bot_id, self.name, e.details())
                self.name = ""
                return
            log.warning("%s: UpdateBotSession failed: %s %s", self.cfg.bot_id, code.name, e.details())
            self._sleep_backoff()
            return
        if resp is None:
            return
        self._backoff = BACKOFF_START
        self._apply(resp, reported)

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _sleep_backoff(self) -> None:
        delay = self._backoff * random.uniform(0.5, 1.0)
        self._backoff = min(self._backoff * 2, BACKOFF_MAX)
        with self._cond:
            self._cond.wait_for(lambda: self.shutdown.abandon.is_set() or self._changed, timeout=delay)

    def _final_report(self) -> None:
        """Say BOT_TERMINATING (with any last results); short when there is nothing to deliver."""
        session, reported = self._snapshot()
        try:
            self.stub.UpdateBotSession(
                bots_pb2.UpdateBotSessionRequest(name=self.name, bot_session=session),
                timeout=self.cfg.final_timeout if session.leases else QUICK_GOODBYE,
            )
            self._forget(reported)
        except grpc.RpcError as e:
            if session.leases:
                log.warning("%s: last report failed (%s); %d lease(s) unreported", self.cfg.bot_id,
                            e.code().name, len(session.leases))

    # ---- leases -------------------------------------------------------------

    def _forget(self, reported: list[str]) -> None:
        with self._cond:
            for lease_id in reported:
                if self.tasks.pop(lease_id, None) is not None:
                    self.completed += 1

    def _apply(self, resp: bots_pb2.BotSession, reported: list[str]) -> None:
        self._forget(reported)
        for lease in resp.leases:
            task = self.tasks.get(lease.id)
            if task is not None:
                if lease.state == bots_pb2.CANCELLED:
                    log.info("%s: lease %s cancelled by the server", self.cfg.bot_id, lease.id)
                    if task.run is not None:
                        task.run.cancel()
                    with self._cond:
                        self.tasks.pop(lease.id, None)
                continue
            if lease.state == bots_pb2.PENDING:
                self._accept(lease)

    def _accept(self, offered: bots_pb2.Lease) -> None:
        lease = bots_pb2.Lease()
        lease.CopyFrom(offered)
        if self.shutdown.draining.is_set():
            self._finish(_Task(lease, None), None, None)
            return
        try:
            action = lease_action(lease)
        except ValueError as e:
            self._finish(_Task(lease, None), None,
                         status_pb2.Status(code=grpc.StatusCode.INVALID_ARGUMENT.value[0], message=str(e)))
            return
        lease.state = bots_pb2.ACTIVE
        task = _Task(lease, ActionRun(self.ex, action, self.cfg.bot_id, lease_streams(lease)))
        with self._cond:
            self.tasks[lease.id] = task
            self._changed = True
        log.info("%s: running lease %s", self.cfg.bot_id, lease.id)
        threading.Thread(target=self._execute, args=(task,), name=f"lease-{lease.id}", daemon=True).start()

    def _execute(self, task: _Task) -> None:
        assert task.run is not None
        result, status = task.run.run()
        if self.shutdown.abandon.is_set() and task.run.cancelled:
            self._finish(task, None, None)  # killed by our own shutdown: give it back
        else:
            self._finish(task, result, status)

    def _finish(self, task: _Task, result, status: status_pb2.Status | None) -> None:
        """Report a lease: COMPLETED with result and status, or (status None) given back as CANCELLED."""
        with self._cond:
            if task.lease.id in self.tasks and self.tasks[task.lease.id] is not task:
                return
            if task.run is not None and task.lease.id not in self.tasks:
                return  # cancelled by the server meanwhile: nothing to report
            if status is None:
                task.lease.state = bots_pb2.CANCELLED
            else:
                complete_lease(task.lease, result, status)
            task.done = True
            self.tasks[task.lease.id] = task
            self._changed = True
            self._cond.notify_all()
        log.info("%s: lease %s %s", self.cfg.bot_id, task.lease.id,
                 "given back" if status is None else f"completed (status {status.code})")
