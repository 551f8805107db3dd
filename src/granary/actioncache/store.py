"""Key-value storage behind the Action Cache: serialized ActionResults by key."""

from __future__ import annotations

import abc
import sqlite3
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from pathlib import Path

from granary.errors import Unimplemented
from granary.shared_token import bump, open_token, read
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


#: default byte budgets of the action cache stores that had none
MEMORY_MAX_BYTES = 256 << 20
SQLITE_MAX_BYTES = 1 << 30


class MemoryActionCacheStore(ActionCacheStore):
    """Least-recently-used entries go first past `max_entries` or `max_bytes` (values)."""

    name = "memory"

    def __init__(self, max_entries: int = 100_000, max_bytes: int = MEMORY_MAX_BYTES):
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[str, bytes] = OrderedDict()
        self._times: dict[str, float] = {}

    async def get(self, key: str) -> bytes | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    async def put(self, key: str, value: bytes) -> None:
        self._put(key, value)

    async def put_if_absent(self, key: str, value: bytes) -> bytes | None:
        # no await between the test and the store: atomic within the event loop
        old = self._entries.get(key)
        if old is not None:
            return old
        self._put(key, value)
        return None

    def _put(self, key: str, value: bytes) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= len(old)
        self._entries[key] = value
        self.bytes += len(value)
        self._times[key] = time.time()
        while len(self._entries) > self.max_entries or (self.max_bytes and self.bytes > self.max_bytes):
            gone, value = self._entries.popitem(last=False)
            self.bytes -= len(value)
            self._times.pop(gone, None)

    async def delete(self, key: str) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= len(old)
        self._times.pop(key, None)

    async def iterate(self) -> AsyncIterator[tuple[str, bytes, float]]:
        for key, value in list(self._entries.items()):
            yield key, value, self._times.get(key, 0.0)


_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, value BLOB NOT NULL,
    atime INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS results_bytes_insert AFTER INSERT ON results
    BEGIN UPDATE meta SET v = v + length(NEW.value) WHERE k = 'bytes'; END;
CREATE TRIGGER IF NOT EXISTS results_bytes_delete AFTER DELETE ON results
    BEGIN UPDATE meta SET v = v - length(OLD.value) WHERE k = 'bytes'; END;
CREATE TRIGGER IF NOT EXISTS results_bytes_update AFTER UPDATE OF value ON results
    BEGIN UPDATE meta SET v = v + length(NEW.value) - length(OLD.value) WHERE k = 'bytes'; END;
"""


#: values a SqliteActionCacheStore keeps in memory: bytes in all (about), and largest value kept
SQLITE_CACHE_BYTES = 8 << 20
SQLITE_CACHE_MAX_VALUE = 16 << 10


class SqliteActionCacheStore(ActionCacheStore):
    """One SQLite file (WAL), safe to share between server processes.

    The bytes of all values are kept in `meta` by triggers (so every process
    sees one total); past `max_bytes` (or `max_entries`) the least recently
    used entries are deleted down to 90% of the budget.

    Each process keeps recently read values in memory, valid while the change
    token (8 bytes in `<file>.token`, mapped by every process) is what it was
    when they were read: every process writes a fresh random token after each
    commit that adds, replaces or deletes values, so a value another process
    changed is read again from the file.
    """

    name = "sqlite"

    def __init__(self, path: Path, max_entries: int = 0, max_bytes: int = SQLITE_MAX_BYTES):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._db = sqlite3.connect(path, isolation_level=None, timeout=30)
        enable_wal(self._db)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SQLITE_SCHEMA.split(";\n"):
                if statement.strip():
                    self._db.execute(statement)
            # a file from before byte accounting: count what it holds once
            self._db.execute(
                "INSERT INTO meta VALUES ('bytes', (SELECT coalesce(sum(length(value)), 0) FROM results))"
                " ON CONFLICT(k) DO NOTHING"
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._touched: dict[str, float] = {}
        self._token = open_token(Path(f"{path}.token"))
        self._values: dict[str, bytes] = {}  # valid while the token is self._values_token
        self._values_token: bytes | None = None
        self._values_bytes = 0
        self._changed()  # a process that died between a commit and its token write

    def _changed(self) -> None:
        """After a commit that added, replaced or deleted values: every process re-reads."""
        bump(self._token)

    async def get(self, key: str) -> bytes | None:
        values = self._values
        token = read(self._token)
        if token is None or token != self._values_token:
            values.clear()
            self._values_bytes = 0
            self._values_token = token
        value = values.get(key)
        if value is None:
            row = self._db.execute("SELECT value FROM results WHERE key = ?", (key,)).fetchone()
            if row is None:
                return None
            value = row[0]
            if token is not None and len(value) <= SQLITE_CACHE_MAX_VALUE:
                cost = len(value) + len(key) + 100
                if self._values_bytes + cost > SQLITE_CACHE_BYTES:
                    values.clear()
                    self._values_bytes = 0
                values[key] = value
                self._values_bytes += cost
        now = time.time()
        if now - self._touched.get(key, 0) > 60:
            if len(self._touched) > 1_000_000:
                self._touched.clear()
            self._touched[key] = now
            self._db.execute("UPDATE results SET atime = ? WHERE key = ?", (int(now), key))
        return value

    async def put(self, key: str, value: bytes) -> None:
        try:
            self._db.execute(
                "INSERT INTO results VALUES (?, ?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value,"
                " atime = excluded.atime",
                (key, value, int(time.time())),
            )
            self._trim()
        finally:
            self._changed()

    async def put_if_absent(self, key: str, value: bytes) -> bytes | None:
        try:
            cur = self._db.execute(
                "INSERT INTO results VALUES (?, ?, ?) ON CONFLICT(key) DO NOTHING",
                (key, value, int(time.time())),
            )
            if cur.rowcount:
                self._trim()
                return None
        finally:
            self._changed()
        return await self.get(key)

    @property
    def stored_bytes(self) -> int:
        return self._db.execute("SELECT v FROM meta WHERE k = 'bytes'").fetchone()[0]

    def _trim(self) -> None:
        if self.max_entries:
            count = self._db.execute("SELECT count(*) FROM results").fetchone()[0]
            if count > self.max_entries:
                self._db.execute(
                    "DELETE FROM results WHERE key IN (SELECT key FROM results ORDER BY atime LIMIT ?)",
                    (count - self.max_entries,),
                )
        if self.max_bytes and self.stored_bytes > self.max_bytes:
            target = int(self.max_bytes * 0.9)
            while self.stored_bytes > target:
                deleted = self._db.execute(
                    "DELETE FROM results WHERE key IN (SELECT key FROM results ORDER BY atime LIMIT 100)"
                ).rowcount
                if not deleted:
                    break

    async def delete(self, key: str) -> None:
        try:
            self._db.execute("DELETE FROM results WHERE key = ?", (key,))
        finally:
            self._changed()

    async def iterate(self) -> AsyncIterator[tuple[str, bytes, float]]:
        for key, value, atime in self._db.execute("SELECT key, value, atime FROM results").fetchall():
            yield key, value, float(atime)

    async def close(self) -> None:
        self._db.close()
        self._values.clear()
        self._values_bytes = 0
        if self._token is not None:
            self._token.close()
            self._token = None
