"""Constants the `auth:` settings need, kept apart from the modules that import bcrypt, PyJWT
and SQLAlchemy, so reading the configuration (the supervisor, `granary config`) stays light."""

from __future__ import annotations

DEFAULT_TOKEN_HEADER = "x-granary-token"
DEFAULT_TOKEN_DATABASE = "sqlite:///tokens.sqlite"
# signature algorithms a JWT may use: asymmetric only, so a public JWKS cannot forge tokens
ASYMMETRIC = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
DEFAULT_ALGORITHMS = ("RS256", "ES256")
