"""Authentication (who is calling) and authorization (what they may do).

identity.py     the caller's Identity and the context variable that carries it through a call
permissions.py  permissions, rules per instance-name prefix, and the Policy that checks them
htpasswd.py     HTTP Basic against an htpasswd file of bcrypt hashes
tokens.py       personal access tokens, stored as SHA-256 hashes in SQL
jwt_auth.py     OIDC/JWT bearer tokens verified against a JWKS
mtls.py         identities from client certificates
authenticator.py  gRPC metadata and TLS peer -> Identity, trying each configured method
interceptor.py  the gRPC server interceptor: authenticate once per call, authorize per method
settings.py     the `auth:` and `server.tls:` configuration sections and build_auth, which builds the above
defaults.py     constants the settings need without importing bcrypt, PyJWT or SQLAlchemy
localworker.py  the secret `granary serve` gives the local workers it starts
callers.py      the current identity as the owner (or admin) the scheduler checks operations against
tls.py          server TLS credentials from certificate files, re-read when they change
cli.py          `granary token`, `granary login`, `granary credential-helper`
"""
