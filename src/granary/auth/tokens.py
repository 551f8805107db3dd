"""Personal access tokens: `gnr_` + 32 random bytes, stored only as their SHA-256 hash.

The secret is shown once, by `create`. Lookups are cached in memory for a few seconds
(bounded), so a revoked token stops working within `cache_seconds`; expiry is checked on
every use against the cached row.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from sqlalchemy import Column, Float, MetaData, String, Table, select, text, update
from sqlalchemy.exc import OperationalError

from granary import sql
from granary.auth.identity import AuthMethod, Identity
from granary.auth.permissions import parse_permission
from granary.errors import ConfigError, Unauthenticated

PREFIX = "gnr_"

metadata = MetaData()
tokens_table = Table(
    "granary_tokens",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(255), nullable=False, index=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("scopes", String(512), nullable=False),
    Column("instance_prefix", String(1024), nullable=True),
    Column("created", Float, nullable=False),
    Column("expires", Float, nullable=True),
    Column("revoked", Float, nullable=True),
)


@dataclass(frozen=True)
class TokenInfo:
    id: str
    name: str
    scopes: frozenset[str]
    instance_prefix: str | None
    created: float
    expires: float | None
    revoked: float | None

    def expired(self, now: float) -> bool:
        return self.expires is not None and now >= self.expires

    def identity(self) -> Identity:
        return Identity(
            self.name, AuthMethod.TOKEN, scopes=self.scopes, instance_prefix=self.instance_prefix, token_id=self.id
        )


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return PREFIX + base64.b32encode(secrets.token_bytes(32)).decode().rstrip("=").lower()


def looks_like_token(value: str) -> bool:
    return value.startswith(PREFIX)


def _info(row) -> TokenInfo:
    scopes = frozenset(s for s in row.scopes.split(",") if s)
    return TokenInfo(row.id, row.name, scopes, row.instance_prefix, row.created, row.expires, row.revoked)


class TokenStore:
    def __init__(self, url: str, *, cache_seconds: float = 5.0, cache_entries: int = 10_000):
        self.engine = sql.make_engine(url)
        self.cache_seconds = cache_seconds
        self.cache_entries = cache_entries
        self._cache: OrderedDict[str, tuple[TokenInfo | None, float]] = OrderedDict()
        self._lock = threading.Lock()

    def safe_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def create_schema(self) -> None:
        """Create the table; several server processes may do so at once on a new database."""
        for attempt in range(10):
            try:
                with self.engine.begin() as conn:
                    if self.engine.dialect.name == "postgresql":
                        conn.execute(text("SELECT pg_advisory_xact_lock(7426336)"))
                    metadata.create_all(conn)
                return
            except OperationalError as e:
                # SQLite: another process created the table between our check and our CREATE
                if attempt == 9 or "already exists" not in str(e.orig):
                    raise ConfigError(f"auth.tokens.database: cannot open {self.safe_url()}: {e.orig}") from None
                time.sleep(0.05)

    def close(self) -> None:
        self.engine.dispose()

    # ---- administration (the CLI) --------------------------------------------

    def create(
        self, name: str, scopes: list[str], expires_in: float | None, instance_prefix: str | None = None
    ) -> tuple[TokenInfo, str]:
        """A new token; returns its row and the secret, which is not stored anywhere."""
        if not name:
            raise ValueError("a token needs a name")
        if not scopes:
            raise ValueError("a token needs at least one scope")
        checked = sorted({parse_permission(s).value for s in scopes})
        secret = new_secret()
        now = time.time()
        row = {
            "id": secrets.token_hex(8),
            "name": name,
            "token_hash": hash_secret(secret),
            "scopes": ",".join(checked),
            "instance_prefix": instance_prefix or None,
            "created": now,
            "expires": now + expires_in if expires_in is not None else None,
            "revoked": None,
        }
        with self.engine.begin() as conn:
            conn.execute(tokens_table.insert().values(**row))
        info = TokenInfo(row["id"], name, frozenset(checked), row["instance_prefix"], now, row["expires"], None)
        return info, secret

    def list(self) -> list[TokenInfo]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(tokens_table).order_by(tokens_table.c.created)).fetchall()
        return [_info(r) for r in rows]

    def revoke(self, name_or_id: str) -> int:
        """Revoke the token with this id, or else every unrevoked token with this name."""
        now = time.time()
        t = tokens_table.c
        with self.engine.begin() as conn:
            n = conn.execute(update(tokens_table).where(t.id == name_or_id, t.revoked.is_(None)).values(revoked=now))
            count = n.rowcount
            if not count:
                n = conn.execute(
                    update(tokens_table).where(t.name == name_or_id, t.revoked.is_(None)).values(revoked=now)
                )
                count = n.rowcount
        with self._lock:
            self._cache.clear()
        return count

    # ---- authentication --------------------------------------------------------

    def lookup(self, secret: str) -> TokenInfo | None:
        """The token row for this secret (revoked and expired ones too), from SQL."""
        with self.engine.connect() as conn:
            row = conn.execute(select(tokens_table).where(tokens_table.c.token_hash == hash_secret(secret))).first()
        return _info(row) if row is not None else None

    def _cached(self, key: str, now: float) -> tuple[bool, TokenInfo | None]:
        with self._lock:
            hit = self._cache.get(key)
            if hit is None or now - hit[1] > self.cache_seconds:
                return False, None
            return True, hit[0]

    def _remember(self, key: str, info: TokenInfo | None, now: float) -> None:
        with self._lock:
            self._cache[key] = (info, now)
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_entries:
                self._cache.popitem(last=False)

    async def authenticate(self, secret: str, where: str) -> Identity:
        """The identity of a valid token; Unauthenticated naming `where` (the header) otherwise."""
        now = time.monotonic()
        key = hash_secret(secret)
        found, info = self._cached(key, now)
        if not found:
            info = await sql.run(lambda: self.lookup(secret))
            self._remember(key, info, now)
        if info is None:
            raise Unauthenticated(f"{where}: unknown access token")
        if info.revoked is not None:
            raise Unauthenticated(f"{where}: access token {info.id} ({info.name}) has been revoked")
        if info.expired(time.time()):
            raise Unauthenticated(f"{where}: access token {info.id} ({info.name}) has expired")
        return info.identity()
