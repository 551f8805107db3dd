"""The durable job queue: SQL through SQLAlchemy Core (SQLite or PostgreSQL).

Every method here is synchronous and short; `run` calls them on a small
thread pool so the event loop never blocks on the database. Assignment is
safe with several server processes on one database: PostgreSQL locks the
picked rows with SELECT ... FOR UPDATE SKIP LOCKED, SQLite serialises
writers (BEGIN IMMEDIATE) and every state change is a conditional UPDATE.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from google.rpc import code_pb2
from sqlalchemy import and_, create_engine, delete, event, func, or_, select, text, update
from sqlalchemy.engine import Connection, Engine, RowMapping
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from granary.errors import ConfigError, InvalidArgument, NotFound
from granary.execution import leases, opfilter
from granary.execution.operations import COMPLETED, EXECUTING, QUEUED, cancelled_response, error_response
from granary.execution.platform import Capabilities, from_key, unsatisfied_reason
from granary.execution.schema import add_missing_columns, bots, jobs, metadata, operations
from granary.resource_names import parse_logstream
from granary.sqlite_wal import enable_wal

log = logging.getLogger("granary.execution.queue")
T = TypeVar("T")
NOTIFY_CHANNEL = "granary_jobs"
DEFAULT_LEASE_ACK_TIMEOUT = 30.0

_FILTER_COLUMNS = {
    "name": operations.c.name,
    "stage": jobs.c.stage,
    "queued_time": jobs.c.queued_time,
    "start_time": jobs.c.start_time,
    "completed_time": jobs.c.completed_time,
    "tool_name": operations.c.tool_name,
    "tool_version": operations.c.tool_version,
    "invocation_id": operations.c.invocation_id,
    "correlated_invocations_id": operations.c.correlated_invocations_id,
    "identity": operations.c.identity,
}


def _bump() -> dict[str, Any]:
    return {"version": jobs.c.version + 1}


# ---- the hot path in plain SQL ----------------------------------------------------------
#
# Every action costs each server a handful of statements (enqueue, offer, acknowledge,
# finish, and the reads of every Execute stream and bot report). Through SQLAlchemy Core each
# statement cost 0.6-9 ms of Python here (about 600 Python calls to build, key, compile and
# run it), against 0.05-0.1 ms for the same query on the DB-API cursor: that machinery, not
# the database, was most of a server's CPU per action. So these statements are written once
# as SQL text (portable: SQLite and PostgreSQL) and run on the pool's DB-API connection, with
# the same transactions, locks and conditional updates as before; DB-API errors are re-raised
# as SQLAlchemy's (OperationalError still means "database unavailable").

JOB_COLUMNS = tuple(c.name for c in jobs.columns)
OP_COLUMNS = tuple(c.name for c in operations.columns)
_JOB_SELECT = ", ".join(JOB_COLUMNS)
_OP_JOB_SELECT = ", ".join([f"o.{c}" for c in OP_COLUMNS] + [f"j.{c}" for c in JOB_COLUMNS])
_WAITING = ("queue = :queue AND stage = :queued AND bot_name IS NULL AND (assigned_time IS NULL OR worker IS NULL"
            " OR worker != :worker OR assigned_time <= :lapsed)")


def _defaults(table) -> dict[str, Any]:
    """Column defaults SQLAlchemy would fill in on insert (scalars only)."""
    return {c.name: c.default.arg for c in table.columns if c.default is not None and c.default.is_scalar}


_JOB_DEFAULTS = _defaults(jobs)
_OP_DEFAULTS = _defaults(operations)
_BOT_DEFAULTS = _defaults(bots)


class JobQueue:
    def __init__(
        self, url: str, *, retry_limit: int = 3, threads: int = 8,
        lease_ack_timeout: float = DEFAULT_LEASE_ACK_TIMEOUT,
    ):
        """lease_ack_timeout (execution.lease_ack_timeout): seconds a bot has to acknowledge
        a lease offered to it before `reap` takes it back for other bots."""
        if lease_ack_timeout <= 0:
            raise ValueError(f"lease_ack_timeout must be above 0, got {lease_ack_timeout}")
        self.url = url
        self.retry_limit = retry_limit
        self.lease_ack_timeout = lease_ack_timeout
        self.is_postgres = url.startswith("postgresql")
        self.is_sqlite = url.startswith("sqlite")
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="granary-sql")
        self.engine = self._make_engine(url, write=True)
        self.read_engine = self._make_engine(url, write=False) if self.is_sqlite else self.engine
        self._caps_cache: dict[tuple[str, str], bool] = {}
        self._sql: dict[str, str] = {}  # SQL text with :name parameters -> this driver's paramstyle
        self._dbapi = self.engine.dialect.dbapi
        self._known_platforms: list[Capabilities] | None = None  # None: never fail a job for its platform
        self._platform_grace = 0.0

    def set_platform_policy(self, known: Sequence[Capabilities], grace: float) -> None:
        """Queued jobs that neither a live bot nor one of `known` can run fail once a process
        has been up for `grace` seconds (see fail_unsatisfiable; `reap` applies it)."""
        self._known_platforms = list(known)
        self._platform_grace = grace

    # ---- set-up -------------------------------------------------------------

    def _make_engine(self, url: str, write: bool) -> Engine:
        if self.is_sqlite:
            engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

            @event.listens_for(engine, "connect")
            def _connect(dbapi_conn, _record) -> None:
                dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
                enable_wal(dbapi_conn)
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA busy_timeout=60000")
                cur.close()

            @event.listens_for(engine, "begin")
            def _begin(conn) -> None:
                conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

            return engine
        return create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)

    def create_schema(self) -> None:
        try:
            if self.is_postgres:
                with self.engine.begin() as conn:  # several processes may start at once
                    conn.execute(text("SELECT pg_advisory_xact_lock(7426335)"))
                    self._create(conn)
            else:
                with self.engine.begin() as conn:
                    self._create(conn)
        except OperationalError as e:
            raise ConfigError(f"execution.database: cannot open {self.safe_url()}: {e.orig}") from None

    @staticmethod
    def _create(conn: Connection) -> None:
        """Tables of a new database; columns added since for one made by an older Granary."""
        tables = list(metadata.sorted_tables)
        for table in tables:
            table.create(conn, checkfirst=True)
        add_missing_columns(conn)
        for table in tables:
            for index in table.indexes:
                index.create(conn, checkfirst=True)

    def safe_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """A short read of one statement (get_operation, held_jobs), on the thread pool."""
        return await self.run(fn, *args)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.engine.dispose()
        if self.read_engine is not self.engine:
            self.read_engine.dispose()

    def _notify(self, conn: Connection) -> None:
        if self.is_postgres:
            conn.execute(text(f"NOTIFY {NOTIFY_CHANNEL}"))

    # ---- plain SQL (see the note at the top) ----------------------------------------------

    def _text(self, sql: str) -> str:
        """SQL with :name parameters in the driver's paramstyle (SQLite takes :name as is)."""
        out = self._sql.get(sql)
        if out is None:
            out = sql
            if self._dbapi.paramstyle in ("pyformat", "format"):
                out = re.sub(r"(?<![:\w]):(\w+)", r"%(\1)s", sql.replace("%", "%%"))
            self._sql[sql] = out
        return out

    @contextlib.contextmanager
    def _cursor(self, write: bool) -> Iterator[Any]:
        """A DB-API cursor; write: inside one transaction (BEGIN IMMEDIATE on SQLite), committed
        on success and rolled back on error. Reads are single statements (atomic on their own)."""
        engine = self.engine if write else self.read_engine
        conn = engine.raw_connection()
        cur = None
        try:
            cur = conn.cursor()
            if write and self.is_sqlite:
                cur.execute("BEGIN IMMEDIATE")
            yield cur
            if write or not self.is_sqlite:
                conn.commit()
        except self._dbapi.Error as e:
            with contextlib.suppress(Exception):
                conn.rollback()
            if engine.dialect.is_disconnect(e, conn, cur):
                conn.invalidate(e)
            raise DBAPIError.instance(None, None, e, self._dbapi.Error) from e
        except BaseException:
            with contextlib.suppress(Exception):
                conn.rollback()
            raise
        finally:
            if cur is not None:
                with contextlib.suppress(Exception):
                    cur.close()
            conn.close()

    def _exec(self, cur: Any, sql: str, params: dict[str, Any] | None = None) -> int:
        cur.execute(self._text(sql), params or {})
        return cur.rowcount

    def _rows(self, cur: Any, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        cur.execute(self._text(sql), params or {})
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]

    def _raw_notify(self, cur: Any) -> None:
        if self.is_postgres:
            cur.execute(f"NOTIFY {NOTIFY_CHANNEL}")

    def _insert(self, cur: Any, table, row: dict[str, Any], defaults: dict[str, Any]) -> None:
        values = {**defaults, **row}
        cols = list(values)
        self._exec(cur, f"INSERT INTO {table.name} ({', '.join(cols)}) VALUES ({', '.join(':' + c for c in cols)})",
                   values)

    # ---- enqueue and merge --------------------------------------------------

    def enqueue(self, job: dict[str, Any], op: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Insert the job (or attach to an identical in-flight one) and its operation."""
        for _ in range(5):
            try:
                with self._cursor(write=True) as cur:
                    existing = None
                    if job["active_key"] is not None:
                        found = self._rows(cur, f"SELECT {_JOB_SELECT} FROM granary_jobs WHERE active_key = :k",
                                           {"k": job["active_key"]})
                        existing = found[0] if found else None
                    if existing is not None:
                        self._insert(cur, operations, {**op, "job_name": existing["name"]}, _OP_DEFAULTS)
                        if job["priority"] < existing["priority"]:
                            self._exec(cur, "UPDATE granary_jobs SET priority = :p, version = version + 1"
                                            " WHERE name = :n", {"p": job["priority"], "n": existing["name"]})
                        return existing, True
                    self._insert(cur, jobs, job, _JOB_DEFAULTS)
                    self._insert(cur, operations, {**op, "job_name": job["name"]}, _OP_DEFAULTS)
                    self._raw_notify(cur)
                    return job, False
            except IntegrityError:
                continue  # another process inserted the same action first: attach to it
        raise RuntimeError(f"could not enqueue job for {job['action_key']}")

    # ---- reading ------------------------------------------------------------

    def get_operation(self, name: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """(operation row, job row), in one statement."""
        with self._cursor(write=False) as cur:
            cur.execute(self._text(f"SELECT {_OP_JOB_SELECT} FROM granary_operations o"
                                   " JOIN granary_jobs j ON j.name = o.job_name WHERE o.name = :n"), {"n": name})
            row = cur.fetchone()
        if row is None:
            return None
        k = len(OP_COLUMNS)
        return dict(zip(OP_COLUMNS, row[:k])), dict(zip(JOB_COLUMNS, row[k:]))

    def get_job(self, name: str) -> RowMapping | None:
        with self.read_engine.connect() as conn:
            return conn.execute(select(jobs).where(jobs.c.name == name)).mappings().first()

    def versions(self, names: Sequence[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        with self.read_engine.connect() as conn:
            for i in range(0, len(names), 500):
                chunk = list(names[i : i + 500])
                for name, version in conn.execute(select(jobs.c.name, jobs.c.version).where(jobs.c.name.in_(chunk))):
                    out[name] = version
        return out

    def queue_signature(self) -> tuple:
        with self.read_engine.connect() as conn:
            row = conn.execute(
                select(func.count(), func.max(jobs.c.version), func.max(jobs.c.queued_time))
                .where(jobs.c.stage == QUEUED, jobs.c.bot_name.is_(None))
            ).first()
            return tuple(row) if row else ()

    def list_operations(
        self, instance: str, filter_text: str, page_size: int, page_token: str, owner: str | None = None
    ) -> tuple[list[tuple[RowMapping, RowMapping]], str]:
        """`owner`: only the operations of this identity (None: everyone's)."""
        query = opfilter.parse(filter_text)
        offset = _decode_token(page_token)
        page_size = min(page_size or 100, 1000)
        # A job's instance is its operations' (merged jobs share one): the condition on both lets the
        # database walk the job listing indexes (schema.py) in the order asked for. SQLite, which has
        # no statistics, would rather walk every operation of the instance and sort them all (390 ms
        # for 100,000, bench/bench_dashboard.py), so there the operations' index is kept out of it
        # unless the listing is one caller's own.
        op_instance = operations.c.instance
        if self.is_sqlite and owner is None:
            op_instance = op_instance.op("||")("")
        conds = [op_instance == instance, jobs.c.instance == instance]
        if owner is not None:
            conds.append(operations.c.identity == owner)
        for c in query.conditions:
            col = _FILTER_COLUMNS[c.field]
            conds.append({
                "=": col == c.value, "!=": col != c.value, ">": col > c.value,
                ">=": col >= c.value, "<": col < c.value, "<=": col <= c.value,
            }[c.op])
        order = [(_FILTER_COLUMNS[f].desc() if desc else _FILTER_COLUMNS[f].asc()) for f, desc in query.sort]
        if not order:
            order = [jobs.c.queued_time.asc()]
        order.append(operations.c.name.asc())
        stmt = (
            select(operations, jobs)
            .join(jobs, jobs.c.name == operations.c.job_name)
            .where(and_(*conds))
            .order_by(*order)
            .offset(offset)
            .limit(page_size + 1)
        )
        op_cols = [c.name for c in operations.columns]
        with self.read_engine.connect() as conn:
            rows = conn.execute(stmt).all()
        out = []
        for row in rows[:page_size]:
            values = list(row)
            op = dict(zip(op_cols, values[: len(op_cols)]))
            job = dict(zip([c.name for c in jobs.columns], values[len(op_cols) :]))
            out.append((op, job))
        token = _encode_token(offset + page_size) if len(rows) > page_size else ""
        return out, token  # type: ignore[return-value]

    # ---- cancel and delete --------------------------------------------------

    def cancel_operation(self, name: str, now: float) -> tuple[str, str | None]:
        """Cancel one operation; its job too once no live operation wants it. -> (job, bot holding it)."""
        with self.engine.begin() as conn:
            op = conn.execute(select(operations).where(operations.c.name == name)).mappings().first()
            if op is None:
                raise NotFound(f"operation {name!r} not found")
            job = conn.execute(select(jobs).where(jobs.c.name == op["job_name"])).mappings().first()
            if job is not None and job["stage"] == COMPLETED:
                return job["name"], job["bot_name"]  # too late: it keeps the answer it has
            conn.execute(update(operations).where(operations.c.name == name).values(cancelled=True))
            if job is None:
                return op["job_name"], None
            live = conn.execute(
                select(func.count()).select_from(operations)
                .where(operations.c.job_name == job["name"], operations.c.cancelled.is_(False))
            ).scalar_one()
            values: dict[str, Any] = _bump()
            if not live and job["stage"] != COMPLETED:
                values.update(
                    stage=COMPLETED, completed_time=now, active_key=None,
                    response=cancelled_response().SerializeToString(),
                )
                if job["bot_name"] is not None:
                    values["lease_state"] = leases.CANCELLED
            conn.execute(update(jobs).where(jobs.c.name == job["name"]).values(**values))
            self._notify(conn)
            return job["name"], job["bot_name"]

    def delete_operation(self, name: str) -> None:
        with self.engine.begin() as conn:
            op = conn.execute(select(operations).where(operations.c.name == name)).mappings().first()
            if op is None:
                raise NotFound(f"operation {name!r} not found")
            conn.execute(delete(operations).where(operations.c.name == name))
            others = conn.execute(
                select(func.count()).select_from(operations).where(operations.c.job_name == op["job_name"])
            ).scalar_one()
            if not others:  # a finished job nobody refers to is gone; a running one still fills the cache
                conn.execute(delete(jobs).where(jobs.c.name == op["job_name"], jobs.c.stage == COMPLETED,
                                                jobs.c.bot_name.is_(None)))

    # ---- bots ---------------------------------------------------------------

    def bot_exists(self, name: str) -> bool:
        with self.read_engine.connect() as conn:
            return conn.execute(select(bots.c.name).where(bots.c.name == name)).first() is not None

    def touch_bot(self, row: dict[str, Any]) -> None:
        """Insert or refresh a bot session row."""
        values = {k: v for k, v in row.items() if k not in ("name", "created_time")}
        with self._cursor(write=True) as cur:
            found = self._exec(cur, f"UPDATE granary_bots SET {', '.join(f'{k} = :{k}' for k in values)}"
                                    " WHERE name = :name", {**values, "name": row["name"]})
            if not found:
                self._insert(cur, bots, row, _BOT_DEFAULTS)

    def seen_bot(self, name: str, now: float) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(bots).where(bots.c.name == name).values(last_seen=now))

    def live_bot_properties(self, queue: str, since: float) -> list[list[tuple[str, str]]]:
        with self.read_engine.connect() as conn:
            rows = conn.execute(
                select(bots.c.properties).where(bots.c.queue == queue, bots.c.last_seen >= since).distinct()
            ).scalars().all()
        return [[(str(k), str(v)) for k, v in json.loads(r)] for r in rows]

    def replace_sessions(self, bot_id: str, queue: str, name: str, reported: Sequence[str], now: float) -> list[str]:
        """A bot opened session `name`: its older sessions are over (it restarted, e.g. after a crash).

        Jobs they held move to the new session if it reports their lease, and
        are re-queued (counting toward retry_limit) if it does not. -> jobs re-queued or failed.
        """
        with self.engine.begin() as conn:
            old = select(bots.c.name).where(bots.c.bot_id == bot_id, bots.c.queue == queue, bots.c.name != name)
            held = conn.execute(
                select(jobs.c.name, jobs.c.bot_name).where(
                    jobs.c.queue == queue, jobs.c.bot_name.is_not(None), jobs.c.bot_name != name,
                    or_(jobs.c.worker == bot_id, jobs.c.bot_name.in_(old)),
                )
            ).all()
            keep = set(reported)
            changed: list[str] = []
            for job_name, old_session in held:
                if job_name in keep:
                    conn.execute(
                        update(jobs).where(jobs.c.name == job_name, jobs.c.bot_name == old_session)
                        .values(bot_name=name, **_bump())
                    )
                    continue
                reason = f"worker {bot_id} came back (new session) without this lease"
                if self._requeue(conn, job_name, old_session, reason, now) in ("requeued", "failed"):
                    changed.append(job_name)
            conn.execute(delete(bots).where(bots.c.bot_id == bot_id, bots.c.queue == queue, bots.c.name != name))
            return changed

    def held_jobs(self, bot_name: str) -> dict[str, dict[str, Any]]:
        with self._cursor(write=False) as cur:
            rows = self._rows(cur, f"SELECT {_JOB_SELECT} FROM granary_jobs WHERE bot_name = :b", {"b": bot_name})
        return {r["name"]: r for r in rows}

    def assign(
        self, bot_name: str, worker: str, queue: str, caps: Capabilities, n: int, now: float,
        limit: int | None = None, also: Callable[[Any, list[dict[str, Any]], float], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Give up to n queued jobs this bot can run, most urgent (then oldest) first.

        With `limit`, the session never holds more than `limit` unfinished jobs, counted
        in the same transaction (several calls for one session at once cannot exceed it).
        `also(cursor, rows, now)` runs in the same transaction on the jobs given (the live output
        streams of a bot that streams: no second write transaction per assignment).
        """
        if n <= 0:
            return []
        with self._cursor(write=True) as cur:
            if limit is not None:
                if self.is_postgres:  # serialise the session's own concurrent calls
                    self._exec(cur, "SELECT name FROM granary_bots WHERE name = :b FOR UPDATE", {"b": bot_name})
                cur.execute(self._text("SELECT count(*) FROM granary_jobs WHERE bot_name = :b AND stage != :done"),
                            {"b": bot_name, "done": COMPLETED})
                held = cur.fetchone()[0]
                n = min(n, limit - held)
                if n <= 0:
                    return []
            # an offer this worker let lapse goes to the others first (see lapse_offers)
            waiting = {"queue": queue, "queued": QUEUED, "worker": worker, "lapsed": now - self.lease_ack_timeout}
            cur.execute(self._text(f"SELECT DISTINCT platform_key FROM granary_jobs WHERE {_WAITING}"), waiting)
            usable = [k for (k,) in cur.fetchall() if self._satisfies(caps, k)]
            if not usable:
                return []
            keys = {f"k{i}": k for i, k in enumerate(usable)}
            pick = (f"SELECT name FROM granary_jobs WHERE {_WAITING} AND platform_key IN"
                    f" ({', '.join(':' + k for k in keys)}) ORDER BY priority ASC, queued_time ASC LIMIT :n")
            if self.is_postgres:
                pick += " FOR UPDATE SKIP LOCKED"
            cur.execute(self._text(pick), {**waiting, **keys, "n": n})
            names = [r[0] for r in cur.fetchall()]
            if not names:
                return []
            rows: list[dict[str, Any]] = []
            for name in names:
                taken = self._exec(
                    cur, "UPDATE granary_jobs SET bot_name = :b, worker = :w, lease_state = :pending,"
                         " assigned_time = :now, version = version + 1"
                         " WHERE name = :n AND bot_name IS NULL AND stage = :queued",
                    {"b": bot_name, "w": worker, "pending": leases.PENDING, "now": now, "n": name, "queued": QUEUED},
                )
                if taken:
                    rows += self._rows(cur, f"SELECT {_JOB_SELECT} FROM granary_jobs WHERE name = :n AND bot_name = :b",
                                       {"n": name, "b": bot_name})
            rows.sort(key=lambda r: (r["priority"], r["queued_time"]))
            if also is not None and rows:
                also(cur, rows, now)
            self._raw_notify(cur)
            return rows

    def _satisfies(self, caps: Capabilities, key: str) -> bool:
        ck = (json.dumps(caps.pairs()), key)
        hit = self._caps_cache.get(ck)
        if hit is None:
            if len(self._caps_cache) > 10_000:
                self._caps_cache.clear()
            hit = self._caps_cache[ck] = caps.satisfies(from_key(key))
        return hit

    def lapse_offers(self, conn: Connection, now: float) -> list[str]:
        """Take back the leases offered more than lease_ack_timeout ago and never acknowledged.

        The job waits for another bot (the one that let it lapse may take it again
        only after another lease_ack_timeout, if nobody else did). It never ran, so
        this does not count toward retry_limit. `assigned_time` becomes the time of
        the lapse and `worker` still names the bot that let it lapse.
        """
        stale = and_(
            jobs.c.stage == QUEUED, jobs.c.bot_name.is_not(None), jobs.c.lease_state == leases.PENDING,
            jobs.c.assigned_time < now - self.lease_ack_timeout,
        )
        rows = conn.execute(select(jobs.c.name, jobs.c.bot_name).where(stale)).all()
        lapsed: list[str] = []
        for job_name, bot_name in rows:
            n = conn.execute(
                update(jobs).where(jobs.c.name == job_name, jobs.c.bot_name == bot_name, stale)
                .values(bot_name=None, lease_state=0, assigned_time=now, **_bump())
            ).rowcount
            if n:
                log.warning("job %s offered to worker session %s, not acknowledged within %gs: back in the queue",
                            job_name, bot_name, self.lease_ack_timeout)
                lapsed.append(job_name)
        return lapsed

    def mark_active(self, job_name: str, bot_name: str, now: float) -> bool:
        with self._cursor(write=True) as cur:
            n = self._exec(
                cur, "UPDATE granary_jobs SET lease_state = :active, stage = :executing, start_time = :now,"
                     " version = version + 1 WHERE name = :n AND bot_name = :b AND lease_state = :pending"
                     " AND stage = :queued",
                {"active": leases.ACTIVE, "executing": EXECUTING, "now": now, "n": job_name, "b": bot_name,
                 "pending": leases.PENDING, "queued": QUEUED},
            )
            if n:
                self._raw_notify(cur)
            return bool(n)

    def complete(self, job_name: str, bot_name: str | None, response: bytes, now: float) -> bool:
        """Finish a job (held by bot_name, or by nobody when None) with an ExecuteResponse."""
        holder = "bot_name IS NULL" if bot_name is None else "bot_name = :b"
        with self._cursor(write=True) as cur:
            n = self._exec(
                cur, "UPDATE granary_jobs SET stage = :done, response = :r, completed_time = :now,"
                     " lease_state = :completed, bot_name = NULL, active_key = NULL, version = version + 1"
                     f" WHERE name = :n AND {holder} AND stage != :done",
                {"done": COMPLETED, "r": response, "now": now, "completed": leases.COMPLETED, "n": job_name,
                 "b": bot_name},
            )
            if n:
                self._finish_streams(cur, job_name, now)
                self._raw_notify(cur)
            return bool(n)

    def _finish_streams(self, cur: Any, job_name: str, now: float) -> None:
        """End the live output streams of a job that completed, in its completing transaction: a
        worker sends nothing for an action that printed nothing, and their readers stop here."""
        found = self._rows(cur, "SELECT stdout_stream, stderr_stream FROM granary_jobs WHERE name = :n", {"n": job_name})
        ids = []
        for write_name in (found[0]["stdout_stream"], found[0]["stderr_stream"]) if found else ():
            res = parse_logstream(write_name) if write_name else None
            if res is not None:
                ids.append(res.stream_id)
        for stream_id in ids:
            self._exec(cur, "UPDATE granary_logstreams SET finished_time = :now, updated_time = :now"
                            " WHERE name = :s AND finished_time IS NULL", {"now": now, "s": stream_id})

    def release(self, job_name: str, bot_name: str) -> None:
        """The bot let go of a lease that was cancelled or is already finished."""
        with self.engine.begin() as conn:
            conn.execute(
                update(jobs).where(jobs.c.name == job_name, jobs.c.bot_name == bot_name, jobs.c.stage == COMPLETED)
                .values(bot_name=None, **_bump())
            )

    def requeue(self, job_name: str, bot_name: str, reason: str, now: float) -> str:
        """Put a job its bot lost back in the queue, or fail it past the retry limit. -> what happened."""
        with self.engine.begin() as conn:
            return self._requeue(conn, job_name, bot_name, reason, now)

    def _requeue(self, conn: Connection, job_name: str, bot_name: str, reason: str, now: float) -> str:
        job = conn.execute(
            select(jobs).where(jobs.c.name == job_name, jobs.c.bot_name == bot_name)
        ).mappings().first()
        if job is None:
            return "gone"
        if job["stage"] == COMPLETED:
            conn.execute(update(jobs).where(jobs.c.name == job_name).values(bot_name=None, **_bump()))
            return "released"
        if job["retries"] >= self.retry_limit:
            message = f"{reason}; gave up after {job['retries'] + 1} attempts (retry_limit {self.retry_limit})"
            conn.execute(
                update(jobs).where(jobs.c.name == job_name, jobs.c.bot_name == bot_name)
                .values(stage=COMPLETED, completed_time=now, bot_name=None, active_key=None,
                        lease_state=leases.COMPLETED,
                        response=error_response(code_pb2.UNAVAILABLE, message).SerializeToString(), **_bump())
            )
            self._notify(conn)
            return "failed"
        conn.execute(
            update(jobs).where(jobs.c.name == job_name, jobs.c.bot_name == bot_name)
            .values(stage=QUEUED, bot_name=None, lease_state=0, assigned_time=None, start_time=None,
                    retries=jobs.c.retries + 1, **_bump())
        )
        self._notify(conn)
        log.warning("job %s re-queued: %s", job_name, reason)
        return "requeued"

    # ---- platforms nobody offers --------------------------------------------

    def fail_unsatisfiable(self, known: Sequence[Capabilities], since: float, now: float) -> list[str]:
        """Fail the waiting jobs no bot seen since `since` and no `known` platform could run.

        Such jobs were accepted while bots were still connecting, or lost the
        last bot that could run them. They finish with FAILED_PRECONDITION
        naming the property, as Execute refuses such an action outright. The
        usual case (nothing to fail) only reads.
        """
        with self.read_engine.connect() as conn:
            if not self._unsatisfiable(conn, known, since):
                return []
        failed: list[str] = []
        with self.engine.begin() as conn:  # look again: a bot may have come in meanwhile
            waiting = and_(jobs.c.stage == QUEUED, jobs.c.bot_name.is_(None))
            for q, key, reason in self._unsatisfiable(conn, known, since):
                pick = select(jobs.c.name).where(waiting, jobs.c.queue == q, jobs.c.platform_key == key)
                if self.is_postgres:
                    pick = pick.with_for_update(skip_locked=True)  # one being assigned to a bot stays
                names = conn.execute(pick).scalars().all()
                if not names:
                    continue
                response = error_response(code_pb2.FAILED_PRECONDITION, f"cannot execute this action: {reason}")
                conn.execute(
                    update(jobs).where(jobs.c.name.in_(names), waiting)
                    .values(stage=COMPLETED, completed_time=now, active_key=None,
                            response=response.SerializeToString(), **_bump())
                )
                log.warning("%d queued job(s) failed, no worker can run them: %s", len(names), reason)
                failed.extend(names)
            if failed:
                self._notify(conn)
        return failed

    def _unsatisfiable(
        self, conn: Connection, known: Sequence[Capabilities], since: float
    ) -> list[tuple[str, str, str]]:
        """(queue, platform key, reason) of waiting jobs nothing offers."""
        waiting = and_(jobs.c.stage == QUEUED, jobs.c.bot_name.is_(None))
        wanted = conn.execute(select(jobs.c.queue, jobs.c.platform_key).where(waiting).distinct()).all()
        if not wanted:
            return []
        queues = sorted({q for q, _ in wanted})
        offers: dict[str, list[Capabilities]] = {q: list(known) for q in queues}
        live = conn.execute(
            select(bots.c.queue, bots.c.properties)
            .where(bots.c.queue.in_(queues), bots.c.last_seen >= since).distinct()
        ).all()
        for q, props in live:
            offers[q].append(Capabilities((str(k), str(v)) for k, v in json.loads(props)))
        out = []
        for q, key in wanted:
            reason = unsatisfied_reason(from_key(key), offers[q])
            if reason is not None:
                out.append((q, key, reason))
        return out

    # ---- housekeeping -------------------------------------------------------

    def reap(self, now: float, bot_timeout: float, up_since: float, retention: float) -> list[str]:
        """Take back unacknowledged offers, re-queue the jobs of silent bots, fail jobs no live
        bot could run, stop jobs far past their timeout, drop old history.

        A bot counts as silent only if this process has also been up for
        bot_timeout (it could not reach us while we were down); jobs fail for
        their platform only once this process has been up for the platform
        grace (bots may still be connecting).
        """
        changed: list[str] = []
        cutoff = now - bot_timeout
        if now - up_since >= self.lease_ack_timeout:  # bots could reach us for that long
            with self.engine.begin() as conn:
                changed.extend(self.lapse_offers(conn, now))
        if up_since <= cutoff:
            with self.engine.begin() as conn:
                dead = conn.execute(select(bots.c.name).where(bots.c.last_seen < cutoff)).scalars().all()
                orphans = conn.execute(
                    select(jobs.c.name, jobs.c.bot_name).where(
                        jobs.c.bot_name.is_not(None),
                        or_(jobs.c.bot_name.in_(dead), jobs.c.bot_name.not_in(select(bots.c.name))),
                    )
                ).all()
                for job_name, bot_name in orphans:
                    self._requeue(conn, job_name, bot_name, f"worker session {bot_name} stopped answering", now)
                    changed.append(job_name)
                if dead:
                    conn.execute(delete(bots).where(bots.c.name.in_(dead)))
        if self._known_platforms is not None and now - up_since >= self._platform_grace:
            changed.extend(self.fail_unsatisfiable(self._known_platforms, cutoff, now))
        with self.engine.begin() as conn:
            overdue = conn.execute(
                select(jobs.c.name, jobs.c.timeout).where(
                    jobs.c.stage == EXECUTING, jobs.c.start_time + jobs.c.timeout + bot_timeout < now
                )
            ).all()
            for job_name, timeout in overdue:
                message = f"action exceeded its timeout of {timeout:g}s and its worker did not stop it"
                conn.execute(
                    update(jobs).where(jobs.c.name == job_name, jobs.c.stage == EXECUTING)
                    .values(stage=COMPLETED, completed_time=now, active_key=None, lease_state=leases.CANCELLED,
                            response=error_response(code_pb2.DEADLINE_EXCEEDED, message).SerializeToString(),
                            **_bump())
                )
                changed.append(job_name)
            if retention > 0:
                old = select(jobs.c.name).where(jobs.c.stage == COMPLETED, jobs.c.completed_time < now - retention,
                                                jobs.c.bot_name.is_(None))
                conn.execute(delete(operations).where(operations.c.job_name.in_(old)))
                conn.execute(delete(jobs).where(jobs.c.name.in_(old)))
            if changed:
                self._notify(conn)
        return changed


def _encode_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o{offset}".encode()).decode()


def _decode_token(token: str) -> int:
    if not token:
        return 0
    try:
        raw = base64.urlsafe_b64decode(token.encode()).decode()
        if not raw.startswith("o") or int(raw[1:]) < 0:
            raise ValueError
        return int(raw[1:])
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument(f"invalid page_token {token!r}") from None


def now() -> float:
    return time.time()
