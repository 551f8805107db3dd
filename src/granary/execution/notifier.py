"""Wake-ups for waiters on jobs and on the queue, within and across server processes.

Changes made in this process fire at once. Changes made by other processes
(sharing the database) are found by one watcher task per process that polls
the versions of the jobs someone here waits on and a cheap signature of the
queue, every `poll_interval` seconds; on PostgreSQL a LISTEN connection wakes
the watcher as soon as another process commits a change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable, Iterator

log = logging.getLogger("granary.execution.notifier")


class Subscription:
    def __init__(self, jobs: frozenset[str], queue: str | None):
        self.jobs = jobs
        self.queue = queue
        self.event = asyncio.Event()

    async def wait(self, timeout: float) -> bool:
        if timeout <= 0:
            return self.event.is_set()
        try:
            await asyncio.wait_for(self.event.wait(), timeout)
            return True
        except TimeoutError:
            return False


class Notifier:
    def __init__(
        self,
        poll_interval: float,
        versions: Callable[[list[str]], Awaitable[dict[str, int]]],
        queue_signature: Callable[[], Awaitable[object]],
    ):
        self.poll_interval = poll_interval
        self._versions = versions
        self._queue_signature = queue_signature
        self._subs: set[Subscription] = set()
        self._seen: dict[str, int] = {}
        self._signature: object = None
        self._task: asyncio.Task | None = None
        self._kick = asyncio.Event()
        self._listener: threading.Thread | None = None
        self._stop_listener = threading.Event()

    @contextlib.contextmanager
    def subscribe(self, jobs: list[str] | tuple[str, ...] = (), queue: str | None = None) -> Iterator[Subscription]:
        sub = Subscription(frozenset(jobs), queue)
        self._subs.add(sub)
        try:
            yield sub
        finally:
            self._subs.discard(sub)

    def job_changed(self, *names: str) -> None:
        wanted = set(names)
        for sub in list(self._subs):
            if sub.jobs & wanted:
                sub.event.set()

    def queue_changed(self, queue: str | None = None) -> None:
        for sub in list(self._subs):
            if sub.queue is not None and (queue is None or sub.queue == queue):
                sub.event.set()

    # ---- cross-process ------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch())

    def listen_postgres(self, dsn: str, channel: str) -> None:
        """Wake the watcher on NOTIFY from other processes (psycopg, one thread)."""
        loop = asyncio.get_running_loop()

        def run() -> None:
            import psycopg

            while not self._stop_listener.is_set():
                try:
                    with psycopg.connect(dsn, autocommit=True) as conn:
                        conn.execute(f"LISTEN {channel}")
                        while not self._stop_listener.is_set():
                            for _ in conn.notifies(timeout=1.0, stop_after=1):
                                loop.call_soon_threadsafe(self._kick.set)
                except Exception as e:  # noqa: BLE001 - polling still works without it
                    log.warning("LISTEN %s failed (%s); relying on polling", channel, e)
                    self._stop_listener.wait(5)

        self._listener = threading.Thread(target=run, name="granary-listen", daemon=True)
        self._listener.start()

    async def close(self) -> None:
        self._stop_listener.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self.poll_interval)
            self._kick.clear()
            try:
                await self._poll_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("execution watcher poll failed")

    async def _poll_once(self) -> None:
        subs = list(self._subs)
        names = sorted({n for s in subs for n in s.jobs})
        if names:
            versions = await self._versions(names)
            changed = [n for n in names if versions.get(n, -1) != self._seen.get(n)]
            self._seen = {n: versions.get(n, -1) for n in names}
            if changed:
                self.job_changed(*changed)
        else:
            self._seen = {}
        if any(s.queue is not None for s in subs):
            signature = await self._queue_signature()
            if signature != self._signature:
                self._signature = signature
                self.queue_changed()
