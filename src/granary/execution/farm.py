"""One server process's share of the execution farm: queue, notifier, scheduler, bots, reaper.

Draining (graceful shutdown): bots get no new leases, and the farm tells how many
bots still hold unfinished work through this process, so the server stays up until
they have reported it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

from sqlalchemy.engine import make_url

from granary.config import Config, ExecutionConfig
from granary.execution.drainingbots import DrainableBotSessions
from granary.execution.jobqueue import NOTIFY_CHANNEL, JobQueue
from granary.execution.logstreams import LogStreams
from granary.execution.notifier import Notifier
from granary.execution.scheduler import Scheduler
from granary.instance import Instances
from granary.sql import resolve_url

log = logging.getLogger("granary.execution")
REAP_EVERY = 15.0  # seconds at most between housekeeping passes (silent bots, overdue jobs, old history)


def database_url(cfg: Config) -> str:
    ex = cfg.execution
    assert ex is not None
    if ex.database is None:
        return f"sqlite:///{cfg.data_dir / 'execution.sqlite'}"
    return resolve_url(ex.database, cfg.data_dir)  # a relative SQLite file lives in the data directory


def sqlite_peers_dir(url: str) -> Path | None:
    """Where the server processes sharing this SQLite queue file find each other (None: no file)."""
    if not url.startswith("sqlite"):
        return None
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(f"{database}-peers")


class ExecutionFarm:
    def __init__(self, cfg: ExecutionConfig, url: str, instances: Instances):
        self.cfg = cfg
        self.queue = JobQueue(url, retry_limit=cfg.retry_limit, lease_ack_timeout=cfg.lease_ack_timeout)
        self.queue.create_schema()
        self.notifier = Notifier(
            cfg.poll_interval,
            lambda names: self.queue.run(self.queue.versions, names),
            lambda: self.queue.run(self.queue.queue_signature),
            peers_dir=sqlite_peers_dir(url),
        )
        self.scheduler = Scheduler(cfg, self.queue, self.notifier)
        self.bots = DrainableBotSessions(
            cfg, self.queue, self.notifier, instances, self.scheduler, max_bot_concurrency=cfg.max_bot_concurrency
        )
        self.logstreams = LogStreams(self.queue, cfg.logstream) if cfg.logstream.enabled else None
        self.bots.logstreams = self.logstreams
        self.up_since = time.time()
        self._reaper: asyncio.Task | None = None

    async def start(self) -> None:
        self.up_since = time.time()
        self.notifier.start()
        if self.queue.is_postgres:
            dsn = self.queue.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
            self.notifier.listen_postgres(dsn, NOTIFY_CHANNEL)
        self._reaper = asyncio.get_running_loop().create_task(self._reap_forever())
        if self.logstreams is not None:
            self.logstreams.start()

    def begin_draining(self) -> None:
        """No new leases from now on; running ones may still be reported."""
        self.bots.draining = True

    def busy_bots(self) -> int:
        return self.bots.busy()

    async def close(self) -> None:
        if self.logstreams is not None:
            await self.logstreams.close()
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        await self.notifier.close()
        self.queue.close()

    async def reap_once(self) -> None:
        changed = await self.queue.run(
            self.queue.reap, time.time(), self.cfg.bot_timeout, self.up_since, self.cfg.retention
        )
        if changed:
            self.notifier.job_changed(*changed)
            self.notifier.queue_changed()

    async def _reap_forever(self) -> None:
        interval = max(0.2, min(REAP_EVERY, self.cfg.bot_timeout / 4, self.cfg.lease_ack_timeout / 4))
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reap_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("execution housekeeping failed")
