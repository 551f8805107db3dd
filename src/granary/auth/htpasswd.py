"""HTTP Basic credentials against an htpasswd file of bcrypt hashes (`htpasswd -B`).

The file is read again when its modification time changes (checked at most once a
second). Only bcrypt entries ($2a$, $2b$, $2y$) are accepted: any other entry stops
start-up with a line naming the file, line and user. bcrypt runs in a thread so the
event loop keeps serving, and a verified (user, password) pair is remembered for a short
while under a keyed hash, because clients send the same Basic header on every call.
Unknown users are checked against a dummy hash so timing does not tell which users exist.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
from collections import OrderedDict
from pathlib import Path

import bcrypt

from granary.auth.identity import AuthMethod, Identity
from granary.errors import ConfigError, Unauthenticated

log = logging.getLogger("granary.auth")
BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2y$")


def _dummy_hash(users: dict[str, bytes]) -> bytes:
    """A hash of the cost most users have, to check unknown users against."""
    costs = [h[4:6] for h in users.values() if h[4:6].isdigit()]
    rounds = int(max(set(costs), key=costs.count)) if costs else 10
    return bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(rounds=min(max(rounds, 4), 16)))


def parse_htpasswd(text: str, where: str) -> dict[str, bytes]:
    users: dict[str, bytes] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not user or not hashed:
            raise ConfigError(f"{where}:{lineno}: expected 'user:bcrypt-hash'")
        if not hashed.startswith(BCRYPT_PREFIXES):
            raise ConfigError(
                f"{where}:{lineno}: user {user!r} does not have a bcrypt hash; only bcrypt is accepted"
                " (create entries with `htpasswd -B`)"
            )
        users[user] = hashed.encode()
    return users


def _check(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password[:72], hashed)
    except ValueError:  # a malformed hash: never a match
        return False


class HtpasswdFile:
    def __init__(self, path: Path, *, cache_seconds: float = 60.0, cache_entries: int = 10_000):
        self.path = Path(path)
        self.cache_seconds = cache_seconds
        self.cache_entries = cache_entries
        self._key = secrets.token_bytes(32)
        self._cache: OrderedDict[bytes, tuple[str | None, float]] = OrderedDict()
        self._lock = threading.Lock()
        self._mtime = self._stat(start=True)
        self._users = self._read(start=True)
        self._dummy = _dummy_hash(self._users)
        self._checked = time.monotonic()

    def _stat(self, start: bool = False) -> float:
        try:
            return os.stat(self.path).st_mtime_ns
        except OSError as e:
            if start:
                raise ConfigError(f"auth.htpasswd: cannot read {self.path}: {e.strerror}") from None
            return -1

    def _read(self, start: bool = False) -> dict[str, bytes]:
        try:
            return parse_htpasswd(self.path.read_text(), str(self.path))
        except OSError as e:
            raise ConfigError(f"auth.htpasswd: cannot read {self.path}: {e.strerror}") from None

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked < 1.0:
            return
        self._checked = now
        mtime = self._stat()
        if mtime == self._mtime:
            return
        try:
            users = self._read()
        except ConfigError as e:  # keep serving with the users we had
            log.error("htpasswd not reloaded: %s", e)
            return
        dummy = _dummy_hash(users)
        with self._lock:
            self._users, self._mtime, self._dummy = users, mtime, dummy
            self._cache.clear()
        log.info("htpasswd %s reloaded: %d users", self.path, len(users))

    def users(self) -> list[str]:
        self._maybe_reload()
        return sorted(self._users)

    def verify(self, user: str, password: str) -> bool:
        """bcrypt check (blocking); the same work whether or not the user exists."""
        hashed = self._users.get(user)
        ok = _check(password.encode(), hashed if hashed is not None else self._dummy)
        return ok and hashed is not None

    async def authenticate(self, user: str, password: str, where: str) -> Identity:
        self._maybe_reload()
        key = hmac.new(self._key, f"{user}\0{password}".encode(), hashlib.sha256).digest()
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and now - hit[1] <= self.cache_seconds:
            ok = hit[0] == user
        else:
            ok = await asyncio.to_thread(self.verify, user, password)
            with self._lock:
                self._cache[key] = (user if ok else None, now)
                self._cache.move_to_end(key)
                while len(self._cache) > self.cache_entries:
                    self._cache.popitem(last=False)
        if not ok:
            raise Unauthenticated(f"{where}: wrong user name or password for {user!r}")
        return Identity(user, AuthMethod.BASIC)
