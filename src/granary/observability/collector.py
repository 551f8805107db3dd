"""What a scrape reads from shared state: the job queue database (queue depth, jobs by stage, workers)
and the stores' own indexes (blobs and bytes stored). Whichever server process answers the scrape
reads the same database, so these are right with any number of processes by construction.

Every query is bounded and indexed: jobs are read through the (queue, stage) index for the stages
that are not finished (the queues are those this server's instances use); bot sessions are few. The
count of blobs in a disk store is a scan of its index, so it runs in a thread on its own connection
and is reused while the store's byte total holds still (at most STORE_COUNT_TTL seconds), or for
STORE_COUNT_MIN_AGE seconds once it has moved.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client.core import GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from granary.bootstrap import App
    from granary.config import Config

log = logging.getLogger("granary.observability")

QUEUED, EXECUTING = 2, 3  # ExecutionStage values of unfinished jobs
MAX_PLATFORM_LABELS = 50  # platforms shown one by one per queue; the rest are summed as (other)
STORE_COUNT_TTL = 30.0  # seconds a disk store's blob count is reused while its size holds still
STORE_COUNT_MIN_AGE = 2.0  # seconds a disk store's blob count is reused once its size has moved


def platform_label(key: str) -> str:
    """`[["OSFamily","linux"],["ISA","x86-64"]]` -> `ISA=x86-64,OSFamily=linux`."""
    try:
        pairs = json.loads(key)
        return ",".join(sorted(f"{k}={v}" for k, v in pairs))
    except (ValueError, TypeError):
        return "(invalid)"


class QueueStats:
    """Reads the queue database; runs in the queue's thread pool."""

    def __init__(self, farm: Any, queues: list[str], bot_timeout: float):
        self.farm = farm
        self.queues = queues
        self.bot_timeout = bot_timeout

    def read(self) -> dict[str, Any]:
        from sqlalchemy import and_, distinct, func, select

        from granary.execution.schema import bots, jobs

        queue = self.farm.queue
        unfinished = and_(jobs.c.queue.in_(self.queues), jobs.c.stage.in_((QUEUED, EXECUTING)))
        with queue.read_engine.connect() as conn:
            by_platform = conn.execute(
                select(jobs.c.queue, jobs.c.platform_key, jobs.c.stage, func.count())
                .where(unfinished).group_by(jobs.c.queue, jobs.c.platform_key, jobs.c.stage)
            ).all()
            oldest = conn.execute(
                select(jobs.c.queue, func.min(jobs.c.queued_time))
                .where(jobs.c.queue.in_(self.queues), jobs.c.stage == QUEUED).group_by(jobs.c.queue)
            ).all()
            busy = conn.execute(
                select(jobs.c.queue, func.count(distinct(jobs.c.bot_name)), func.count())
                .where(unfinished, jobs.c.bot_name.is_not(None)).group_by(jobs.c.queue)
            ).all()
            live = conn.execute(
                select(bots.c.queue, func.count(), func.sum(bots.c.concurrency))
                .where(bots.c.last_seen >= time.time() - self.bot_timeout).group_by(bots.c.queue)
            ).all()
        return {"by_platform": by_platform, "oldest": oldest, "busy": busy, "live": live, "now": time.time()}

    def families(self, data: dict[str, Any] | None) -> list[Metric]:
        up = GaugeMetricFamily("granary_queue_database_up",
                               "1 when the queue database answered this scrape's queries, else 0.")
        up.add_metric([], 1 if data is not None else 0)
        if data is None:
            return [up]
        depth = GaugeMetricFamily("granary_execution_queue_depth",
                                  "Jobs waiting for a worker, by queue and platform.", labels=["queue", "platform"])
        stages = GaugeMetricFamily("granary_execution_jobs", "Unfinished jobs by stage (queued, executing).",
                                   labels=["queue", "stage"])
        oldest = GaugeMetricFamily("granary_execution_oldest_queued_seconds",
                                   "Age of the oldest job waiting for a worker.", labels=["queue"])
        connected = GaugeMetricFamily("granary_workers_connected", "Worker sessions heard from within bot_timeout.",
                                      labels=["queue"])
        slots = GaugeMetricFamily("granary_worker_slots", "Concurrent jobs those sessions may hold.",
                                  labels=["queue"])
        busy = GaugeMetricFamily("granary_workers_busy", "Worker sessions holding at least one job.",
                                 labels=["queue"])
        busy_slots = GaugeMetricFamily("granary_worker_slots_busy", "Jobs held by workers (offered or running).",
                                       labels=["queue"])
        counts: dict[str, dict[str, int]] = {q: {"queued": 0, "executing": 0} for q in self.queues}
        platforms: dict[str, dict[str, int]] = {q: {} for q in self.queues}
        for name, key, stage, n in data["by_platform"]:
            stage_name = "queued" if stage == QUEUED else "executing"
            counts.setdefault(name, {"queued": 0, "executing": 0})[stage_name] += n
            if stage == QUEUED:
                per = platforms.setdefault(name, {})
                per[key] = per.get(key, 0) + n
        for name, per in platforms.items():
            ranked = sorted(per.items(), key=lambda kv: -kv[1])
            for key, n in ranked[:MAX_PLATFORM_LABELS]:
                depth.add_metric([name, platform_label(key)], n)
            rest = sum(n for _, n in ranked[MAX_PLATFORM_LABELS:])
            if rest:
                depth.add_metric([name, "(other)"], rest)
        for name, by_stage in counts.items():
            for stage_name, n in by_stage.items():
                stages.add_metric([name, stage_name], n)
        ages = {name: data["now"] - t for name, t in data["oldest"] if t is not None}
        for name in self.queues:
            oldest.add_metric([name], max(0.0, ages.get(name, 0.0)))
        held = {name: (b, n) for name, b, n in data["busy"]}
        seen = {name: (n, s or 0) for name, n, s in data["live"]}
        for name in sorted(set(self.queues) | set(seen)):
            n, s = seen.get(name, (0, 0))
            connected.add_metric([name], n)
            slots.add_metric([name], s)
            b, h = held.get(name, (0, 0))
            busy.add_metric([name], b)
            busy_slots.add_metric([name], h)
        return [up, depth, stages, oldest, connected, slots, busy, busy_slots]


