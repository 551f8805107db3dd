"""The build event store: SQL through SQLAlchemy Core (SQLite by default, PostgreSQL by URL).

Every method is synchronous and runs on the store's small thread pool (`run`), so the
event loop never waits on the database. One batch of events is one transaction: the
events, their streams' high-water marks and the invocation summaries decoded from them are
committed together, and only then acknowledged. SQLite writers take the write lock up front
(BEGIN IMMEDIATE) so several server processes wait their turn instead of failing.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import (
    Connection,
    and_,
    create_engine,
    delete,
    event,
    insert,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError

from granary._proto.google.devtools.build.v1 import build_events_pb2
from granary.bes import decode
from granary.bes.schema import events, invocations, metadata, streams
from granary.errors import ConfigError, FailedPrecondition, InvalidArgument, ResourceExhausted
from granary.sql import upsert
from granary.sqlite_wal import enable_wal

log = logging.getLogger("granary.bes")
T = TypeVar("T")
COMPONENTS = {v.number: v.name for v in build_events_pb2.StreamId.BuildComponent.DESCRIPTOR.values}
TOOL = build_events_pb2.StreamId.TOOL
PRUNE_BATCH = 500  # streams deleted per transaction, so pruning never holds the write lock for long

Key = tuple[str, int, str]  # (build_id, component, invocation_id)


def stream_name(key: Key) -> str:
    """What QueryEvents' regex is matched against: BUILD_ID/INVOCATION_ID/COMPONENT."""
    return f"{key[0]}/{key[2]}/{COMPONENTS.get(key[1], str(key[1]))}"


@dataclass
class Incoming:
    """One event as received, checked for shape (ingest.py) but not yet for order."""

    key: Key
    sequence: int
    event: build_events_pb2.BuildEvent
    payload: bytes  # event serialized: compared byte for byte with a stored copy first
    project_id: str
    keywords: list[str]
    bazel: Any = None  # the Bazel event inside, decoded before the transaction (None: not one)
    duplicate: bool = False  # stored meanwhile by another call: acknowledged, not counted again


@dataclass
class CallState:
    """What one publishing call knows between its batches: each stream's high-water mark and
    the summaries of its invocations (loaded once, written back with every batch)."""

    known: dict[Key, int] = field(default_factory=dict)
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)


def same_event(stored: bytes, payload: bytes) -> bool:
    if stored == payload:
        return True
    a, b = build_events_pb2.BuildEvent(), build_events_pb2.BuildEvent()
    try:
        a.ParseFromString(stored)
        b.ParseFromString(payload)
    except Exception:  # noqa: BLE001 - unreadable is simply different
        return False
    return a == b


def encode_token(values: Sequence[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(values)).encode()).decode()


def decode_token(token: str, types: Sequence[type]) -> list[Any]:
    try:
        values = json.loads(base64.urlsafe_b64decode(token.encode()))
        if not isinstance(values, list) or len(values) != len(types):
            raise ValueError
        return [t(v) for t, v in zip(types, values, strict=True)]
    except (ValueError, TypeError) as e:
        raise InvalidArgument(f"page_token {token[:80]!r} is not one this server gave out") from e


