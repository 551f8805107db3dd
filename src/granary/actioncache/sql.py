"""Action Cache entries in SQL (SQLite or PostgreSQL via SQLAlchemy Core).

Keys are percent-encoded (PostgreSQL text cannot hold the NUL byte that
separates namespace and digest). `updated` is the time of the last write;
with max_age an older entry reads as absent and is deleted.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from sqlalchemy import Column, Engine, Float, LargeBinary, MetaData, String, Table, delete, select
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from granary.actioncache.keys import decode_key, encode_key
from granary.actioncache.store import ActionCacheStore
from granary.sql import run, upsert


class SqlActionCacheStore(ActionCacheStore):
    name = "sql"

    def __init__(self, engine: Engine, *, table: str = "action_results", max_age: int = 0):
        self.engine = engine
        self.max_age = max_age
        meta = MetaData()
        self.table = Table(
            table, meta,
            Column("key", String(600), primary_key=True),
            Column("value", LargeBinary, nullable=False),
            Column("updated", Float, nullable=False, index=True),
        )
        try:
            meta.create_all(engine)
        except (IntegrityError, ProgrammingError, OperationalError):
            meta.create_all(engine)

    def _fresh(self, updated: float) -> bool:
        return not self.max_age or time.time() - updated <= self.max_age

    async def get(self, key: str) -> bytes | None:
        t, k = self.table, encode_key(key)

        def q() -> bytes | None:
            with self.engine.begin() as conn:
                row = conn.execute(select(t.c.value, t.c.updated).where(t.c.key == k)).first()
                if row is None:
                    return None
                if not self._fresh(row.updated):
                    conn.execute(delete(t).where(t.c.key == k, t.c.updated == row.updated))
                    return None
                return bytes(row.value)

        return await run(q)

    async def put(self, key: str, value: bytes) -> None:
        row = {"key": encode_key(key), "value": value, "updated": time.time()}

        def q() -> None:
            with self.engine.begin() as conn:
                conn.execute(upsert(self.engine, self.table, ["key"], ["value", "updated"]), row)

        await run(q)

    async def put_if_absent(self, key: str, value: bytes) -> bytes | None:
        t, k = self.table, encode_key(key)
        row = {"key": k, "value": value, "updated": time.time()}

        def q() -> bytes | None:
            with self.engine.begin() as conn:
                if self.max_age:  # an expired entry counts as absent
                    conn.execute(delete(t).where(t.c.key == k, t.c.updated < time.time() - self.max_age))
                inserted = conn.execute(upsert(self.engine, t, ["key"], None).returning(t.c.key), row).first()
                if inserted is not None:
                    return None
                existing = conn.execute(select(t.c.value).where(t.c.key == k)).scalar_one_or_none()
                return None if existing is None else bytes(existing)

        return await run(q)

    async def delete(self, key: str) -> None:
        t, k = self.table, encode_key(key)

        def q() -> None:
            with self.engine.begin() as conn:
                conn.execute(delete(t).where(t.c.key == k))

        await run(q)

    async def iterate(self) -> AsyncIterator[tuple[str, bytes, float]]:
        t = self.table
        after = ""
        while True:
            def q(after: str = after) -> list:
                with self.engine.connect() as conn:
                    return list(conn.execute(
                        select(t.c.key, t.c.value, t.c.updated).where(t.c.key > after).order_by(t.c.key).limit(1000)
                    ))

            rows = await run(q)
            for row in rows:
                if self._fresh(row.updated):
                    yield decode_key(row.key), bytes(row.value), float(row.updated)
            if len(rows) < 1000:
                return
            after = rows[-1].key

    async def close(self) -> None:
        await run(self.engine.dispose)
