"""Live output streams (the LogStream API), kept in the job queue's database.

A running action's stdout and stderr are each one stream: the server makes both when it offers
the job to a worker that can stream (leases.py), the worker appends what the action prints with
ByteStream Write while it runs, and any client reads with ByteStream Read the names that the
operation's ExecuteOperationMetadata carries. CreateLogStream makes streams for other writers.

Why the database: every server process (and host) sharing the queue serves every stream, so a
client may follow output through another process than the one the worker writes to. A stream is
one row of `granary_logstreams` and its bytes are rows of `granary_logstream_chunks` of at most
CHUNK bytes each, keyed by their offset; nothing of a stream stays in a server's memory beyond one
read batch (READ_BATCH chunks) per open Read.

Waking readers: a Read of an unfinished stream blocks until more bytes are committed or the
stream is finished. A write through this process wakes its readers here at once; bytes written
through another process are found by looking at the database every `poll_interval` seconds
(execution.logstream.poll_interval, 0.2 s by default) while a Read waits.

Bounds: a stream holds at most max_stream_bytes (a write past it gets RESOURCE_EXHAUSTED; the
worker then stops streaming that output, which still reaches the CAS whole), all streams together
at most max_total_bytes (counted in the one row of `granary_logstream_usage`, updated in the same
transaction as the chunks; to make room a write first drops the oldest finished streams, then is
refused with RESOURCE_EXHAUSTED).

Cleanup: each server process sweeps every SWEEP_EVERY seconds (at most), in one short transaction
with bounded batches: streams of jobs that no longer run are finished (their worker died or the
job was re-queued), streams no running action owns that nobody wrote for idle_timeout are
finished, and streams finished more than `retention` seconds ago are deleted with their chunks.

Write semantics follow ByteStream: the first request names the write resource name, each
request's write_offset must equal the stream's committed size (so a broken Write is resumed
from QueryWriteStatus's committed_size), and finish_write ends the stream for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from sqlalchemy.exc import IntegrityError

from granary.config_models import LogStreamSection
from granary.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
)
from granary.execution.jobqueue import JobQueue
from granary.execution.operations import COMPLETED, stream_read_name
from granary.resource_names import LogStreamResource, logstream_name, parse_logstream

log = logging.getLogger("granary.execution.logstreams")

CHUNK = 64 << 10  # bytes per chunk row (a larger write request is split)
READ_BATCH = 16  # chunk rows fetched per query of a Read (1 MiB at most)
SWEEP_EVERY = 5.0  # seconds at most between sweeps (less with a short retention)
SWEEP_BATCH = 200  # finished streams deleted per sweep transaction
SWEEP_ROUNDS = 10  # transactions per sweep at most (the next sweep goes on)
EVICT_BATCH = 32  # oldest finished streams dropped at once when a write needs room


class WriteChunk(Protocol):
    """What a ByteStream WriteRequest offers."""

    resource_name: str
    write_offset: int
    finish_write: bool
    data: bytes


class LogStreams:
    """The streams of one queue database, as one server process serves them."""

    def __init__(self, queue: JobQueue, cfg: LogStreamSection):
        self.queue = queue
        self.cfg = cfg
        self._waiters: dict[str, set[asyncio.Event]] = {}  # stream id -> Reads blocked on it here
        self._sweeper: asyncio.Task | None = None
        self._lock = " FOR UPDATE" if queue.is_postgres else ""
        self._skip_locked = " FOR UPDATE SKIP LOCKED" if queue.is_postgres else ""
        self._ensure_usage_row()

    # ---- plumbing -----------------------------------------------------------

    def _cursor(self, write: bool):
        return self.queue._cursor(write)  # the queue's transactions: same database, same pool

    def _exec(self, cur: Any, sql: str, params: dict[str, Any] | None = None) -> int:
        return self.queue._exec(cur, sql, params)

    def _rows(self, cur: Any, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return self.queue._rows(cur, sql, params)

    def _ensure_usage_row(self) -> None:
        try:
            with self._cursor(write=True) as cur:
                if not self._rows(cur, "SELECT bytes FROM granary_logstream_usage WHERE id = 1"):
                    self._exec(cur, "INSERT INTO granary_logstream_usage (id, bytes) VALUES (1, 0)")
        except IntegrityError:
            pass  # another server process inserted it first

    def _wake(self, stream_id: str) -> None:
        for ev in self._waiters.get(stream_id, ()):
            ev.set()

    # ---- creating -----------------------------------------------------------

    def _insert(self, cur: Any, instance: str, job_name: str | None, now: float) -> str:
        """One new stream; -> its write name."""
        stream_id, token = str(uuid.uuid4()), secrets.token_urlsafe(24)
        self._exec(
            cur, "INSERT INTO granary_logstreams (name, instance, write_token, job_name, created_time, updated_time,"
                 " finished_time, size) VALUES (:n, :i, :t, :j, :now, :now, NULL, 0)",
            {"n": stream_id, "i": instance, "t": token, "j": job_name, "now": now},
        )
        return logstream_name(instance, stream_id, token)

    def create_sync(self, instance: str, now: float) -> str:
        """A stream no action owns (CreateLogStream); -> its write name."""
        with self._cursor(write=True) as cur:
            return self._insert(cur, instance, None, now)

    async def create(self, instance: str) -> tuple[str, str]:
        """CreateLogStream: -> (read name, write name)."""
        write_name = await self.queue.run(self.create_sync, instance, time.time())
        return stream_read_name(write_name), write_name

    def attach(self, cur: Any, rows: list[dict[str, Any]], now: float) -> None:
        """Make the stdout and stderr streams of jobs just offered to a bot that streams, inside the
        transaction that offers them (JobQueue.assign's `also`), record them on the jobs and in
        `rows`. Streams of an earlier run of a job (it was re-queued) are finished."""
        for row in rows:
            for old in (row.get("stdout_stream"), row.get("stderr_stream")):
                res = parse_logstream(old) if old else None
                if res is not None:
                    self._exec(cur, "UPDATE granary_logstreams SET finished_time = :now"
                                    " WHERE name = :n AND finished_time IS NULL", {"now": now, "n": res.stream_id})
            names = (self._insert(cur, row["instance"], row["name"], now),
                     self._insert(cur, row["instance"], row["name"], now))
            self._exec(cur, "UPDATE granary_jobs SET stdout_stream = :o, stderr_stream = :e WHERE name = :n",
                       {"o": names[0], "e": names[1], "n": row["name"]})
            row["stdout_stream"], row["stderr_stream"] = names

    # ---- writing ------------------------------------------------------------

    def _append(self, res: LogStreamResource, offset: int, data: bytes, finish: bool, now: float) -> int:
        """Commit one write request; -> the stream's committed size after it."""
        with self._cursor(write=True) as cur:
            found = self._rows(cur, "SELECT instance, write_token, size, finished_time FROM granary_logstreams"
                                    f" WHERE name = :s{self._lock}", {"s": res.stream_id})
            if not found or found[0]["instance"] != res.instance:
                raise NotFound(f"log stream {res.read_name!r} not found (never made, or finished and deleted)")
            row = found[0]
            if not hmac.compare_digest(row["write_token"].encode(), res.token.encode(errors="replace")):
                raise PermissionDenied(f"the write token of {res.read_name!r} is wrong; only its writer may write")
            size = int(row["size"])
            if row["finished_time"] is not None:
                if offset == size and not data:
                    return size  # a finish_write sent again
                raise FailedPrecondition(f"log stream {res.read_name!r} is finished ({size} bytes); it takes no"
                                         " more writes")
            if offset != size:
                raise InvalidArgument(f"write_offset {offset} for log stream {res.read_name!r} does not match its"
                                      f" committed size {size}")
            n = len(data)
            if n:
                if size + n > self.cfg.max_stream_bytes:
                    raise ResourceExhausted(
                        f"log stream {res.read_name!r} would pass execution.logstream.max_stream_bytes"
                        f" ({self.cfg.max_stream_bytes} bytes) with {size + n} bytes")
                self._reserve(cur, n, res)
                for i in range(0, n, CHUNK):
                    self._exec(cur, "INSERT INTO granary_logstream_chunks (stream, start_offset, data)"
                                    " VALUES (:s, :o, :d)", {"s": res.stream_id, "o": size + i, "d": data[i : i + CHUNK]})
            self._exec(cur, "UPDATE granary_logstreams SET size = :size, updated_time = :now, finished_time = :f"
                            " WHERE name = :s",
                       {"size": size + n, "now": now, "f": now if finish else None, "s": res.stream_id})
            return size + n

    def _reserve(self, cur: Any, n: int, res: LogStreamResource) -> None:
        """Count n more bytes against max_total_bytes, dropping the oldest finished streams if need be."""
        grow = "UPDATE granary_logstream_usage SET bytes = bytes + :n WHERE id = 1 AND bytes + :n <= :max"
        params = {"n": n, "max": self.cfg.max_total_bytes}
        if self._exec(cur, grow, params):
            return
        victims = self._rows(cur, "SELECT name, size FROM granary_logstreams WHERE finished_time IS NOT NULL"
                                  f" ORDER BY finished_time LIMIT :k{self._skip_locked}", {"k": EVICT_BATCH})
        if victims:
            self._delete(cur, victims)
            log.info("dropped %d finished log stream(s) early to make room (execution.logstream.max_total_bytes)",
                     len(victims))
            if self._exec(cur, grow, params):
                return
        raise ResourceExhausted(
            f"log streams hold execution.logstream.max_total_bytes ({self.cfg.max_total_bytes} bytes) already;"
            f" {n} more bytes for {res.read_name!r} refused")

    def _delete(self, cur: Any, victims: list[dict[str, Any]]) -> None:
        keys = {f"n{i}": v["name"] for i, v in enumerate(victims)}
        listed = ", ".join(":" + k for k in keys)
        self._exec(cur, f"DELETE FROM granary_logstream_chunks WHERE stream IN ({listed})", keys)
        self._exec(cur, f"DELETE FROM granary_logstreams WHERE name IN ({listed})", keys)
        total = sum(int(v["size"]) for v in victims)
        if total:
            self._exec(cur, "UPDATE granary_logstream_usage SET bytes = bytes - :t WHERE id = 1", {"t": total})

    async def write(
        self, res: LogStreamResource, first: WriteChunk, next_chunk: Callable[[], Awaitable[WriteChunk | None]]
    ) -> int:
        """Consume a ByteStream Write to a stream's write name; -> the committed size."""
        name = first.resource_name
        if not res.token:
            raise InvalidArgument(f"{name!r} is a log stream's read name; write to its write_resource_name")
        request: WriteChunk | None = first
        size = 0
        while request is not None:
            other = request.resource_name
            if other and other != name:
                raise InvalidArgument(f"resource_name changed within one Write stream: {other!r}")
            data = request.data
            finish = request.finish_write
            size = await self.queue.run(self._append, res, request.write_offset, data, finish, time.time())
            self._wake(res.stream_id)
            if finish:
                return size
            request = await next_chunk()
        return size  # ended without finish_write: the writer may resume at `size`

    def _status(self, res: LogStreamResource) -> tuple[int, bool]:
        with self._cursor(write=False) as cur:
            found = self._rows(cur, "SELECT instance, write_token, size, finished_time FROM granary_logstreams"
                                    " WHERE name = :s", {"s": res.stream_id})
        if not found or found[0]["instance"] != res.instance:
            raise NotFound(f"log stream {res.read_name!r} not found (never made, or finished and deleted)")
        if not hmac.compare_digest(found[0]["write_token"].encode(), res.token.encode(errors="replace")):
            raise PermissionDenied(f"the write token of {res.read_name!r} is wrong; only its writer may ask")
        return int(found[0]["size"]), found[0]["finished_time"] is not None

    async def query_write_status(self, res: LogStreamResource) -> tuple[int, bool]:
        """-> (committed size, finished)."""
        if not res.token:
            raise InvalidArgument(f"{res.read_name!r} is a log stream's read name; ask about its write_resource_name")
        return await self.queue.run(self._status, res)

    # ---- reading ------------------------------------------------------------

    def _fetch(self, res: LogStreamResource, pos: int) -> tuple[list[tuple[int, bytes]], int, bool] | None:
        """Chunks holding bytes from `pos` on (at most READ_BATCH), the size and whether it is finished,
        None if there is no such stream. The stream row is read first: once it says finished, every
        chunk is already committed."""
        with self._cursor(write=False) as cur:
            found = self._rows(cur, "SELECT instance, size, finished_time FROM granary_logstreams WHERE name = :s",
                               {"s": res.stream_id})
            if not found or found[0]["instance"] != res.instance:
                return None
            # from the chunk holding byte `pos` (the last one starting at or before it) on
            cur.execute(self.queue._text(
                "SELECT start_offset, data FROM granary_logstream_chunks WHERE stream = :s AND start_offset >="
                " COALESCE((SELECT MAX(start_offset) FROM granary_logstream_chunks WHERE stream = :s"
                " AND start_offset <= :pos), 0) ORDER BY start_offset LIMIT :k"),
                {"s": res.stream_id, "pos": pos, "k": READ_BATCH})
            chunks = [(int(o), bytes(d)) for o, d in cur.fetchall()]
        return chunks, int(found[0]["size"]), found[0]["finished_time"] is not None

    async def read(self, res: LogStreamResource, offset: int, limit: int) -> AsyncIterator[bytes]:
        """ByteStream Read of a stream: what it holds from `offset` (at most `limit` bytes, 0: all),
        then what is written to it until it is finished. NOT_FOUND before the first byte if there
        is no such stream."""
        if res.token:
            raise InvalidArgument(f"a log stream's write resource name cannot be read; read {res.read_name!r}")
        if offset < 0:
            raise OutOfRange(f"read_offset {offset} is negative")
        if limit < 0:
            raise OutOfRange(f"read_limit {limit} is negative")
        ev = asyncio.Event()
        self._waiters.setdefault(res.stream_id, set()).add(ev)  # before the first look: no wake-up is missed
        try:
            first = await self.queue.read(self._fetch, res, offset)
            if first is None:
                raise NotFound(f"log stream {res.read_name!r} not found (never made, or finished and deleted)")
            if first[2] and offset > first[1]:
                raise OutOfRange(f"read_offset {offset} is past the end of {res.read_name!r} ({first[1]} bytes)")
        except BaseException:
            self._unwait(res.stream_id, ev)
            raise
        return self._follow(res, offset, limit, first, ev)

    async def read_some(self, res: LogStreamResource, offset: int, limit: int, wait: float) -> tuple[bytes, int, bool]:
        """What a stream holds from `offset` (at most `limit` bytes), waiting up to `wait` seconds for a
        first byte when there is none there yet; -> (bytes, the stream's size, finished). For a client
        that polls instead of holding a Read open (the dashboard's live log): one answer per call, so
        nothing of the stream is held between calls. NOT_FOUND and OUT_OF_RANGE as Read."""
        if res.token:
            raise InvalidArgument(f"a log stream's write resource name cannot be read; read {res.read_name!r}")
        if offset < 0:
            raise OutOfRange(f"offset {offset} is negative")
        if limit <= 0:
            raise OutOfRange(f"limit {limit} is not positive")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, wait)
        ev = asyncio.Event()
        self._waiters.setdefault(res.stream_id, set()).add(ev)  # before the first look: no wake-up is missed
        try:
            while True:
                batch = await self.queue.read(self._fetch, res, offset)
                if batch is None:
                    raise NotFound(f"log stream {res.read_name!r} not found (never made, or finished and deleted)")
                chunks, size, finished = batch
                if finished and offset > size:
                    raise OutOfRange(f"offset {offset} is past the end of {res.read_name!r} ({size} bytes)")
                out = bytearray()
                for start, data in chunks:
                    at = offset + len(out)
                    if start + len(data) <= at:
                        continue
                    out += data[at - start:] if at > start else data
                    if len(out) >= limit:
                        break
                remaining = deadline - loop.time()
                if out or finished or remaining <= 0:
                    return bytes(out[:limit]), size, finished
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ev.wait(), min(self.cfg.poll_interval, remaining))
                ev.clear()
        finally:
            self._unwait(res.stream_id, ev)

    def _unwait(self, stream_id: str, ev: asyncio.Event) -> None:
        waiting = self._waiters.get(stream_id)
        if waiting is not None:
            waiting.discard(ev)
            if not waiting:
                del self._waiters[stream_id]

    async def _follow(
        self, res: LogStreamResource, offset: int, limit: int,
        batch: tuple[list[tuple[int, bytes]], int, bool] | None, ev: asyncio.Event,
    ) -> AsyncIterator[bytes]:
        pos = offset
        end = offset + limit if limit else None
        try:
            while True:
                if batch is None:
                    raise NotFound(f"log stream {res.read_name!r} was deleted while being read"
                                   " (execution.logstream.retention or max_total_bytes)")
                chunks, size, finished = batch
                pieces = []  # one ReadResponse per batch (1 MiB at most): a reader catching up gets big ones
                for start, data in chunks:
                    if start + len(data) <= pos:
                        continue
                    piece = data[pos - start :] if pos > start else data
                    if end is not None:
                        piece = piece[: end - pos]
                    pieces.append(piece)
                    pos += len(piece)
                    if end is not None and pos >= end:
                        break
                if pieces:
                    yield pieces[0] if len(pieces) == 1 else b"".join(pieces)
                if (end is not None and pos >= end) or (finished and pos >= size):
                    return
                if len(chunks) < READ_BATCH:  # caught up: wait for a write here, or look again later
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(ev.wait(), self.cfg.poll_interval)
                ev.clear()
                batch = await self.queue.read(self._fetch, res, pos)
        finally:
            self._unwait(res.stream_id, ev)

    # ---- cleanup ------------------------------------------------------------

    def sweep(self, now: float) -> tuple[int, int]:
        """Finish orphaned streams and delete expired ones; -> (finished, deleted)."""
        with self._cursor(write=True) as cur:
            finished = self._exec(
                cur, "UPDATE granary_logstreams SET finished_time = :now WHERE finished_time IS NULL"
                     " AND job_name IS NOT NULL AND NOT EXISTS (SELECT 1 FROM granary_jobs j"
                     " WHERE j.name = granary_logstreams.job_name AND j.bot_name IS NOT NULL AND j.stage != :done)",
                {"now": now, "done": COMPLETED})
            finished += self._exec(
                cur, "UPDATE granary_logstreams SET finished_time = :now WHERE finished_time IS NULL"
                     " AND job_name IS NULL AND updated_time < :idle", {"now": now, "idle": now - self.cfg.idle_timeout})
        deleted = 0
        for _ in range(SWEEP_ROUNDS):
            with self._cursor(write=True) as cur:
                victims = self._rows(
                    cur, "SELECT name, size FROM granary_logstreams WHERE finished_time < :cutoff"
                         f" ORDER BY finished_time LIMIT :k{self._skip_locked}",
                    {"cutoff": now - self.cfg.retention, "k": SWEEP_BATCH})
                if victims:
                    self._delete(cur, victims)
            deleted += len(victims)
            if len(victims) < SWEEP_BATCH:
                break
        return finished, deleted

    def usage(self) -> int:
        """Bytes all streams hold (the counter max_total_bytes is checked against)."""
        with self._cursor(write=False) as cur:
            rows = self._rows(cur, "SELECT bytes FROM granary_logstream_usage WHERE id = 1")
        return int(rows[0]["bytes"]) if rows else 0

    def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    def sweep_interval(self) -> float:
        return min(SWEEP_EVERY, max(0.5, self.cfg.retention / 4))

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval())
            try:
                finished, deleted = await self.queue.run(self.sweep, time.time())
                if finished or deleted:
                    log.debug("log streams: %d finished, %d deleted", finished, deleted)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("log stream cleanup failed")
