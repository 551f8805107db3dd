"""OIDC/JWT bearer tokens, verified against a JWKS from a file or from the issuer.

With `jwks_url` (or issuer discovery: `{issuer}/.well-known/openid-configuration` names
the `jwks_uri`) the key set is fetched on first use, refreshed every `refresh_seconds`,
and fetched again when a token names an unknown key id, at most once per
`refetch_min_seconds`. A `jwks_file` is read again when it changes. Signature, issuer,
audience, expiry (with `leeway`) and the algorithm (from an allow-list that never holds
`none` or an HMAC algorithm) are all checked; `name_claim` names the identity and
`groups_claim` gives the groups that policy rules match.

Clients send the same token on every call, so a verified token's identity is remembered
(bounded, for at most `cache_seconds` and never past its expiry).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
import urllib.request
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from granary.auth.defaults import ASYMMETRIC, DEFAULT_ALGORITHMS
from granary.auth.identity import AuthMethod, Identity
from granary.errors import ConfigError, Unauthenticated, Unavailable

log = logging.getLogger("granary.auth")


@dataclass
class JwtOptions:
    issuer: str
    audience: str | list[str]
    jwks_file: Path | None = None
    jwks_url: str | None = None  # None with no jwks_file: discovered from the issuer
    name_claim: str = "sub"
    groups_claim: str | None = "groups"
    algorithms: Sequence[str] = DEFAULT_ALGORITHMS
    leeway: float = 30.0
    refresh_seconds: float = 3600.0
    refetch_min_seconds: float = 30.0
    fetch_timeout: float = 10.0
    cache_seconds: float = 60.0
    cache_entries: int = 10_000

    def check(self) -> None:
        if not self.issuer:
            raise ConfigError("auth.jwt.issuer: required (the `iss` claim tokens must carry)")
        if not self.audience:
            raise ConfigError("auth.jwt.audience: required (the `aud` claim tokens must carry)")
        if self.jwks_file is not None and self.jwks_url is not None:
            raise ConfigError("auth.jwt: give jwks_file or jwks_url, not both")
        bad = [a for a in self.algorithms if a not in ASYMMETRIC]
        if bad or not self.algorithms:
            raise ConfigError(
                f"auth.jwt.algorithms: {', '.join(bad) or 'empty'} not allowed; choose from {', '.join(ASYMMETRIC)}"
            )


def _fetch_json(url: str, timeout: float) -> dict[str, Any]:
    req = urllib.request.Request(url, headers={"Accept": "application/json", "User-Agent": "granary"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read(4 << 20))


def _key_set(data: Any, where: str) -> jwt.PyJWKSet:
    try:
        return jwt.PyJWKSet.from_dict(data)
    except (jwt.PyJWKSetError, jwt.InvalidKeyError, TypeError, KeyError, AttributeError) as e:
        raise ValueError(f"{where}: not a usable JWKS: {e}") from None


class JwtVerifier:
    def __init__(self, options: JwtOptions):
        options.check()
        self.o = options
        self._keys: jwt.PyJWKSet | None = None
        self._fetched = 0.0  # monotonic time of the last fetch attempt
        self._loaded = 0.0  # monotonic time of the last successful load
        self._file_mtime = -1
        self._file_checked = 0.0
        self._lock = asyncio.Lock()
        self._verified: OrderedDict[bytes, tuple[Identity, float, float]] = OrderedDict()  # identity, exp, when
        if options.jwks_file is not None:
            self._load_file(start=True)

    # ---- keys -------------------------------------------------------------------

    def _load_file(self, start: bool = False) -> None:
        path = self.o.jwks_file
        assert path is not None
        try:
            mtime = os.stat(path).st_mtime_ns
            if mtime == self._file_mtime:
                return
            self._keys = _key_set(json.loads(Path(path).read_text()), str(path))
            self._file_mtime = mtime
        except (OSError, ValueError) as e:
            if start:
                raise ConfigError(f"auth.jwt.jwks_file: {e}") from None
            log.error("JWKS file not reloaded: %s", e)

    def _jwks_url(self) -> str:
        if self.o.jwks_url:
            return self.o.jwks_url
        doc_url = self.o.issuer.rstrip("/") + "/.well-known/openid-configuration"
        doc = _fetch_json(doc_url, self.o.fetch_timeout)
        uri = doc.get("jwks_uri") if isinstance(doc, dict) else None
        if not isinstance(uri, str) or not uri:
            raise ValueError(f"{doc_url} names no jwks_uri")
        return uri

    def _fetch_keys(self) -> jwt.PyJWKSet:
        url = self._jwks_url()
        return _key_set(_fetch_json(url, self.o.fetch_timeout), url)

    async def _refresh(self, unknown_kid: bool) -> None:
        """Fetch the key set when there is none, when it is old, or for an unknown kid (rate-limited)."""
        if self.o.jwks_file is not None:
            now = time.monotonic()
            if now - self._file_checked >= 1.0 or unknown_kid:
                self._file_checked = now
                self._load_file()
            return
        async with self._lock:
            now = time.monotonic()
            stale = self._keys is None or now - self._loaded >= self.o.refresh_seconds
            if not stale and not (unknown_kid and now - self._fetched >= self.o.refetch_min_seconds):
                return
            if self._keys is None and now - self._fetched < 1.0:
                return  # failed a moment ago: do not hammer the issuer
            self._fetched = now
            try:
                self._keys = await asyncio.to_thread(self._fetch_keys)
                self._loaded = time.monotonic()
            except (OSError, ValueError) as e:
                log.warning("cannot fetch the JWKS of %s: %s", self.o.issuer, e)

    def _find_key(self, kid: str | None) -> jwt.PyJWK | None:
        if self._keys is None:
            return None
        keys = self._keys.keys
        if kid is None:
            return keys[0] if len(keys) == 1 else None
        for k in keys:
            if k.key_id == kid:
                return k
        return None

    # ---- tokens -----------------------------------------------------------------

    async def authenticate(self, token: str, where: str) -> Identity:
        key = hashlib.sha256(token.encode()).digest()
        hit = self._verified.get(key)
        if hit is not None:
            identity, exp, when = hit
            if time.time() < exp + self.o.leeway and time.monotonic() - when < self.o.cache_seconds:
                return identity
            del self._verified[key]
        identity, exp = await self._verify(token, where)
        self._verified[key] = (identity, exp, time.monotonic())
        while len(self._verified) > self.o.cache_entries:
            self._verified.popitem(last=False)
        return identity

    async def _verify(self, token: str, where: str) -> tuple[Identity, float]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as e:
            raise Unauthenticated(f"{where}: bearer token is neither an access token nor a JWT ({e})") from None
        alg = header.get("alg")
        if alg not in self.o.algorithms:
            allowed = ", ".join(self.o.algorithms)
            raise Unauthenticated(f"{where}: JWT algorithm {alg!r} is not accepted (allowed: {allowed})")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Unauthenticated(f"{where}: JWT key id {kid!r} is not a string")
        await self._refresh(unknown_kid=False)
        key = self._find_key(kid)
        if key is None:
            await self._refresh(unknown_kid=True)
            key = self._find_key(kid)
        if key is None:
            if self._keys is None:
                raise Unavailable(f"{where}: the JWKS of {self.o.issuer} could not be fetched; try again later")
            raise Unauthenticated(f"{where}: JWT signed with unknown key id {kid!r}")
        try:
            claims = jwt.decode(
                token,
                key=key.key,
                algorithms=[alg],
                audience=self.o.audience,
                issuer=self.o.issuer,
                leeway=self.o.leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated(f"{where}: JWT has expired") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated(f"{where}: JWT audience is not {self.o.audience!r}") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated(f"{where}: JWT issuer is not {self.o.issuer!r}") from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated(f"{where}: JWT signature does not verify") from None
        except (jwt.PyJWTError, ValueError, TypeError) as e:
            raise Unauthenticated(f"{where}: JWT rejected: {e}") from None
        return self.identity(claims, where), float(claims["exp"])

    def identity(self, claims: dict[str, Any], where: str) -> Identity:
        name = claims.get(self.o.name_claim)
        if not isinstance(name, str) or not name:
            raise Unauthenticated(f"{where}: JWT lacks a string {self.o.name_claim!r} claim to name the caller")
        groups: frozenset[str] = frozenset()
        if self.o.groups_claim:
            raw = claims.get(self.o.groups_claim)
            if isinstance(raw, str):
                groups = frozenset(raw.split())
            elif isinstance(raw, list):
                groups = frozenset(str(g) for g in raw)
        return Identity(name, AuthMethod.JWT, groups=groups, claims=claims)
