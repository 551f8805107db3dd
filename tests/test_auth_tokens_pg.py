"""Access tokens in PostgreSQL (several servers sharing one token table)."""

from __future__ import annotations

import asyncio

import pytest
from services import PostgresServer

from granary.auth.tokens import TokenStore
from granary.errors import Unauthenticated


@pytest.fixture(scope="module")
def pg_url():
    try:
        server = PostgresServer()
    except RuntimeError as e:  # as test_execution does: PostgreSQL binaries not installed
        pytest.skip(str(e))
    yield server.create_database("granary_tokens")
    server.stop()


def test_tokens_in_postgresql(pg_url):
    a, b = TokenStore(pg_url, cache_seconds=0), TokenStore(pg_url, cache_seconds=0)
    a.create_schema()
    b.create_schema()  # a second server process: the table is there already
    info, secret = a.create("ci", ["cache-read", "ac-write"], 3600, instance_prefix="ci/")
    identity = asyncio.run(b.authenticate(secret, "authorization"))
    assert (identity.name, identity.scopes, identity.instance_prefix) == ("ci", frozenset({"cache-read", "ac-write"}),
                                                                          "ci/")
    assert [t.id for t in b.list()] == [info.id]
    assert b.revoke(info.id) == 1
    with pytest.raises(Unauthenticated, match="revoked"):
        asyncio.run(a.authenticate(secret, "authorization"))
    with pytest.raises(Unauthenticated, match="unknown access token"):
        asyncio.run(a.authenticate(secret + "x", "authorization"))
    a.close()
    b.close()
