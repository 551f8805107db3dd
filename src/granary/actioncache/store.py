"""Key-value storage behind the Action Cache: serialized ActionResults by key."""

from __future__ import annotations

import abc
import sqlite3
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from pathlib import Path

from granary.errors import Unimplemented
from granary.sqlite_wal import enable_wal


class ActionCacheStore(abc.ABC):
    name = "action-cache"

    @abc.abstractmethod
    async def get(self, key: str) -> bytes | None: ...

    @abc.abstractmethod
    async def put(self, key: str, value: bytes) -> None: ...

    async def put_if_absent(self, key: str, value: bytes) -> bytes | None:
        """Store unless present; returns the value already stored, if any."""
        old = await self.get(key)
        if old is not None:
            return old
        await self.put(key, value)
        return None

    @abc.abstractmethod
    async def delete(self, key: str) -> None: ...

    async def iterate(self) -> AsyncIterator[tuple[str, bytes, float]]:
        """Every entry as (key, value, last update or access time), for cleanup."""
        raise Unimplemented(f"{self.name} action cache cannot list its entries")
        yield  # pragma: no cover  (makes this an async generator)

    async def close(self) -> None:
        return None


class MemoryActionCacheStore(ActionCacheStore):
    name = "memory"

    def __init__(self, max_entries: int = 100_000):
        self.max_entries = max_entries
        self._entries: OrderedDict[str, bytes] = OrderedDict()
        self._times: dict[str, float] = {}

    async def get(self, key: str) -> bytes | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    async def put(self, key: str, value: bytes) -> None:
        self._entries[key] = value
        self._times[key] = time.time()
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._times.pop(self._entries.popitem(last=False)[0], None)

    async def delete(self, key: str) -> None:
        self._entries.pop(key, None)
        self._times.pop(key, None)

    async def iterate(self) -> AsyncIterator[tuple[str, bytes, float]]:
        for key, value in list(self._entries.items()):
            yield key, value, self._times.get(key, 0.0)


class SqliteActionCacheStore(ActionCacheStore):
    """One SQLite file (WAL), safe to share between server processes."""

    name = "sqlite"

    def __init__(self, path: Path, max_entries: int = 0):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.max_entries = max_entries
        self._db = sqlite3.connect(path, isolation_level=None, timeout=30)
        enable_wal(self._db)
        self._db.executescript(
            "CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, value BLOB NOT NULL,"
            " atime INTEGER NOT NULL) WITHOUT ROWID;"
        )
        self._touched: dict[str, float] = {}

    async def get(self, key: str) -> bytes | None:
        row = self._db.execute("SELECT value FROM results WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        now = time.time()
        if now - self._touched.get(key, 0) > 60:
            if len(self._touched) > 1_000_000:
                self._touched.clear()
            self._touched[key] = now
            self._db.execute("UPDATE results SET atime = ? WHERE key = ?", (int(now), key))
        return row[0]

    async def put(self, key: str, value: bytes) -> None:
        self._db.execute(
            "INSERT INTO results VALUES (?, ?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value,"
            " atime = excluded.atime",
            (key, value, int(time.time())),
        )
        self._trim()

    async def put_if_absent(self, key: str, value: bytes) -> bytes | None:
        cur = self._db.execute(
            "INSERT INTO results VALUES (?, ?, ?) ON CONFLICT(key) DO NOTHING",
            (key, value, int(time.time())),
        )
        if cur.rowcount:
            self._trim()
            return None
        return await self.get(key)

    def _trim(self) -> None:
        if not self.max_entries:
            return
        count = self._db.execute("SELECT count(*) FROM results").fetchone()[0]
        if count > self.max_entries:
            self._db.execute(
                "DELETE FROM results WHERE key IN (SELECT key FROM results ORDER BY atime LIMIT ?)",
                (count - self.max_entries,),
            )

    async def delete(self, key: str) -> None:
        self._db.execute("DELETE FROM results WHERE key = ?", (key,))

    async def iterate(self) -> AsyncIterator[tuple[str, bytes, float]]:
        for key, value, atime in self._db.execute("SELECT key, value, atime FROM results").fetchall():
            yield key, value, float(atime)

    async def close(self) -> None:
        self._db.close()
