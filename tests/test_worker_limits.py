"""Per-action resource limits (`granary worker --action-memory`, `--action-pids`): an action past its
limit fails, names the limit in its stderr, and the neighbour action on the same worker completes.

The executors are those of tests/test_sandbox_attacks.py (a root worker runs actions as nobody, as
`granary worker` does), against a real `granary serve` for the CAS.
"""

from __future__ import annotations

import os
import threading
import time

import pytest
from test_sandbox_attacks import _executor, client, server  # noqa: F401  (fixtures)
from test_worker import put_action

from granary.worker.execute import ActionRun
from granary.worker.limits import ActionLimits, format_bytes

MEMORY = 256 << 20
PIDS = 32


def _run(executor, action):
    return ActionRun(executor, action).run()


def _stderr(client, result) -> str:  # noqa: F811
    return client.bs_read(result.stderr_digest).decode(errors="replace")


def _host_processes(argv: list[str]) -> int:
    """Processes on the host whose command line is exactly argv."""
    want = ("\0".join(argv) + "\0").encode()
    n = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    n += f.read() == want
            except OSError:
                continue
    return n


@pytest.mark.parametrize("mode", ["bwrap", "none"])
def test_memory_hungry_action_fails_at_its_limit_while_a_neighbour_completes(client, server, tmp_path,  # noqa: F811
                                                                             mode):
    executor = _executor(server, tmp_path, mode)
    executor.limits = ActionLimits.make(MEMORY, None)
    # tail keeps the last line, and 500 MiB of zeros are one line: it must hold them all
    hog = put_action(client, ["sh", "-c", "head -c 500M /dev/zero | tail -n 1 > /dev/null"], timeout=60)
    neighbour = put_action(client, ["sh", "-c", "head -c 50M /dev/zero | tail -n 1 > big && wc -c < big > out"],
                           output_files=["out"], timeout=60)
    results: dict[str, tuple] = {}
    threads = [threading.Thread(target=lambda k=k, a=a: results.__setitem__(k, _run(executor, a)))
               for k, a in (("hog", hog), ("neighbour", neighbour))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    result, status = results["hog"]
    assert status.code == 0, status
    err = _stderr(client, result)
    assert result.exit_code != 0, err
    assert "memory exhausted" in err or "Cannot allocate memory" in err, err
    assert (f"under memory limit {format_bytes(MEMORY)} of address space per process"
            " (granary worker --action-memory)") in err
    result, status = results["neighbour"]
    assert status.code == 0 and result.exit_code == 0, _stderr(client, result)
    assert client.bs_read(result.output_files[0].digest).decode().strip() == str(50 << 20)


def test_fork_bomb_fails_at_its_process_limit(client, server, tmp_path):  # noqa: F811
    executor = _executor(server, tmp_path, "bwrap")
    executor.limits = ActionLimits.make(None, PIDS)
    bomb = put_action(client, ["sh", "-c", "i=0; while [ $i -lt 1000 ]; do sleep 30 & i=$((i+1)); done; echo all"],
                      timeout=60)
    result, status = _run(executor, bomb)
    err = _stderr(client, result)
    assert status.code == 0, status
    assert result.exit_code != 0 and "all" not in client.bs_read(result.stdout_digest).decode(), err
    assert "fork" in err.lower(), err
    assert f"process limit {PIDS} (granary worker --action-pids)" in err



def test_fork_bomb_at_its_limit_leaves_the_neighbour_free_to_fork(client, server, tmp_path):  # noqa: F811
    executor = _executor(server, tmp_path, "bwrap")
    executor.limits = ActionLimits.make(None, PIDS)
    # The subshell forks until it cannot (and dies); its sleeps hold the limit; then the action
    # becomes `sleep 62` (exec: no fork needed), which tells the test the bomb is at its limit.
    bomb_run = ActionRun(executor, put_action(
        client, ["sh", "-c", "(while :; do sleep 61 & done) 2>/dev/null; exec sleep 62"], timeout=120))
    bomb: dict[str, tuple] = {}
    t = threading.Thread(target=lambda: bomb.__setitem__("r", bomb_run.run()), daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 60
        while _host_processes(["sleep", "62"]) == 0:
            assert time.monotonic() < deadline and t.is_alive(), "the bomb never reached its limit"
            time.sleep(0.1)
        held = _host_processes(["sleep", "61"])
        assert 0 < held <= PIDS
        neighbour = put_action(client, ["sh", "-c", "for i in $(seq 12); do sleep 1 & done; wait; echo ok > out"],
                               output_files=["out"], timeout=60)
        result, status = _run(executor, neighbour)
        assert status.code == 0 and result.exit_code == 0, _stderr(client, result)
        assert client.bs_read(result.output_files[0].digest) == b"ok\n"
        assert _host_processes(["sleep", "61"]) == held  # the bomb could not grow meanwhile
    finally:
        bomb_run.cancel()
        t.join(60)
    assert not t.is_alive()
    deadline = time.monotonic() + 30
    while _host_processes(["sleep", "61"]):  # the bomb's PID namespace ended with it
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_limits_need_sane_flags(tmp_path):
    import subprocess
    import sys

    def worker(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "granary", "worker", "--server", "127.0.0.1:1",
                               "--cache-dir", str(tmp_path / "cas"), *args],
                              check=False, capture_output=True, text=True, timeout=60)

    r = worker("--action-pids", "0")
    assert r.returncode == 2 and "--action-pids: expected 1 or more, got 0" in r.stderr
    r = worker("--action-memory", "lots")
    assert r.returncode == 2 and "--action-memory:" in r.stderr
    r = worker("--action-memory", "1KiB")
    assert r.returncode == 2 and "--action-memory: expected at least 1MiB" in r.stderr
