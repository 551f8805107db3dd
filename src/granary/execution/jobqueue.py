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
import json
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from google.rpc import code_pb2
from sqlalchemy import and_, create_engine, delete, event, func, insert, or_, select, text, update
from sqlalchemy.engine import Connection, Engine, RowMapping
from sqlalchemy.exc import IntegrityError, OperationalError

from granary.errors import ConfigError, InvalidArgument, NotFound
from granary.execution import leases, opfilter
from granary.execution.operations import COMPLETED, EXECUTING, QUEUED, cancelled_response, error_response
from granary.execution.platform import Capabilities, from_key, unsatisfied_reason
from granary.execution.schema import add_missing_columns, bots, jobs, metadata, operations
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

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.engine.dispose()
        if self.read_engine is not self.engine:
            self.read_engine.dispose()

    def _notify(self, conn: Connection) -> None:
        if self.is_postgres:
            conn.execute(text(f"NOTIFY {NOTIFY_CHANNEL}"))

    # ---- enqueue and merge --------------------------------------------------

    def enqueue(self, job: dict[str, Any], op: dict[str, Any]) -> tuple[RowMapping, bool]:
        """Insert the job (or attach to an identical in-flight one) and its operation."""
        for _ in range(5):
            try:
                with self.engine.begin() as conn:
                    existing = None
                    if job["active_key"] is not None:
                        existing = conn.execute(
                            select(jobs).where(jobs.c.active_key == job["active_key"])
                        ).mappings().first()
                    if existing is not None:
                        conn.execute(insert(operations).values(**op, job_name=existing["name"]))
                        if job["priority"] < existing["priority"]:
                            conn.execute(
                                update(jobs).where(jobs.c.name == existing["name"])
                                .values(priority=job["priority"], **_bump())
                            )
                        return existing, True
                    conn.execute(insert(jobs).values(**job))
                    conn.execute(insert(operations).values(**op, job_name=job["name"]))
                    self._notify(conn)
                    return job, False  # type: ignore[return-value]
            except IntegrityError:
                continue  # another process inserted the same action first: attach to it
        raise RuntimeError(f"could not enqueue job for {job['action_key']}")

    # ---- reading ------------------------------------------------------------

    def get_operation(self, name: str) -> tuple[RowMapping, RowMapping] | None:
        with self.read_engine.connect() as conn:
            op = conn.execute(select(operations).where(operations.c.name == name)).mappings().first()
            if op is None:
                return None
            job = conn.execute(select(jobs).where(jobs.c.name == op["job_name"])).mappings().first()
            return (op, job) if job is not None else None

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
        conds = [operations.c.instance == instance]
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
        with self.engine.begin() as conn:
            found = conn.execute(
                update(bots).where(bots.c.name == row["name"])
                .values({k: v for k, v in row.items() if k not in ("name", "created_time")})
            ).rowcount
            if not found:
                conn.execute(insert(bots).values(**row))

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

    def held_jobs(self, bot_name: str) -> dict[str, RowMapping]:
        with self.read_engine.connect() as conn:
            rows = conn.execute(select(jobs).where(jobs.c.bot_name == bot_name)).mappings().all()
        return {r["name"]: r for r in rows}

    def assign(
        self, bot_name: str, worker: str, queue: str, caps: Capabilities, n: int, now: float,
        limit: int | None = None,
    ) -> list[RowMapping]:
        """Give up to n queued jobs this bot can run, most urgent (then oldest) first.

        With `limit`, the session never holds more than `limit` unfinished jobs, counted
        in the same transaction (several calls for one session at once cannot exceed it).
        """
        if n <= 0:
            return []
        with self.engine.begin() as conn:
            if limit is not None:
                if self.is_postgres:  # serialise the session's own concurrent calls
                    conn.execute(select(bots.c.name).where(bots.c.name == bot_name).with_for_update())
                held = conn.execute(
                    select(func.count()).select_from(jobs)
                    .where(jobs.c.bot_name == bot_name, jobs.c.stage != COMPLETED)
                ).scalar_one()
                n = min(n, limit - held)
                if n <= 0:
                    return []
            waiting = and_(
                jobs.c.queue == queue, jobs.c.stage == QUEUED, jobs.c.bot_name.is_(None),
                # an offer this worker let lapse goes to the others first (see lapse_offers)
                or_(jobs.c.assigned_time.is_(None), jobs.c.worker.is_(None), jobs.c.worker != worker,
                    jobs.c.assigned_time <= now - self.lease_ack_timeout),
            )
            keys = conn.execute(select(jobs.c.platform_key).where(waiting).distinct()).scalars().all()
            usable = [k for k in keys if self._satisfies(caps, k)]
            if not usable:
                return []
            pick = (
                select(jobs.c.name).where(waiting, jobs.c.platform_key.in_(usable))
                .order_by(jobs.c.priority.asc(), jobs.c.queued_time.asc()).limit(n)
            )
            if self.is_postgres:
                pick = pick.with_for_update(skip_locked=True)
            names = conn.execute(pick).scalars().all()
            if not names:
                return []
            conn.execute(
                update(jobs).where(jobs.c.name.in_(names), jobs.c.bot_name.is_(None), jobs.c.stage == QUEUED)
                .values(bot_name=bot_name, worker=worker, lease_state=leases.PENDING, assigned_time=now, **_bump())
            )
            rows = conn.execute(
                select(jobs).where(jobs.c.name.in_(names), jobs.c.bot_name == bot_name)
                .order_by(jobs.c.priority.asc(), jobs.c.queued_time.asc())
            ).mappings().all()
            self._notify(conn)
            return list(rows)

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
        with self.engine.begin() as conn:
            n = conn.execute(
                update(jobs).where(
                    jobs.c.name == job_name, jobs.c.bot_name == bot_name,
                    jobs.c.lease_state == leases.PENDING, jobs.c.stage == QUEUED,
                ).values(lease_state=leases.ACTIVE, stage=EXECUTING, start_time=now, **_bump())
            ).rowcount
            if n:
                self._notify(conn)
            return bool(n)

    def complete(self, job_name: str, bot_name: str | None, response: bytes, now: float) -> bool:
        """Finish a job (held by bot_name, or by nobody when None) with an ExecuteResponse."""
        holder = jobs.c.bot_name.is_(None) if bot_name is None else jobs.c.bot_name == bot_name
        with self.engine.begin() as conn:
            n = conn.execute(
                update(jobs).where(jobs.c.name == job_name, holder, jobs.c.stage != COMPLETED)
                .values(stage=COMPLETED, response=response, completed_time=now, lease_state=leases.COMPLETED,
                        bot_name=None, active_key=None, **_bump())
            ).rowcount
            if n:
                self._notify(conn)
            return bool(n)

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
