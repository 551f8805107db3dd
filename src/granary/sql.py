"""SQLAlchemy engines for SQLite or PostgreSQL URLs, used from async code.

Statements run in worker threads (`run`), so a slow database never blocks
the event loop. SQLite files get WAL and a busy timeout so several server
processes can share them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, Table, create_engine, event
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import make_url

from granary.sqlite_wal import enable_wal

T = TypeVar("T")


def resolve_url(url: str, base: Path) -> str:
    """Relative SQLite paths are relative to `base` (the data directory)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        path = Path(parsed.database).expanduser()
        if not path.is_absolute():
            path = base / path
        path.parent.mkdir(parents=True, exist_ok=True)
        return parsed.set(database=str(path)).render_as_string(hide_password=False)
    return url


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(conn, _record) -> None:
            enable_wal(conn)

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=8, max_overflow=8)


def upsert(engine: Engine, table: Table, index: list[str], update: list[str] | None) -> Any:
    """INSERT ... ON CONFLICT (index) DO UPDATE SET update (or DO NOTHING when update is None)."""
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert  # loaded only where PostgreSQL is configured
    else:
        insert = sqlite.insert
    stmt = insert(table)
    if update is None:
        return stmt.on_conflict_do_nothing(index_elements=index)
    return stmt.on_conflict_do_update(index_elements=index, set_={c: stmt.excluded[c] for c in update})


async def run(fn: Callable[[], T]) -> T:
    return await asyncio.to_thread(fn)
