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
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "granary: worker idle held no lease for 1s (--max-idle); exiting" in proc.stdout
    assert len(bots.sessions) == 2 and bots.statuses[-1] == bots_pb2.BOT_TERMINATING


def test_cli_max_idle_refuses_a_bad_duration(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "granary", "worker", "--server", "127.0.0.1:1", "--max-idle", "soon",
         "--cache-dir", str(tmp_path / "cas")],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert "--max-idle: expected a duration like 30s, 10m or 600 (seconds), got 'soon'" in proc.stderr
