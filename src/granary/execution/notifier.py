"""Wake-ups for waiters on jobs and on the queue, within and across server processes.

Changes made in this process fire at once, and are announced to the other
processes sharing the database: on PostgreSQL the queue NOTIFYs on every commit
that matters and a LISTEN connection here wakes the watcher, which then reads the
versions of the jobs someone here waits on and a cheap signature of the queue;
on SQLite (one host) job_changed/queue_changed also send the news to the peer
processes through local datagram sockets (localpeers.py), which wake their
waiters directly. With such a channel working, the watcher polls only as a safety
net, every max(poll_interval, SAFETY_NET) seconds, so an idle server does no work;
without one it polls every poll_interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path

from granary.execution.localpeers import LocalPeers

log = logging.getLogger("granary.execution.notifier")

SAFETY_NET = 5.0  # seconds between polls when notifications wake us (they could be lost)
LISTEN_WAIT = 30.0  # seconds the LISTEN thread blocks for a notification before checking for close


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
        peers_dir: Path | None = None,
    ):
        """peers_dir: where processes sharing an SQLite queue on this host find each other."""
        self.poll_interval = poll_interval
        self._peers_dir = peers_dir
        self._peers: LocalPeers | None = None
        self._listening = False
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
        """These jobs changed (committed): wake their waiters here and in the peer processes."""
        if not names:
            return
        self._wake_jobs(names)
        if self._peers is not None:
            self._peers.jobs_changed(names)

    def queue_changed(self, queue: str | None = None) -> None:
        """A queue (None: any) gained or lost work: wake bots waiting for it, here and in peers."""
        self._wake_queue(queue)
        if self._peers is not None:
            self._peers.queue_changed(queue)

    def _wake_jobs(self, names: Iterable[str]) -> None:
        wanted = set(names)
        for sub in list(self._subs):
            if sub.jobs & wanted:
                sub.event.set()

    def _wake_queue(self, queue: str | None) -> None:
        for sub in list(self._subs):
            if sub.queue is not None and (queue is None or sub.queue == queue):
                sub.event.set()

    def interval(self) -> float:
        """Seconds between the watcher's polls: long when notifications wake it."""
        if self._peers is not None or self._listening:
            return max(self.poll_interval, SAFETY_NET)
        return self.poll_interval

    # ---- cross-process ------------------------------------------------------

    def start(self) -> None:
        if self._peers_dir is not None:
            peers = LocalPeers(self._peers_dir, self._wake_jobs, self._wake_queue)
            try:
                peers.start()
                self._peers = peers
            except OSError as e:
                log.warning("cannot wake peer processes through %s (%s); polling every %gs",
                            self._peers_dir, e, self.poll_interval)
        self._task = asyncio.get_running_loop().create_task(self._watch())

    def listen_postgres(self, dsn: str, channel: str) -> None:
        """Wake the watcher on NOTIFY from other processes (psycopg, one thread)."""
        loop = asyncio.get_running_loop()

        def listening(up: bool) -> None:
            self._listening = up
            self._kick.set()  # look now: changes made before LISTEN took effect were not announced

        def run() -> None:
            import psycopg

            while not self._stop_listener.is_set():
                try:
                    with psycopg.connect(dsn, autocommit=True) as conn:
                        conn.execute(f"LISTEN {channel}")
                        loop.call_soon_threadsafe(listening, True)
                        while not self._stop_listener.is_set():
                            for _ in conn.notifies(timeout=LISTEN_WAIT, stop_after=1):
                                loop.call_soon_threadsafe(self._kick.set)
                except Exception as e:  # noqa: BLE001 - polling still works without it
                    with contextlib.suppress(RuntimeError):  # the loop may be closed by now
                        loop.call_soon_threadsafe(listening, False)
                    if self._stop_listener.is_set():
                        return
                    log.warning("LISTEN %s failed (%s); relying on polling", channel, e)
                    self._stop_listener.wait(5)

        self._listener = threading.Thread(target=run, name="granary-listen", daemon=True)
        self._listener.start()

    async def close(self) -> None:
        self._stop_listener.set()
        if self._peers is not None:
            self._peers.close()
            self._peers = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self.interval())
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
