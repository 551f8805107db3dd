"""From a call's metadata and TLS peer to an Identity, trying each configured method.

Credentials are read as Bazel sends them: `authorization: Basic base64(user:password)`,
`authorization: Bearer <token>` (from --remote_header or a credential helper), or the
operator's token header (default `x-granary-token`). A Bearer value with the access-token
prefix is an access token; anything else is a JWT when JWT is configured. Header
credentials win over a client certificate; with neither, the caller is anonymous.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass

from granary.auth.defaults import DEFAULT_TOKEN_HEADER
from granary.auth.htpasswd import HtpasswdFile
from granary.auth.identity import ANONYMOUS, Identity
from granary.auth.jwt_auth import JwtVerifier
from granary.auth.localworker import IDENTITY as LOCAL_WORKER_IDENTITY
from granary.auth.localworker import SECRET_PREFIX as LOCAL_WORKER_PREFIX
from granary.auth.localworker import LocalWorkerKey
from granary.auth.mtls import AuthContext, CertIdentities
from granary.auth.tokens import TokenStore, looks_like_token
from granary.errors import Unauthenticated

AUTHORIZATION = "authorization"
Metadata = Sequence[tuple[str, str | bytes]]


def _values(metadata: Metadata | None, key: str) -> list[str | bytes]:
    return [v for k, v in metadata or () if k == key]


def _text(value: str | bytes, header: str) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("ascii")
        except UnicodeDecodeError:
            raise Unauthenticated(f"{header}: header value is not ASCII text") from None
    return value


@dataclass
class Authenticator:
    htpasswd: HtpasswdFile | None = None
    tokens: TokenStore | None = None
    jwt: JwtVerifier | None = None
    certificates: CertIdentities | None = None
    token_header: str = DEFAULT_TOKEN_HEADER
    local_worker: LocalWorkerKey | None = None  # the secret of the workers `granary serve` started

    async def identify(self, metadata: Metadata | None, auth_context: AuthContext | None = None) -> Identity:
        """The caller, ANONYMOUS without credentials; Unauthenticated for credentials that do not check out."""
        auth = _values(metadata, AUTHORIZATION)
        if len(auth) > 1:
            raise Unauthenticated(f"{AUTHORIZATION}: sent {len(auth)} times; send one")
        if auth:
            return await self._authorization(_text(auth[0], AUTHORIZATION))
        tok = _values(metadata, self.token_header)
        if len(tok) > 1:
            raise Unauthenticated(f"{self.token_header}: sent {len(tok)} times; send one")
        if tok:
            return await self._token(_text(tok[0], self.token_header).strip(), self.token_header)
        if self.certificates is not None and auth_context:
            cert = self.certificates.identity(auth_context)
            if cert is not None:
                return cert
        return ANONYMOUS

    async def _authorization(self, value: str) -> Identity:
        scheme, _, rest = value.strip().partition(" ")
        scheme, rest = scheme.lower(), rest.strip()
        if scheme == "basic":
            return await self._basic(rest)
        if scheme == "bearer":
            if not rest:
                raise Unauthenticated(f"{AUTHORIZATION}: Bearer without a token")
            if rest.startswith(LOCAL_WORKER_PREFIX):
                if self.local_worker is not None and self.local_worker.matches(rest):
                    return LOCAL_WORKER_IDENTITY
                raise Unauthenticated(f"{AUTHORIZATION}: Bearer: not the credential of this server's local workers")
            if looks_like_token(rest):
                return await self._token(rest, f"{AUTHORIZATION}: Bearer")
            if self.jwt is None:
                raise Unauthenticated(
                    f"{AUTHORIZATION}: Bearer value is not a Granary access token (gnr_...)"
                    " and this server accepts no JWTs"
                )
            return await self.jwt.authenticate(rest, f"{AUTHORIZATION}: Bearer")
        shown = scheme[:20] or "(empty)"
        raise Unauthenticated(f"{AUTHORIZATION}: unsupported scheme {shown!r} (use Basic or Bearer)")

    async def _basic(self, encoded: str) -> Identity:
        where = f"{AUTHORIZATION}: Basic"
        try:
            decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise Unauthenticated(f"{where}: credentials are not base64 of 'user:password'") from None
        user, sep, password = decoded.partition(":")
        if not sep or not user:
            raise Unauthenticated(f"{where}: credentials are not base64 of 'user:password'")
        if self.htpasswd is None:
            raise Unauthenticated(f"{where}: this server accepts no passwords")
        return await self.htpasswd.authenticate(user, password, where)

    async def _token(self, value: str, where: str) -> Identity:
        if not value:
            raise Unauthenticated(f"{where}: empty access token")
        if self.tokens is None:
            raise Unauthenticated(f"{where}: this server accepts no access tokens")
        if not looks_like_token(value):
            raise Unauthenticated(f"{where}: not a Granary access token (gnr_...)")
        return await self.tokens.authenticate(value, where)