class StoreStats:
    """Blobs and bytes held by the disk and memory stores (each counted once, whoever shares it)."""

    def __init__(self, app: App, labels: dict[int, str]):
        from granary.cas.disk import DiskBlobStore
        from granary.cas.memory import MemoryBlobStore

        stores = app.builder.built if app.builder is not None else app.blob_stores
        self.disks = [(labels.get(id(s), s.name), Path(s.root)) for s in stores if isinstance(s, DiskBlobStore)]
        self.memories = [(labels.get(id(s), s.name), s) for s in stores if isinstance(s, MemoryBlobStore)]
        self._counts: dict[Path, tuple[float, int, int]] = {}

    def read_disks(self) -> list[tuple[str, int, int]]:
        out = []
        now = time.monotonic()
        for label, root in self.disks:
            db = sqlite3.connect(f"file:{root / 'index.v2.sqlite'}?mode=ro", uri=True, timeout=5)
            try:
                size = db.execute("SELECT v FROM meta WHERE k = 'bytes'").fetchone()[0]
                cached = self._counts.get(root)
                # count(*) walks the index, so it is reused: while the store's byte total has not moved
                # (for up to STORE_COUNT_TTL), or for STORE_COUNT_MIN_AGE when it has.
                if (cached is None or now - cached[0] > STORE_COUNT_TTL
                        or (cached[1] != size and now - cached[0] > STORE_COUNT_MIN_AGE)):
                    n = db.execute("SELECT count(*) FROM blobs").fetchone()[0]
                    cached = self._counts[root] = (now, size, n)
            finally:
                db.close()
            out.append((label, cached[2], size))
        return out

    def families(self, disks: Iterable[tuple[str, int, int]]) -> list[Metric]:
        blobs = GaugeMetricFamily("granary_cas_stored_blobs", "Blobs held by a disk or memory store.",
                                  labels=["store"])
        size = GaugeMetricFamily("granary_cas_stored_bytes", "Bytes held by a disk or memory store.",
                                 labels=["store"])
        for label, n, b in disks:
            blobs.add_metric([label], n)
            size.add_metric([label], b)
        for label, store in self.memories:
            blobs.add_metric([label], len(getattr(store, "_blobs", ())))
            size.add_metric([label], store.bytes)
        return [blobs, size]


class ScrapeCollector:
    """The families read at scrape time: `gather` runs the queries off the event loop."""

    def __init__(self, app: App, cfg: Config, labels: dict[int, str], timeout: float = 5.0):
        self.timeout = timeout
        self.queue: QueueStats | None = None
        if app.execution is not None and cfg.execution is not None:
            queues = sorted({spec.cas for spec in cfg.instances.values() if spec.execution})
            self.queue = QueueStats(app.execution, queues, cfg.execution.bot_timeout)
        self.stores = StoreStats(app, labels)

    async def gather(self) -> list[Metric]:
        families: list[Metric] = []
        if self.queue is not None:
            data = None
            try:
                q = self.queue.farm.queue
                data = await asyncio.wait_for(q.run(self.queue.read), self.timeout)
            except Exception as e:  # noqa: BLE001 - the scrape still answers, saying the database did not
                log.warning("metrics: the queue database did not answer: %s: %s", type(e).__name__, e)
            families += self.queue.families(data)
        disks: list[tuple[str, int, int]] = []
        if self.stores.disks:
            try:
                disks = await asyncio.wait_for(asyncio.to_thread(self.stores.read_disks), self.timeout)
            except Exception as e:  # noqa: BLE001
                log.warning("metrics: cannot read the disk stores' index: %s: %s", type(e).__name__, e)
        families += self.stores.families(disks)
        return families


class Families:
    """A collector of families gathered already (one per scrape)."""

    def __init__(self, families: list[Metric]):
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families
