"""A worker whose work filesystem fills up: the action's failure is not taken for the action's own
result. It is reported RESOURCE_EXHAUSTED with a message naming the full filesystem (never cached;
clients run it again), where it used to be a bare `exit 1` the cache could keep."""

from __future__ import annotations

import os
import subprocess

import pytest
from test_sandbox_attacks import _executor, client, server  # noqa: F401  (fixtures)
from test_worker import put_action

from granary.worker.execute import ActionRun

ROOT = os.geteuid() == 0


@pytest.fixture
def small_tmpfs(tmp_path):
    if not ROOT:
        pytest.skip("mounting a small tmpfs needs root")
    where = tmp_path / "cache"
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(where)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield tmp_path
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_an_action_failing_on_a_full_work_filesystem_is_not_its_own_result(client, server, small_tmpfs):  # noqa: F811
    executor = _executor(server, small_tmpfs, "none")  # cache and work directory on the 16 MiB tmpfs
    fills = put_action(client, ["sh", "-c", "head -c 40M /dev/zero > big"], timeout=60)
    result, status = ActionRun(executor, fills).run()
    assert result.exit_code != 0
    assert status.code == 8, status  # RESOURCE_EXHAUSTED
    assert "work filesystem was full" in status.message and "not cached" in status.message, status.message

    # with room again, an action that fails on its own is its own result, as before
    fails = put_action(client, ["sh", "-c", "exit 3"], timeout=60)
    result, status = ActionRun(executor, fails).run()
    assert (result.exit_code, status.code) == (3, 0), status
