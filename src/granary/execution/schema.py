"""The execution tables: jobs (one per action run), operations (one per Execute call), bots."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

# A job is one run of an action. Identical in-flight actions share a job
# through `active_key` (unique while the job is not finished; NULL otherwise
# and for do_not_cache jobs), so merging is race-free across processes.
jobs = Table(
    "granary_jobs",
    metadata,
    Column("name", String(64), primary_key=True),  # also the lease id
    Column("queue", String(255), nullable=False),  # which bots may take it (shared CAS)
    Column("instance", String(255), nullable=False),
    Column("action_key", String(200), nullable=False),  # "hash/size"
    Column("digest_function", Integer, nullable=False),
    Column("action", LargeBinary, nullable=False),  # serialized Action, timeout filled in
    Column("platform_key", Text, nullable=False),  # canonical JSON of the requirements
    Column("priority", Integer, nullable=False, default=0),
    Column("queued_time", Float, nullable=False),
    Column("stage", Integer, nullable=False),  # ExecutionStage.Value
    Column("lease_state", Integer, nullable=False, default=0),  # LeaseState, 0 = not leased
    Column("bot_name", String(255)),  # session holding the lease (until the bot lets go)
    Column("worker", String(255)),  # bot_id that last ran it (kept for history)
    Column("assigned_time", Float),
    Column("start_time", Float),
    Column("completed_time", Float),
    Column("timeout", Float, nullable=False),
    Column("do_not_cache", Boolean, nullable=False, default=False),
    Column("retries", Integer, nullable=False, default=0),
    Column("response", LargeBinary),  # serialized ExecuteResponse once COMPLETED
    Column("active_key", String(600), unique=True),
    Column("version", Integer, nullable=False, default=0),  # bumped on every change
    # write resource names of the live stdout/stderr streams of its current run (logstreams.py);
    # they hold the writer's secret: clients see only the read names (the name without its last segment)
    Column("stdout_stream", String(600)),
    Column("stderr_stream", String(600)),
)
Index("granary_jobs_pick", jobs.c.queue, jobs.c.stage, jobs.c.priority, jobs.c.queued_time)
Index("granary_jobs_bot", jobs.c.bot_name)
# ListOperations (and the dashboard) newest or oldest first, by queue time or completion, without
# sorting every operation of the instance: 0.7 ms instead of 390 ms for a page of 100,000
# (bench/bench_dashboard.py); list_operations also filters on the job's instance so these apply.
Index("granary_jobs_listing", jobs.c.instance, jobs.c.queued_time)
Index("granary_jobs_listing_done", jobs.c.instance, jobs.c.completed_time)

operations = Table(
    "granary_operations",
    metadata,
    Column("name", String(400), primary_key=True),
    Column("job_name", String(64), nullable=False, index=True),
    Column("instance", String(255), nullable=False),
    Column("created_time", Float, nullable=False),
    Column("cancelled", Boolean, nullable=False, default=False),
    Column("tool_name", String(255), nullable=False, default=""),
    Column("tool_version", String(255), nullable=False, default=""),
    Column("invocation_id", String(255), nullable=False, default=""),
    Column("correlated_invocations_id", String(255), nullable=False, default=""),
    Column("action_mnemonic", String(255), nullable=False, default=""),
    Column("target_id", Text, nullable=False, default=""),
    Column("configuration_id", String(255), nullable=False, default=""),
    # identity name of the caller whose Execute made it ("" without authentication); see owners.py
    Column("identity", String(255), nullable=False, default="", server_default=""),
)
Index("granary_operations_identity", operations.c.instance, operations.c.identity)

# Columns added after a release: (table, column, SQL type and default) for databases made before them.
ADDED_COLUMNS = [
    ("granary_operations", "identity", "VARCHAR(255) NOT NULL DEFAULT ''"),
    ("granary_jobs", "stdout_stream", "VARCHAR(600)"),
    ("granary_jobs", "stderr_stream", "VARCHAR(600)"),
]

bots = Table(
    "granary_bots",
    metadata,
    Column("name", String(400), primary_key=True),  # session name
    Column("bot_id", String(255), nullable=False),
    Column("instance", String(255), nullable=False),
    Column("queue", String(255), nullable=False),
    Column("properties", Text, nullable=False),  # JSON [[key, value], ...]
    Column("concurrency", Integer, nullable=False, default=1),
    Column("status", Integer, nullable=False, default=0),
    Column("created_time", Float, nullable=False),
    Column("last_seen", Float, nullable=False, index=True),
)

# Live output streams (LogStream API, logstreams.py): one row per stream, its bytes in chunk rows
# of at most logstreams.CHUNK bytes, keyed by their offset in the stream.
logstreams = Table(
    "granary_logstreams",
    metadata,
    Column("name", String(64), primary_key=True),  # the {logstream_id} of its resource names
    Column("instance", String(255), nullable=False),
    Column("write_token", String(64), nullable=False),  # the secret last segment of the write name
    Column("job_name", String(64)),  # the job whose output it carries (None: made by CreateLogStream)
    Column("created_time", Float, nullable=False),
    Column("updated_time", Float, nullable=False),  # last write (or creation)
    Column("finished_time", Float),  # None while it may still grow
    Column("size", BigInteger, nullable=False, default=0),
)
Index("granary_logstreams_finished", logstreams.c.finished_time)

logstream_chunks = Table(
    "granary_logstream_chunks",
    metadata,
    Column("stream", String(64), primary_key=True),
    Column("start_offset", BigInteger, primary_key=True),
    Column("data", LargeBinary, nullable=False),
)

# One row (id 1): the bytes all streams hold, kept in step with the chunks so the global bound
# (execution.logstream.max_total_bytes) costs one conditional UPDATE per write.
logstream_usage = Table(
    "granary_logstream_usage",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("bytes", BigInteger, nullable=False),
)


def add_missing_columns(conn: Connection) -> None:
    """ALTER TABLE ... ADD COLUMN for every column an older database lacks (SQLite and PostgreSQL).

    Runs after create_all and before indexes on new columns are needed; PostgreSQL callers
    hold an advisory lock, SQLite ones the database's write lock."""
    from sqlalchemy import inspect, text

    inspector = inspect(conn)
    for table, column, definition in ADDED_COLUMNS:
        have = {c["name"] for c in inspector.get_columns(table)}
        if column not in have:
            conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {definition}"))
