"""The workers page's data: bot sessions and the jobs they hold, read from the queue database as the
metrics collector reads them (observability/collector.py), in the queue's thread pool.

Both reads are bounded: at most MAX_SESSIONS sessions (newest report first), and the unfinished
jobs held by those sessions through the bot_name index; the operations of those jobs through the
job_name index.
"""

from __future__ import annotations

import time
from typing import Any

from granary.execution.operations import COMPLETED

MAX_SESSIONS = 1000


def read_sessions(queue: Any) -> dict[str, Any]:
    """{"sessions": [...], "jobs": [...], "operations": [...], "more": bool} as rows (dicts)."""
    from sqlalchemy import select

    from granary.execution.schema import bots, jobs, operations

    with queue.read_engine.connect() as conn:
        sessions = [dict(r) for r in conn.execute(
            select(bots).order_by(bots.c.last_seen.desc()).limit(MAX_SESSIONS + 1)).mappings()]
        more = len(sessions) > MAX_SESSIONS
        sessions = sessions[:MAX_SESSIONS]
        names = [s["name"] for s in sessions]
        held: list[dict[str, Any]] = []
        for i in range(0, len(names), 500):
            chunk = names[i : i + 500]
            held += [dict(r) for r in conn.execute(
                select(jobs.c.name, jobs.c.bot_name, jobs.c.instance, jobs.c.action_key, jobs.c.stage,
                       jobs.c.lease_state, jobs.c.assigned_time, jobs.c.start_time, jobs.c.queued_time)
                .where(jobs.c.bot_name.in_(chunk), jobs.c.stage != COMPLETED)).mappings()]
        ops: list[dict[str, Any]] = []
        job_names = [j["name"] for j in held]
        for i in range(0, len(job_names), 500):
            chunk = job_names[i : i + 500]
            ops += [dict(r) for r in conn.execute(
                select(operations.c.name, operations.c.job_name, operations.c.instance, operations.c.identity,
                       operations.c.tool_name, operations.c.invocation_id)
                .where(operations.c.job_name.in_(chunk))).mappings()]
    return {"sessions": sessions, "jobs": held, "operations": ops, "more": more, "now": time.time()}
