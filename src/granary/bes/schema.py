"""The build event tables: streams, their events, and one summary row per invocation."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
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

ID = 255  # longest build id, invocation id or project id accepted

# One row per stream (build_id, component, invocation_id): what QueryEvents matches its
# regex against (name) and what retention expires (last_time).
streams = Table(
    "granary_bes_streams",
    metadata,
    Column("build_id", String(ID), primary_key=True),
    Column("component", Integer, primary_key=True),  # StreamId.BuildComponent
    Column("invocation_id", String(ID), primary_key=True),
    Column("name", String(3 * ID), nullable=False, index=True),  # BUILD_ID/INVOCATION_ID/COMPONENT
    Column("project_id", String(ID), nullable=False, default=""),
    Column("keywords", Text, nullable=False, default="[]"),  # JSON list of notification keywords
    Column("first_time", Float, nullable=False),
    Column("last_time", Float, nullable=False, index=True),
    Column("last_sequence", BigInteger, nullable=False, default=0),
    Column("finished", Boolean, nullable=False, default=False),
)

events = Table(
    "granary_bes_events",
    metadata,
    Column("build_id", String(ID), primary_key=True),
    Column("component", Integer, primary_key=True),
    Column("invocation_id", String(ID), primary_key=True),
    Column("sequence", BigInteger, primary_key=True),
    Column("kind", String(64), nullable=False),  # the event's oneof; bazel_event:PAYLOAD for Bazel's
    Column("event_time", Float, nullable=False),
    Column("received_time", Float, nullable=False),
    Column("payload", LargeBinary, nullable=False),  # serialized google.devtools.build.v1.BuildEvent
)

# Decoded from the events as they arrive (granary.bes.decode.apply), so `granary builds` reads
# one row per build instead of every event.
invocations = Table(
    "granary_bes_invocations",
    metadata,
    Column("invocation_id", String(ID), primary_key=True),
    Column("build_id", String(ID), nullable=False, default="", index=True),
    Column("project_id", String(ID), nullable=False, default=""),
    Column("command", String(64), nullable=False, default=""),
    Column("patterns", Text, nullable=False, default="[]"),  # JSON list
    Column("user", String(ID), nullable=False, default=""),
    Column("host", String(ID), nullable=False, default=""),
    Column("tool_version", String(ID), nullable=False, default=""),
    Column("created_time", Float, nullable=False),  # first event seen: the listing order
    Column("last_time", Float, nullable=False, index=True),  # last event seen: retention
    Column("start_time", Float),
    Column("end_time", Float),
    Column("exit_code", Integer),
    Column("exit_code_name", String(64), nullable=False, default=""),
    Column("lifecycle_result", String(64), nullable=False, default=""),
    Column("actions_created", BigInteger, nullable=False, default=0),
    Column("actions_executed", BigInteger, nullable=False, default=0),
    Column("cache_hits", BigInteger),  # None: not reported
    Column("processes", BigInteger),
    Column("cache_hits_from_metrics", Boolean, nullable=False, default=False),
    Column("targets_configured", Integer, nullable=False, default=0),
    Column("targets_completed", Integer, nullable=False, default=0),
    Column("targets_failed", Integer, nullable=False, default=0),
    Column("tests_passed", Integer, nullable=False, default=0),
    Column("tests_failed", Integer, nullable=False, default=0),
    Column("events", BigInteger, nullable=False, default=0),
    Column("stream_finished", Boolean, nullable=False, default=False),
    Column("first_failure", Text, nullable=False, default=""),
)
Index("granary_bes_invocations_order", invocations.c.created_time, invocations.c.invocation_id)
