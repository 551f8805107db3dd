"""Unexpected exceptions from backends map to the status a client should act on: UNAVAILABLE (retry)
for a database or store that is down, RESOURCE_EXHAUSTED for a full disk, INTERNAL for bugs."""

from __future__ import annotations

import errno
import socket

import grpc
import psycopg
import pytest

from granary.services.status import classify


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_postgresql_down_is_unavailable():
    # what the job queue's raw cursors raise while PostgreSQL restarts (seen as INTERNAL before)
    with pytest.raises(psycopg.OperationalError) as e:
        psycopg.connect(f"host=127.0.0.1 port={_closed_port()} user=x dbname=x connect_timeout=5")
    assert classify(e.value) == grpc.StatusCode.UNAVAILABLE


def test_other_failures():
    assert classify(ConnectionRefusedError()) == grpc.StatusCode.UNAVAILABLE
    assert classify(OSError(errno.ENOSPC, "No space left on device")) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert classify(KeyError("ContentLength")) == grpc.StatusCode.INTERNAL
    assert classify(psycopg.ProgrammingError("syntax")) == grpc.StatusCode.INTERNAL
