"""Worker fleets: `granary worker --max-idle` (leave when no work came for a while) and `granary queue`
(the queue depth an autoscaler scales on), against a fake Bots server and a real `granary serve`."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from serverutil import start_granary
from test_worker import _wait_file, _worker, client, fake_bots, put_action, server  # noqa: F401  (fixtures)

from granary._proto.google.devtools.remoteworkers.v1test2 import bots_pb2
from granary.execution.leases import lease_result, make_lease


def test_max_idle_waits_for_the_running_lease_then_leaves(client, server, fake_bots, tmp_path):  # noqa: F811
    bots, address = fake_bots
    worker, thread = _worker(tmp_path, server.address, address, max_idle=1.0)
    go = tmp_path / "go"
    started = tmp_path / "started"
    script = f"echo 1 > {started}; while [ ! -e {go} ]; do sleep 0.05; done; echo done"
    bots.offer(make_lease("long", put_action(client, ["sh", "-c", script], timeout=60)))
    _wait_file(started)
    thread.join(3.0)  # three times --max-idle: a worker holding a lease is not idle
    assert thread.is_alive() and not worker.idle_exit
    go.touch()
    lease = bots.wait_completed("long")
    assert lease.status.code == 0 and lease_result(lease).exit_code == 0
    thread.join(30)  # then nothing more comes: it leaves by itself
    assert not thread.is_alive()
    assert worker.idle_exit
    assert bots.statuses[-1] == bots_pb2.BOT_TERMINATING  # said goodbye, so the server offers it nothing


def test_cli_max_idle_exits_zero(fake_bots, tmp_path):  # noqa: F811
    bots, address = fake_bots
    proc = subprocess.run(
        [sys.executable, "-m", "granary", "worker", "--server", address, "--concurrency", "2", "--name", "idle",
         "--cache-dir", str(tmp_path / "cas"), "--sandbox", "none", "--max-idle", "1s"],
        check=False, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "granary: worker idle held no lease for 1s (--max-idle); exiting" in proc.stdout
    assert len(bots.sessions) == 2 and bots.statuses[-1] == bots_pb2.BOT_TERMINATING


def test_cli_max_idle_refuses_a_bad_duration(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "granary", "worker", "--server", "127.0.0.1:1", "--max-idle", "soon",
         "--cache-dir", str(tmp_path / "cas")],
        check=False, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert "--max-idle: expected a duration like 30s, 10m or 600 (seconds), got 'soon'" in proc.stderr


# ---- granary queue ---------------------------------------------------------------------------------


def _queue(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "granary", "queue", *args], check=False,
                          capture_output=True, text=True, timeout=60)


def test_queue_shows_depth_per_platform_and_jobs_by_stage(tmp_path):
    from execsetup import config
    from obsutil import http_url
    from rwapi import LINUX, ExecClient, FakeBot, Stream

    with start_granary(tmp_path, config()) as srv:
        base = http_url(srv)
        c = ExecClient(srv.address)
        streams = []
        for i in range(3):
            action, _ = c.action(["sh", "-c", f"echo {i} > out"], platform=LINUX)
            streams.append(Stream(c.execute(action, skip_cache=True)))
        for s in streams:
            s.wait_first()
        bot = FakeBot(srv.address)
        bot.connect()
        bot.accept(bot.wait_lease().id)  # one job executing, two still queued
        deadline = time.monotonic() + 30
        while True:
            proc = _queue("--url", base, "--json")
            assert proc.returncode == 0, proc.stderr
            got = json.loads(proc.stdout)
            if got["executing"] == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert got["url"] == f"{base}/metrics"
        assert got["queued"] == 2 and got["executing"] == 1
        (name, q), = got["queues"].items()
        assert q["queued"] == 2 and q["executing"] == 1
        assert q["platforms"] == {"ISA=x86-64,OSFamily=linux": 2}
        assert q["workers"] == 1 and q["slots"] == 1 and q["slots_busy"] == 1
        proc = _queue("--url", base, "--once")
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert lines[0] == f"granary queue: {base}/metrics"
        assert lines[2].split()[:3] == [name, "2", "1"] and lines[2].endswith("1/1")
        assert lines[-1].split() == [name, "2", "ISA=x86-64,OSFamily=linux"]
        bot.close()
        c.close()


def test_queue_errors_are_one_line_with_status_exit_codes(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = _queue("--url", f"http://127.0.0.1:{port}", "--json")
    assert proc.returncode == 3 and proc.stdout == ""
    assert proc.stderr.startswith(f"granary queue: cannot reach http://127.0.0.1:{port}/metrics")
    proc = _queue("--url", "ftp://x", "--once")
    assert proc.returncode == 2 and "--url: expected http:// or https://" in proc.stderr
