"""The supervisor of several server processes: they are forks of it (its imports are theirs,
shared), one that dies is replaced and the tree still serves and stops cleanly; a server that
cannot start stops the whole tree with its reason. Real processes throughout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from rwapi import ExecClient, final
from serverutil import start_granary

from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2

CONFIG = """
storage: {main: {type: disk, path: cas}}
action_caches: {main: {type: disk, path: ac}}
instances: {"": {cas: main, action_cache: main}}
execution: {local_workers: 1}
"""
WAIT = 60  # seconds any wait below may take


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def servers(pid: int) -> list[int]:
    return sorted(c for c in children(pid) if comm(c) == "granary-server")


def wait_servers(pid: int, count: int, without: int | None = None) -> list[int]:
    deadline = time.monotonic() + WAIT
    while True:
        found = servers(pid)
        if len(found) == count and without not in found:
            return found
        assert time.monotonic() < deadline, f"server processes of {pid}: {found}"
        time.sleep(0.05)


def capabilities_on_new_connections(address: str, count: int) -> None:
    """Each call on its own connection: SO_REUSEPORT spreads connections over the processes."""
    for _ in range(count):
        with grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
            call = ch.unary_unary("/build.bazel.remote.execution.v2.Capabilities/GetCapabilities",
                                  request_serializer=re_pb2.GetCapabilitiesRequest.SerializeToString,
                                  response_deserializer=re_pb2.ServerCapabilities.FromString)
            assert call(re_pb2.GetCapabilitiesRequest(), timeout=WAIT).cache_capabilities.digest_functions


def shared_fraction(pid: int) -> float:
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        fields[key] = int(rest.split()[0])
    return (fields["Shared_Clean"] + fields["Shared_Dirty"]) / fields["Rss"]


def test_servers_are_forks_and_one_that_dies_is_replaced(tmp_path: Path) -> None:
    server = start_granary(tmp_path, CONFIG, processes=2)
    try:
        first = wait_servers(server.proc.pid, 2)
        # forked from the supervisor after it imported what they run on: most of their pages are its
        assert all(shared_fraction(p) > 0.5 for p in first), [shared_fraction(p) for p in first]
        os.kill(first[0], signal.SIGKILL)
        after = wait_servers(server.proc.pid, 2, without=first[0])
        assert first[1] in after  # the other one was left alone
        capabilities_on_new_connections(server.address, 8)
        client = ExecClient(server.address)
        try:
            action, _ = client.action(["sh", "-c", "echo after the restart"])
            response = final(client.execute(action, timeout=WAIT))
            assert response.status.code == 0, response.status
            assert response.result.exit_code == 0, response.result
        finally:
            client.close()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(WAIT) == 0
    finally:
        server.stop()
    log = server.log.read_text()
    assert f"server process {first[0]} exited with -9; starting another" in log, log
    assert "Traceback" not in log, log


def test_a_server_that_cannot_start_stops_the_tree_with_its_reason(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "cas").write_text("a file where the store's directory should be")
    proc = subprocess.run(
        [sys.executable, "-m", "granary", "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data),
         "--processes", "2"],
        input=b"", capture_output=True, timeout=WAIT * 2, check=False,
    )
    assert proc.returncode != 0
    err = proc.stderr.decode()
    assert "Not a directory" in err and "cas" in err, err
    assert b"serving REAPI" not in proc.stdout
