"""Putting SQLite files in WAL mode safely when several processes open them at once.

Changing the journal mode needs an exclusive lock and SQLite does not wait
for it through busy_timeout, so two server processes starting together on a
new data directory could fail with "database is locked". Retry instead.
"""

from __future__ import annotations

import sqlite3
import time


def enable_wal(conn, timeout: float = 30.0) -> None:
    """`conn` is a sqlite3 connection (or a DB-API connection wrapping one)."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        cur = conn.cursor()
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) and "busy" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.25)
        finally:
            cur.close()
