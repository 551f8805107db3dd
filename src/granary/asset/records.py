"""The URI -> digest records of the Remote Asset API, in SQL so every server process shares them.

One row per (instance, kind, digest function, URI, qualifiers): what a FetchBlob/FetchDirectory
downloaded or a PushBlob/PushDirectory declared. The database is SQLite under the data directory by
default (WAL, shared by the processes of one machine) or PostgreSQL for several machines, the same
technology as the execution job queue (granary.sql).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
    or_,
    select,
    text,
)
from sqlalchemy.exc import OperationalError

from granary.errors import ConfigError
from granary.sql import make_engine, run, upsert

metadata = MetaData()

BLOB = "blob"
DIRECTORY = "dir"

records = Table(
    "granary_asset_records",
    metadata,
    # sha256 of (instance, kind, function, uri, qualifiers key): URIs can be longer than an index allows
    Column("key", String(64), primary_key=True),
    Column("instance", String(255), nullable=False),
    Column("kind", String(8), nullable=False),
    Column("uri", Text, nullable=False),
    Column("digest_function", Integer, nullable=False),
    Column("hash", String(128), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("obtained", Float, nullable=False),  # when the download started, or the push came
    Column("expire_at", Float),  # no longer returned after this (NULL: retention decides)
    Column("pushed", Boolean, nullable=False, default=False),
)
Index("granary_asset_records_obtained", records.c.obtained)


@dataclass(frozen=True)
class Record:
    uri: str
    hash: str
    size: int
    obtained: float
    expire_at: float | None
    pushed: bool


def record_key(instance: str, kind: str, function: int, uri: str, qualifiers_key: str) -> str:
    text_ = "\x00".join((instance, kind, str(function), uri, qualifiers_key))
    return hashlib.sha256(text_.encode()).hexdigest()


class AssetRecords:
    """`retention`: seconds a downloaded record (or a pushed one without expire_at) is used."""

    def __init__(self, url: str, retention: float):
        self.url = url
        self.retention = retention
        self.engine = make_engine(url)
        self.is_postgres = self.engine.dialect.name == "postgresql"

    def create_schema(self) -> None:
        """Create the table; several server processes may do so at once on a new database."""
        for attempt in range(10):
            try:
                with self.engine.begin() as conn:
                    if self.is_postgres:
                        conn.execute(text("SELECT pg_advisory_xact_lock(7426337)"))
                    metadata.create_all(conn, checkfirst=True)
                return
            except OperationalError as e:
                # SQLite: another process created the table between our check and our CREATE
                if attempt == 9 or "already exists" not in str(e.orig):
                    raise ConfigError(f"remote_asset.database: cannot open {self.safe_url()}: {e.orig}") from None
                time.sleep(0.05)

    def safe_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        self.engine.dispose()

    async def find(
        self, instance: str, kind: str, function: int, uris: Sequence[str], qualifiers_key: str, oldest: float
    ) -> list[Record]:
        """Usable records for these URIs, in the order of `uris`: not expired, not past retention, and
        obtained at or after `oldest` (0: any age)."""
        keys = {record_key(instance, kind, function, u, qualifiers_key): u for u in uris}
        now = time.time()

        def query() -> list[Record]:
            stmt = select(records).where(
                records.c.key.in_(list(keys)),
                records.c.obtained >= oldest,
                or_(records.c.expire_at.is_(None), records.c.expire_at > now),
            )
            with self.engine.connect() as conn:
                rows = conn.execute(stmt).mappings().all()
            found = {}
            for r in rows:
                # a pushed record with its own expire_at lives until then; others until retention ends
                if r["expire_at"] is None and r["obtained"] < now - self.retention:
                    continue
                found[r["key"]] = Record(r["uri"], r["hash"], r["size"], r["obtained"], r["expire_at"], r["pushed"])
            return [found[k] for k in keys if k in found]

        return await run(query)

    async def put(
        self,
        instance: str,
        kind: str,
        function: int,
        uris: Sequence[str],
        qualifiers_key: str,
        hash_: str,
        size: int,
        obtained: float,
        expire_at: float | None = None,
        pushed: bool = False,
    ) -> None:
        rows = [
            {
                "key": record_key(instance, kind, function, u, qualifiers_key),
                "instance": instance,
                "kind": kind,
                "uri": u,
                "digest_function": function,
                "hash": hash_,
                "size": size,
                "obtained": obtained,
                "expire_at": expire_at,
                "pushed": pushed,
            }
            for u in dict.fromkeys(uris)
        ]
        stmt = upsert(self.engine, records, ["key"], ["hash", "size", "obtained", "expire_at", "pushed"])

        def write() -> None:
            with self.engine.begin() as conn:
                conn.execute(stmt, rows)

        await run(write)

    async def forget(self, instance: str, kind: str, function: int, uri: str, qualifiers_key: str) -> None:
        """Drop a record whose content has left the CAS."""
        key = record_key(instance, kind, function, uri, qualifiers_key)

        def write() -> None:
            with self.engine.begin() as conn:
                conn.execute(delete(records).where(records.c.key == key))

        await run(write)

    async def expire(self) -> int:
        """Delete records no longer returned (expired, or past retention without expire_at)."""
        now = time.time()

        def write() -> int:
            with self.engine.begin() as conn:
                result = conn.execute(
                    delete(records).where(
                        or_(
                            records.c.expire_at <= now,
                            (records.c.expire_at.is_(None)) & (records.c.obtained < now - self.retention),
                        )
                    )
                )
                return result.rowcount or 0

        return await run(write)
