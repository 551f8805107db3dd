"""The `auth:` configuration section (pydantic models) and what it builds.

    auth:
      htpasswd: /etc/granary/htpasswd        # HTTP Basic users (bcrypt only)
      tokens: {database: sqlite:///tokens.sqlite, header: x-granary-token}
      jwt:
        issuer: https://token.actions.githubusercontent.com
        audience: granary
        groups_claim: groups
      mtls: {identity: common_name}
      anonymous: [{instance: "public/", permissions: [cache-read]}]
      rules:
        - {instance: "", identities: [ci], permissions: [cache-read, cache-write, ac-write, execute]}
        - {instance: "team/", groups: [developers], permissions: [cache-read, cache-write, execute]}
        - {instance: "", identities: [worker-1], permissions: [worker]}

`build_auth(settings, data_dir)` turns it into an Authenticator and a Policy.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from granary.auth.defaults import ASYMMETRIC, DEFAULT_ALGORITHMS, DEFAULT_TOKEN_DATABASE, DEFAULT_TOKEN_HEADER
from granary.auth.localworker import LocalWorkerKey
from granary.auth.mtls import CertField
from granary.auth.permissions import AnonymousGrant, Permission, Policy, Rule
from granary.errors import ConfigError

if TYPE_CHECKING:  # the runtime objects import bcrypt, PyJWT, SQLAlchemy and gRPC: only build_auth needs them
    from granary.auth.authenticator import Authenticator
    from granary.auth.interceptor import AuthInterceptor
    from granary.auth.tls import TlsFiles
    from granary.auth.tokens import TokenStore

__all__ = ["DEFAULT_TOKEN_DATABASE", "AuthSettings", "TlsSettings", "build_auth", "check_exposure"]


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def _seconds(value: Any) -> Any:
    """'30s', '10m', '1h', '1d' or a number of seconds."""
    if isinstance(value, str):
        m = _DURATION.match(value)
        if not m:
            raise ValueError(f"expected a duration like 30s, 10m or 1h, got {value!r}")
        return float(m.group(1)) * _UNITS[m.group(2)]
    return value


Seconds = Annotated[float, BeforeValidator(_seconds)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TokenSettings(_Model):
    database: str = Field(
        DEFAULT_TOKEN_DATABASE,
        description="SQLAlchemy URL of the token table; relative SQLite paths are under the data directory;"
        " postgresql+psycopg://... to share tokens between servers",
    )
    header: str = Field(
        DEFAULT_TOKEN_HEADER,
        description="metadata key that may carry a token instead of `authorization: Bearer` (lower case)",
    )
    cache_seconds: Seconds = Field(
        5.0, ge=0, le=300, description="how long a token lookup is remembered: a revocation takes effect within this"
    )

    @field_validator("header")
    @classmethod
    def _header(cls, v: str) -> str:
        if not v or v != v.lower() or v.endswith("-bin") or not all(c.isalnum() or c in "-_." for c in v):
            raise ValueError(f"expected a lower-case metadata key such as x-granary-token, got {v!r}")
        return v


class JwtSettings(_Model):
    issuer: str = Field(..., description="the `iss` every token must carry; also where discovery starts")
    audience: str | list[str] = Field(..., description="the `aud` (one of them) every token must carry")
    jwks_file: Path | None = Field(None, description="a JWKS file (re-read when it changes)")
    jwks_url: str | None = Field(
        None, description="URL of the JWKS; default: jwks_uri of {issuer}/.well-known/openid-configuration"
    )
    name_claim: str = Field("sub", description="claim that names the identity")
    groups_claim: str | None = Field("groups", description="claim with the groups (list or space-separated)")
    algorithms: list[str] = Field(
        list(DEFAULT_ALGORITHMS), description=f"accepted signature algorithms, from {', '.join(ASYMMETRIC)}"
    )
    leeway: Seconds = Field(30.0, ge=0, le=600, description="seconds of clock skew allowed on exp/nbf/iat")
    refresh_seconds: Seconds = Field(3600.0, gt=0, description="fetched key sets are refreshed this often")
    refetch_min_seconds: Seconds = Field(
        30.0, ge=0, description="an unknown key id makes a refetch at most this often"
    )

    @field_validator("algorithms")
    @classmethod
    def _algorithms(cls, v: list[str]) -> list[str]:
        bad = [a for a in v if a not in ASYMMETRIC]
        if bad or not v:
            raise ValueError(f"{', '.join(bad) or 'nothing'} not allowed; choose from {', '.join(ASYMMETRIC)}")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> JwtSettings:
        if self.jwks_file is not None and self.jwks_url is not None:
            raise ValueError("give jwks_file or jwks_url, not both")
        return self


class MtlsSettings(_Model):
    identity: Literal["common_name", "subject_alternative_name"] = Field(
        "common_name", description="which field of a verified client certificate names the caller"
    )
    san_prefix: str = Field(
        "", description="with subject_alternative_name: use the first SAN starting with this (e.g. spiffe://)"
    )


class AnonymousSettings(_Model):
    instance: str = Field("", description="instance-name prefix ('' or '*': every instance)")
    permissions: list[Permission] = Field(..., description="what callers without credentials may do there")


class RuleSettings(_Model):
    instance: str = Field("", description="instance-name prefix ('' or '*': every instance)")
    identities: list[str] = Field([], description="identity names ('*': any authenticated caller)")
    groups: list[str] = Field([], description="groups (from the JWT groups claim) granted the permissions")
    claims: dict[str, str | list[str]] = Field(
        {}, description="JWT claims that must all match (a list: any of its values)"
    )
    permissions: list[Permission] = Field(..., description="permissions granted")

    @model_validator(mode="after")
    def _someone(self) -> RuleSettings:
        if not (self.identities or self.groups or self.claims):
            raise ValueError("a rule needs identities, groups or claims")
        return self


class TlsSettings(_Model):
    """Transport security of the gRPC port (meant for `server.tls`)."""

    cert: Path = Field(..., description="PEM certificate chain of the server (re-read when it changes)")
    key: Path = Field(..., description="PEM private key of the server (re-read when it changes)")
    client_ca: Path | None = Field(
        None, description="PEM CA bundle; when set, clients must present a certificate it signed (mTLS)"
    )

    def files(self, data_dir: Path) -> TlsFiles:
        from granary.auth.tls import TlsFiles

        ca = _path(self.client_ca, data_dir) if self.client_ca is not None else None
        return TlsFiles(_path(self.cert, data_dir), _path(self.key, data_dir), ca)


class AuthSettings(_Model):
    htpasswd: Path | None = Field(None, description="htpasswd file of bcrypt hashes for HTTP Basic")
    tokens: TokenSettings | None = Field(None, description="personal access tokens (`granary token create`)")
    jwt: JwtSettings | None = Field(None, description="OIDC/JWT bearer tokens")
    mtls: MtlsSettings | None = Field(None, description="identities from client certificates (needs a client CA)")
    anonymous: list[AnonymousSettings] = Field(
        [], description="what callers without credentials may do, per instance prefix"
    )
    rules: list[RuleSettings] = Field([], description="permissions per instance prefix for identities and groups")

    @property
    def enabled(self) -> bool:
        """Whether any credential method is configured (else every call is anonymous)."""
        return any(x is not None for x in (self.htpasswd, self.tokens, self.jwt, self.mtls))


@dataclass
class AuthRuntime:
    authenticator: Authenticator
    policy: Policy

    def interceptor(self) -> AuthInterceptor:
        from granary.auth.interceptor import AuthInterceptor  # gRPC: only in processes that serve

        return AuthInterceptor(self.authenticator, self.policy)

    def close(self) -> None:
        if self.authenticator.tokens is not None:
            self.authenticator.tokens.close()


def _path(p: Path, base: Path) -> Path:
    p = p.expanduser()
    return p if p.is_absolute() else base / p


def token_store(settings: TokenSettings | None, data_dir: Path) -> TokenStore:
    from granary.auth.tokens import TokenStore
    from granary.sql import resolve_url

    s = settings or TokenSettings()
    store = TokenStore(resolve_url(s.database, data_dir), cache_seconds=s.cache_seconds)
    store.create_schema()
    return store


def build_policy(settings: AuthSettings) -> Policy:
    rules = [
        Rule(r.instance, frozenset(r.permissions), frozenset(r.identities), frozenset(r.groups), dict(r.claims))
        for r in settings.rules
    ]
    anonymous = [AnonymousGrant(a.instance, frozenset(a.permissions)) for a in settings.anonymous]
    return Policy(rules, anonymous)


def build_auth(settings: AuthSettings, data_dir: Path, local_worker: LocalWorkerKey | None = None) -> AuthRuntime:
    """The runtime objects; ConfigError (one line) for files or databases that cannot be used.

    `local_worker`: the hash of the secret this server's own workers present (localworker.py)."""
    from granary.auth.authenticator import Authenticator
    from granary.auth.htpasswd import HtpasswdFile
    from granary.auth.jwt_auth import JwtOptions, JwtVerifier
    from granary.auth.mtls import CertIdentities

    htpasswd = HtpasswdFile(_path(settings.htpasswd, data_dir)) if settings.htpasswd is not None else None
    tokens = token_store(settings.tokens, data_dir) if settings.tokens is not None else None
    verifier = None
    if settings.jwt is not None:
        j = settings.jwt
        verifier = JwtVerifier(
            JwtOptions(
                issuer=j.issuer,
                audience=j.audience,
                jwks_file=_path(j.jwks_file, data_dir) if j.jwks_file is not None else None,
                jwks_url=j.jwks_url,
                name_claim=j.name_claim,
                groups_claim=j.groups_claim,
                algorithms=tuple(j.algorithms),
                leeway=j.leeway,
                refresh_seconds=j.refresh_seconds,
                refetch_min_seconds=j.refetch_min_seconds,
            )
        )
    certs = None
    if settings.mtls is not None:
        certs = CertIdentities(CertField(settings.mtls.identity), settings.mtls.san_prefix)
    header = settings.tokens.header if settings.tokens is not None else DEFAULT_TOKEN_HEADER
    authenticator = Authenticator(htpasswd, tokens, verifier, certs, header, local_worker)
    return AuthRuntime(authenticator, build_policy(settings))


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, settings: AuthSettings, allow_unauthenticated: bool) -> None:
    """Secure default: without any credential method, listen on loopback only, unless the
    operator said so explicitly (e.g. `--allow-unauthenticated-network-access`)."""
    if settings.enabled or allow_unauthenticated or is_loopback(host):
        return
    raise ConfigError(
        f"server.listen: {host} is reachable from other hosts but no authentication is configured (auth:);"
        " configure auth, listen on 127.0.0.1, or pass --allow-unauthenticated-network-access"
    )
