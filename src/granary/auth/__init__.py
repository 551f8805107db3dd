"""Authentication (who is calling) and authorization (what they may do).

identity.py     the caller's Identity and the context variable that carries it through a call
permissions.py  permissions, rules per instance-name prefix, and the Policy that checks them
htpasswd.py     HTTP Basic against an htpasswd file of bcrypt hashes
tokens.py       personal access tokens, stored as SHA-256 hashes in SQL
jwt_auth.py     OIDC/JWT bearer tokens verified against a JWKS
mtls.py         identities from client certificates
authenticator.py  gRPC metadata and TLS peer -> Identity, trying each configured method
interceptor.py  the gRPC server interceptor: authenticate once per call, authorize per method
settings.py     the `auth:` configuration section and the function that builds all of the above
cli.py          `granary token`, `granary login`, `granary credential-helper`
"""
