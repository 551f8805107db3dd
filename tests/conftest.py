"""Fixtures the execution tests share: a private PostgreSQL per module, and the queue database
each test runs on (SQLite, then PostgreSQL)."""

from __future__ import annotations

import uuid

import pytest
from services import PostgresServer


@pytest.fixture(scope="module")
def postgres():
    try:
        pg = PostgresServer()
    except RuntimeError as e:
        pytest.skip(str(e))
    yield pg
    pg.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def database(request) -> str | None:
    """None: the default SQLite queue in the data directory; else a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return None
    pg = request.getfixturevalue("postgres")
    return pg.create_database(f"t{uuid.uuid4().hex[:12]}")