class EventStore:
    def __init__(self, url: str, *, max_events_per_stream: int = 1_000_000, threads: int = 4):
        self.url = url
        self.max_events_per_stream = max_events_per_stream
        self.is_sqlite = url.startswith("sqlite")
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="granary-bes")
        self.engine = self._make_engine(url, write=True)
        self.read_engine = self._make_engine(url, write=False) if self.is_sqlite else self.engine

    def _make_engine(self, url: str, write: bool) -> Engine:
        if self.is_sqlite:
            engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

            @event.listens_for(engine, "connect")
            def _connect(dbapi_conn, _record) -> None:
                dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
                enable_wal(dbapi_conn)

            @event.listens_for(engine, "begin")
            def _begin(conn) -> None:
                conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

            return engine
        return create_engine(url, pool_size=8, max_overflow=8, pool_pre_ping=True)

    def create_schema(self) -> None:
        try:
            with self.engine.begin() as conn:
                if self.engine.dialect.name == "postgresql":  # several processes may start at once
                    conn.execute(text("SELECT pg_advisory_xact_lock(7426336)"))
                metadata.create_all(conn, checkfirst=True)
        except OperationalError as e:
            safe = self.engine.url.render_as_string(hide_password=True)
            raise ConfigError(f"build_events.database: cannot open {safe}: {e.orig}") from None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.engine.dispose()
        if self.read_engine is not self.engine:
            self.read_engine.dispose()

    # ---- ingestion ----------------------------------------------------------------------

    def ingest(self, state: CallState, batch: list[Incoming], lenient: bool = False,
               now: float | None = None) -> tuple[int, Exception | None]:
        """Store a batch in order -> (how many of its events are acknowledged, the error that
        stopped it or None). An event whose sequence number is already stored is acknowledged
        again when it is the same event (a retry) and refused otherwise; one past the stream's
        end is stored; one further on is a gap (refused, unless `lenient`: lifecycle events).
        Everything before the first refused event is committed."""
        now = time.time() if now is None else now
        for item in batch:
            item.bazel = decode.bazel_event(item.event)
        with self.engine.begin() as conn:
            fresh: list[tuple[int, Incoming]] = []  # (index in batch, event) to insert
            pending: dict[tuple[Key, int], bytes] = {}
            error: Exception | None = None
            done = len(batch)
            for i, item in enumerate(batch):
                error = self._place(conn, state, item, pending, fresh, i, lenient)
                if error is not None:
                    done = i
                    break
            stored_upto, conflict = self._insert(conn, state, fresh, now)
            if conflict is not None and stored_upto < done:
                done, error = stored_upto, conflict
            inserted = [item for i, item in fresh if i < done]
            self._streams(conn, inserted, now)
            self._summaries(conn, state, inserted, now)
        return done, error

    def _known(self, conn: Connection, state: CallState, key: Key) -> int:
        if key not in state.known:
            row = conn.execute(select(streams.c.last_sequence).where(*self._key_is(streams, key))).first()
            state.known[key] = row[0] if row is not None else 0
        return state.known[key]

    @staticmethod
    def _key_is(table, key: Key) -> list[Any]:
        return [table.c.build_id == key[0], table.c.component == key[1], table.c.invocation_id == key[2]]

    def _stored(self, conn: Connection, key: Key, seq: int) -> bytes | None:
        row = conn.execute(select(events.c.payload).where(*self._key_is(events, key), events.c.sequence == seq)).first()
        return None if row is None else bytes(row[0])

    def _place(self, conn: Connection, state: CallState, item: Incoming, pending: dict[tuple[Key, int], bytes],
               fresh: list[tuple[int, Incoming]], index: int, lenient: bool) -> Exception | None:
        key, seq = item.key, item.sequence
        name = stream_name(key)
        known = self._known(conn, state, key)
        if seq <= known or (key, seq) in pending:
            stored = pending.get((key, seq))
            if stored is None:
                stored = self._stored(conn, key, seq)
            if stored is None and lenient:
                pass  # a lifecycle event filling an earlier gap: stored below
            elif stored is None:
                return FailedPrecondition(f"stream {name}: sequence_number {seq} is below the stream's end"
                                          f" ({known}) but no longer stored")
            elif same_event(stored, item.payload):
                return None  # a retry of a stored event: acknowledged again
            else:
                return FailedPrecondition(
                    f"stream {name}: sequence_number {seq} is already stored with a different event"
                    " (a stream's events cannot be rewritten)")
        elif seq != known + 1 and not lenient:
            fresh_known = conn.execute(
                select(streams.c.last_sequence).where(*self._key_is(streams, key))).scalar() or 0
            if fresh_known >= seq or fresh_known + 1 == seq:  # another call moved the stream on
                state.known[key] = fresh_known
                return self._place(conn, state, item, pending, fresh, index, lenient)
            expected = known + 1
            first = " (a stream's first event is number 1)" if expected == 1 else ""
            return FailedPrecondition(
                f"stream {name}: expected sequence_number {expected}, got {seq}{first}; events must arrive in"
                " order without gaps (a retried stream resumes at the first event not acknowledged)")
        if seq > self.max_events_per_stream:
            return ResourceExhausted(f"stream {name}: more than build_events.max_events_per_stream"
                                     f" ({self.max_events_per_stream}) events")
        pending[(key, seq)] = item.payload
        fresh.append((index, item))
        state.known[key] = max(known, seq)
        return None

    def _row(self, item: Incoming, now: float) -> dict[str, Any]:
        t = item.event.event_time
        kind = decode.kind_of(item.event, item.bazel)
        return {
            "build_id": item.key[0], "component": item.key[1], "invocation_id": item.key[2], "sequence": item.sequence,
            "kind": kind[:64], "event_time": t.seconds + t.nanos / 1e9 if t.seconds or t.nanos else now,
            "received_time": now, "payload": item.payload,
        }

    def _insert(self, conn: Connection, state: CallState, fresh: list[tuple[int, Incoming]],
                now: float) -> tuple[int, Exception | None]:
        """Insert the new events -> (index in the batch up to which all is stored, a conflict).
        All at once; should another call have stored some of them meanwhile, one by one."""
        if not fresh:
            return 1 << 62, None
        rows = [self._row(item, now) for _, item in fresh]
        try:
            with conn.begin_nested():
                conn.execute(insert(events), rows)
            return 1 << 62, None
        except IntegrityError:
            pass
        stmt = upsert(self.engine, events, ["build_id", "component", "invocation_id", "sequence"], None)
        for (index, item), row in zip(fresh, rows, strict=True):
            if conn.execute(stmt, row).rowcount == 1:
                continue
            stored = self._stored(conn, item.key, item.sequence)
            if stored is None or not same_event(stored, item.payload):
                return index, FailedPrecondition(
                    f"stream {stream_name(item.key)}: sequence_number {item.sequence} was stored meanwhile with a"
                    " different event")
            item.duplicate = True
        return 1 << 62, None

    def _streams(self, conn: Connection, inserted: list[Incoming], now: float) -> None:
        last: dict[Key, Incoming] = {}
        finished: set[Key] = set()
        for item in inserted:
            if item.key not in last or item.sequence > last[item.key].sequence:
                last[item.key] = item
            if item.event.WhichOneof("event") == "component_stream_finished":
                finished.add(item.key)
        for key, item in last.items():
            conn.execute(upsert(self.engine, streams, ["build_id", "component", "invocation_id"], None), {
                "build_id": key[0], "component": key[1], "invocation_id": key[2], "name": stream_name(key),
                "project_id": item.project_id, "keywords": json.dumps(item.keywords), "first_time": now,
                "last_time": now, "last_sequence": 0, "finished": False,
            })
            values: dict[str, Any] = {"last_time": now}
            if key in finished:
                values["finished"] = True
            conn.execute(update(streams).where(*self._key_is(streams, key)).values(**values))
            conn.execute(update(streams).where(*self._key_is(streams, key), streams.c.last_sequence < item.sequence)
                         .values(last_sequence=item.sequence))
            if item.keywords:
                conn.execute(update(streams).where(*self._key_is(streams, key), streams.c.keywords == "[]")
                             .values(keywords=json.dumps(item.keywords)))

    def _summaries(self, conn: Connection, state: CallState, inserted: list[Incoming], now: float) -> None:
        touched: set[str] = set()
        for item in inserted:
            build_id, component, invocation_id = item.key
            if not invocation_id or item.duplicate:
                continue
            bazel = item.bazel
            lifecycle = item.event.WhichOneof("event") in ("invocation_attempt_started", "invocation_attempt_finished")
            if bazel is None and not lifecycle and component != TOOL:
                continue
            summary = state.summaries.get(invocation_id)
            if summary is None:
                row = conn.execute(select(invocations).where(invocations.c.invocation_id == invocation_id)).mappings().first()
                summary = dict(row) if row is not None else decode.empty_summary(invocation_id, build_id, now)
                summary["_new"] = row is None
                state.summaries[invocation_id] = summary
            summary["last_time"] = now
            if item.project_id:
                summary["project_id"] = item.project_id[:255]
            if lifecycle and item.event.WhichOneof("event") == "invocation_attempt_finished":
                status = item.event.invocation_attempt_finished.invocation_status
                summary["lifecycle_result"] = status.Result.Name(status.result)
            if component == TOOL:
                summary["events"] += 1
                if item.event.WhichOneof("event") == "component_stream_finished":
                    summary["stream_finished"] = True
            if bazel is not None:
                decode.apply(summary, bazel)
            touched.add(invocation_id)
        for invocation_id in touched:
            summary = state.summaries[invocation_id]
            values = {k: v for k, v in summary.items() if not k.startswith("_")}
            if summary["_new"]:
                conn.execute(upsert(self.engine, invocations, ["invocation_id"], None), values)
                summary["_new"] = False
                continue
            conn.execute(update(invocations).where(invocations.c.invocation_id == invocation_id).values(**values))

    def lifecycle_present(self, key: Key, sequence: int) -> bool:
        """Is event `sequence` of stream `key` stored (check_preceding_lifecycle_events_present)?"""
        with self.read_engine.connect() as conn:
            return self._stored(conn, key, sequence) is not None

    # ---- queries ------------------------------------------------------------------------

    def stream_names(self, like: str | None, limit: int) -> list[tuple[str, Key]]:
        """The `limit` most recently active streams (whose names are LIKE `like`) -> (name, key)."""
        q = select(streams.c.name, streams.c.build_id, streams.c.component, streams.c.invocation_id)
        if like is not None:
            q = q.where(streams.c.name.like(like, escape="\\"))
        q = q.order_by(streams.c.last_time.desc()).limit(limit)
        with self.read_engine.connect() as conn:
            return [(r[0], (r[1], r[2], r[3])) for r in conn.execute(q)]

    def events_of(self, key: Key, after: int, limit: int) -> list[Any]:
        q = (select(events.c.sequence, events.c.payload, events.c.received_time, streams.c.project_id, streams.c.keywords)
             .join(streams, and_(streams.c.build_id == events.c.build_id, streams.c.component == events.c.component,
                                 streams.c.invocation_id == events.c.invocation_id))
             .where(*self._key_is(events, key), events.c.sequence > after)
             .order_by(events.c.sequence).limit(limit))
        with self.read_engine.connect() as conn:
            return list(conn.execute(q))

    def list_invocations(self, limit: int, after: tuple[float, str] | None, build_id: str) -> list[Any]:
        q = select(invocations)
        if build_id:
            q = q.where(invocations.c.build_id == build_id)
        if after is not None:
            q = q.where(or_(invocations.c.created_time < after[0],
                            and_(invocations.c.created_time == after[0], invocations.c.invocation_id < after[1])))
        q = q.order_by(invocations.c.created_time.desc(), invocations.c.invocation_id.desc()).limit(limit)
        with self.read_engine.connect() as conn:
            return list(conn.execute(q).mappings())

    def summaries(self, invocation_ids: Sequence[str]) -> list[Any]:
        """The summary rows of those of these invocations that are stored (one query; the dashboard
        asks for the invocation ids of a page of operations, to link each to its build)."""
        if not invocation_ids:
            return []
        with self.read_engine.connect() as conn:
            return list(conn.execute(
                select(invocations).where(invocations.c.invocation_id.in_(list(invocation_ids)))).mappings())

    def invocation(self, invocation_id: str, max_events: int) -> tuple[Any, list[bytes], bool]:
        """The summary row of an invocation (None: unknown), the payloads of its tool streams'
        events in order (at most max_events) and whether there were more."""
        with self.read_engine.connect() as conn:
            row = conn.execute(select(invocations).where(invocations.c.invocation_id == invocation_id)).mappings().first()
            if row is None:
                return None, [], False
            q = (select(events.c.payload).where(events.c.invocation_id == invocation_id, events.c.component == TOOL)
                 .order_by(events.c.build_id, events.c.sequence).limit(max_events + 1))
            payloads = [bytes(r[0]) for r in conn.execute(q)]
        return row, payloads[:max_events], len(payloads) > max_events

    # ---- retention ----------------------------------------------------------------------

    def prune(self, cutoff: float) -> tuple[int, int]:
        """Delete streams (with their events) and invocations last touched before `cutoff`
        -> (streams, invocations) deleted. In small transactions."""
        gone_streams = 0
        while True:
            with self.engine.begin() as conn:
                keys = [tuple(r) for r in conn.execute(
                    select(streams.c.build_id, streams.c.component, streams.c.invocation_id)
                    .where(streams.c.last_time < cutoff).limit(PRUNE_BATCH))]
                for key in keys:
                    conn.execute(delete(events).where(*self._key_is(events, key)))
                if keys:
                    conn.execute(delete(streams).where(
                        tuple_(streams.c.build_id, streams.c.component, streams.c.invocation_id).in_(keys)))
            gone_streams += len(keys)
            if len(keys) < PRUNE_BATCH:
                break
        with self.engine.begin() as conn:
            gone_invocations = conn.execute(delete(invocations).where(invocations.c.last_time < cutoff)).rowcount
        return gone_streams, gone_invocations

    async def run_cleanup(self, retention: float, interval: float) -> None:
        """Prune what `retention` expired every `interval` seconds (a server process's task)."""
        while True:
            try:
                streams_gone, invocations_gone = await self.run(self.prune, time.time() - retention)
                if streams_gone or invocations_gone:
                    log.info("build events: deleted %d streams and %d invocations older than %gs",
                             streams_gone, invocations_gone, retention)
            except Exception as e:  # noqa: BLE001 - the next round tries again
                log.warning("build events cleanup failed: %s: %s", type(e).__name__, e)
            await asyncio.sleep(interval)
