"""One server process's share of the execution farm: queue, notifier, scheduler, bots, reaper."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from granary.config import Config, ExecutionConfig
from granary.execution.botsessions import BotSessions
from granary.execution.jobqueue import NOTIFY_CHANNEL, JobQueue
from granary.execution.notifier import Notifier
from granary.execution.scheduler import Scheduler
from granary.instance import Instances

log = logging.getLogger("granary.execution")


def database_url(cfg: Config) -> str:
    ex = cfg.execution
    assert ex is not None
    return ex.database or f"sqlite:///{cfg.data_dir / 'execution.sqlite'}"


class ExecutionFarm:
    def __init__(self, cfg: ExecutionConfig, url: str, instances: Instances):
        self.cfg = cfg
        self.queue = JobQueue(url, retry_limit=cfg.retry_limit)
        self.queue.create_schema()
        self.notifier = Notifier(
            cfg.poll_interval,
            lambda names: self.queue.run(self.queue.versions, names),
            lambda: self.queue.run(self.queue.queue_signature),
        )
        self.scheduler = Scheduler(cfg, self.queue, self.notifier)
        self.bots = BotSessions(cfg, self.queue, self.notifier, instances, self.scheduler)
        self.up_since = time.time()
        self._reaper: asyncio.Task | None = None

    async def start(self) -> None:
        self.up_since = time.time()
        self.notifier.start()
        if self.queue.is_postgres:
            dsn = self.queue.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
            self.notifier.listen_postgres(dsn, NOTIFY_CHANNEL)
        self._reaper = asyncio.get_running_loop().create_task(self._reap_forever())

    async def close(self) -> None:
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
        interval = max(0.2, min(5.0, self.cfg.bot_timeout / 4))
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reap_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("execution housekeeping failed")
