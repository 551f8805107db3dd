"""The Bots API side of a server that can drain: no new leases while draining, and a count of
the bots that still hold unfinished leases through this process (the drain waits for them)."""

from __future__ import annotations

import time

from granary._proto.google.devtools.remoteworkers.v1test2 import bots_pb2
from granary.config import ExecutionConfig
from granary.execution import leases
from granary.execution.botsessions import ACCEPTING, BotSessions
from granary.execution.jobqueue import JobQueue
from granary.execution.notifier import Notifier
from granary.execution.scheduler import Scheduler
from granary.instance import Instances

UNFINISHED = (leases.PENDING, leases.ACTIVE)
MAX_HOLDING = 4096  # bots remembered as holding work before stale ones are dropped


def _unfinished(leases_: list[bots_pb2.Lease]) -> bool:
    return any(lease.state in UNFINISHED for lease in leases_)


class DrainableBotSessions(BotSessions):
    """BotSessions that, while draining, serve every bot as if it said BOT_TERMINATING (no new
    leases) and that know which bots hold unfinished leases through this process."""

    def __init__(
        self, cfg: ExecutionConfig, queue: JobQueue, notifier: Notifier, instances: Instances, scheduler: Scheduler,
        **options: int,
    ) -> None:
        super().__init__(cfg, queue, notifier, instances, scheduler, **options)
        self.draining = False
        # a bot silent this long no longer counts as working here (its calls went elsewhere)
        self.stale_after = 2 * self.cfg.bot_long_poll + 5.0
        self._working: dict[str, int] = {}  # session -> in-flight calls reporting unfinished leases
        self._holding: dict[str, float] = {}  # session -> when it was last known to hold unfinished leases

    def busy(self) -> int:
        """Bots with unfinished leases that talk to this process."""
        fresh = time.monotonic() - self.stale_after
        return len(set(self._working) | {n for n, t in self._holding.items() if t >= fresh})

    def _served(self, session: bots_pb2.BotSession) -> bots_pb2.BotSession:
        if not self.draining or session.status not in ACCEPTING:
            return session
        terminating = bots_pb2.BotSession()
        terminating.CopyFrom(session)
        terminating.status = bots_pb2.BOT_TERMINATING
        return terminating

    def _answered(self, name: str, session: bots_pb2.BotSession, reply: bots_pb2.BotSession) -> bots_pb2.BotSession:
        now = time.monotonic()
        if _unfinished(list(reply.leases)):
            self._holding[name] = now
            if len(self._holding) > MAX_HOLDING:  # forget bots that vanished while holding work
                self._holding = {n: t for n, t in self._holding.items() if t >= now - self.stale_after}
        else:
            self._holding.pop(name, None)
        reply.status = session.status
        return reply

    async def create(
        self, parent: str, session: bots_pb2.BotSession, time_remaining: float | None
    ) -> bots_pb2.BotSession:
        reply = await super().create(parent, self._served(session), time_remaining)
        return self._answered(reply.name, session, reply)

    async def update(
        self, name: str, session: bots_pb2.BotSession, time_remaining: float | None
    ) -> bots_pb2.BotSession:
        working = _unfinished(list(session.leases))
        if working:
            self._working[name] = self._working.get(name, 0) + 1
            self._holding[name] = time.monotonic()
        try:
            reply = await super().update(name, self._served(session), time_remaining)
        finally:
            if working:
                self._working[name] -= 1
                if not self._working[name]:
                    del self._working[name]
        return self._answered(name, session, reply)
