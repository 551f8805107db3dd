"""Cross-process wake-ups come from notifications, not from polling: two server processes share
one queue (SQLite on one host, or PostgreSQL) with a poll interval far longer than every wait
below, so each wait can only end in time if the other process announced its change."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from rwapi import ExecClient, FakeBot, Stream
from serverutil import start_granary
from services import PostgresServer

from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2

QUEUED = 2
NEVER = "600s"  # poll_interval and long polls: a wake-up that waits for them fails the test
WAIT = 30  # seconds any test wait may take; far below NEVER and the 60 s stream keep-alive


@pytest.fixture(scope="module")
def postgres():
    try:
        pg = PostgresServer()
    except RuntimeError as e:
        pytest.skip(str(e))
    yield pg
    pg.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def queue_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'queue.sqlite'}"
    return request.getfixturevalue("postgres").create_database(f"t{uuid.uuid4().hex[:12]}")


def config(url: str, tmp_path) -> str:
    return f"""
storage: {{main: {{type: disk, path: {tmp_path / 'cas'}}}}}
action_caches: {{main: {{type: disk, path: {tmp_path / 'ac'}}}}}
instances: {{"": {{cas: main, action_cache: main}}}}
execution: {{database: "{url}", local_workers: 0, platform_grace: 0, poll_interval: {NEVER},
            bot_long_poll: {NEVER}, bot_timeout: 1200s, known_platforms: [{{OSFamily: linux, ISA: x86-64}}]}}
"""


def test_other_process_wakes_bot_long_poll_and_execute_stream(tmp_path, queue_url):
    cfg = config(queue_url, tmp_path)
    a = start_granary(tmp_path / "a", cfg)
    b = start_granary(tmp_path / "b", cfg)
    try:
        client = ExecClient(a.address)
        bot = FakeBot(b.address)
        bot.connect(timeout=3)  # (a creation long-polls for work until near its deadline)
        for round_ in range(3):  # more than once: the channel keeps working after use
            polled: list[object] = []
            poll = threading.Thread(target=lambda out=polled: out.append(bot.update(timeout=WAIT)), daemon=True)
            poll.start()  # B long-polls for work with nothing queued
            time.sleep(1)  # (let the poll reach B first, so only a wake-up can answer it in time)
            d, _ = client.action(["wake", str(round_)])
            stream = Stream(client.execute(d, timeout=120))
            stream.wait_stage(QUEUED)  # queued on A: A announces it, B's long poll answers
            poll.join(WAIT + 5)
            assert polled and bot.pending(), "B's long poll was not woken by the job queued on A"
            [lease] = bot.pending()
            bot.accept(lease.id)
            bot.complete(lease.id, re_pb2.ActionResult(stdout_raw=f"round {round_}".encode()))
            # completed on B: A's Execute stream is woken without polling
            assert stream.result(timeout=WAIT).result.stdout_raw == f"round {round_}".encode()
        bot.close()
        client.close()
    finally:
        a.stop()
        b.stop()


def test_peer_that_died_is_forgotten(tmp_path):
    """A killed process leaves its marker behind; the others stop writing to it."""
    url = f"sqlite:///{tmp_path / 'queue.sqlite'}"
    cfg = config(url, tmp_path)
    a = start_granary(tmp_path / "a", cfg)
    b = start_granary(tmp_path / "b", cfg)
    peers = tmp_path / "queue.sqlite-peers"
    try:
        assert sorted(p.name for p in peers.iterdir()) == sorted(str(p) for p in _server_pids(a, b))
        b.stop(sig=9)
        client = ExecClient(a.address)
        bot = FakeBot(a.address)
        bot.connect(timeout=3)  # (a creation long-polls for work until near its deadline)
        d, _ = client.action(["after", "a", "crash"])
        stream = Stream(client.execute(d, timeout=120))
        bot.run(stdout=b"still fine")
        assert stream.result(timeout=WAIT).result.stdout_raw == b"still fine"
        assert [p.name for p in peers.iterdir()] == [str(a.proc.pid)]
        bot.close()
        client.close()
    finally:
        a.stop()
        b.stop()
    assert not list(peers.iterdir())  # a clean stop removes its marker


def _server_pids(*servers) -> list[int]:
    return [s.proc.pid for s in servers]
