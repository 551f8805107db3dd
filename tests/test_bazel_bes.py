"""Real Bazel 4.2.3 publishing to Granary's Build Event Service (--bes_backend=grpc://...).

Each build is then read back the way an operator would, with `granary builds` and
`granary build ID`, and the decoded content is checked: the command, the patterns, every
target's outcome, the failing target and its action. The last test cuts Bazel's BES
connection once in the middle of the stream (a TCP proxy that resets it), so that Bazel
retries and re-sends what was not acknowledged: the stored stream must be whole and have
every event exactly once.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import grpc
import pytest
from bazelutil import copy_workspace, have_bazel
from besutil import all_events, query_stub
from serverutil import start_granary

pytestmark = [
    pytest.mark.bazel,
    pytest.mark.skipif(not have_bazel(), reason="bazel is not on PATH"),
]

SRC = Path(__file__).resolve().parent.parent / "src"
CONFIG = 'storage: {main: {type: memory}}\ninstances: {"*": {cas: main}}\n'


def granary_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run([sys.executable, "-m", "granary", *args], capture_output=True, text=True, env=env,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    return out


def bes_flags(url: str, invocation_id: str) -> list[str]:
    return [f"--bes_backend={url}", f"--invocation_id={invocation_id}", "--bes_timeout=120s"]


def listed(server_url: str, invocation_id: str) -> list[str]:
    """The `granary builds` row of an invocation, split into its columns' words."""
    out = granary_cli("builds", "--server", server_url).stdout.splitlines()
    rows = [line.split() for line in out[1:] if line.startswith(invocation_id)]
    assert len(rows) == 1, out
    return rows[0]


def detail(server_url: str, invocation_id: str) -> dict:
    return json.loads(granary_cli("build", invocation_id, "--server", server_url, "--json").stdout)


@pytest.fixture
def granary(tmp_path):
    with start_granary(tmp_path / "server", CONFIG) as g:
        yield g


def test_a_bazel_build_is_listed_with_its_targets_and_outcome(tmp_path, granary):
    ws = copy_workspace("bazel_bes", tmp_path)
    inv = str(uuid.uuid4())
    ws.build("//gen:hello", "//gen:upper", *bes_flags(granary.url, inv))
    row = listed(granary.url, inv)
    assert row[1:4] == ["build", "//gen:hello", "//gen:upper"]
    assert "success" in row
    d = detail(granary.url, inv)
    s = d["summary"]
    assert (s["command"], s["patterns"], s["result"], s["exit_code_name"]) == (
        "build", ["//gen:hello", "//gen:upper"], "success", "SUCCESS")
    assert s["stream_finished"] and s["user"] and int(s["actions_executed"]) >= 2
    assert {(t["label"], t["kind"], t["success"]) for t in d["targets"]} == {
        ("//gen:hello", "genrule rule", True), ("//gen:upper", "genrule rule", True)}
    assert "failures" not in d
    shown = granary_cli("build", inv, "--server", granary.url).stdout
    assert "//gen:hello  genrule rule  success" in shown and "result      success" in shown


def test_a_failing_build_shows_as_failed_with_the_failing_target(tmp_path, granary):
    ws = copy_workspace("bazel_bes", tmp_path)
    inv = str(uuid.uuid4())
    r = ws.build("//gen:broken", "//gen:hello", "--keep_going", *bes_flags(granary.url, inv), check=False)
    assert r.returncode == 1, r.describe()
    row = listed(granary.url, inv)
    assert row[1:4] == ["build", "//gen:broken", "//gen:hello"]
    assert "failed" in row and "(BUILD_FAILURE)" in row
    d = detail(granary.url, inv)
    assert d["summary"]["result"] == "failed" and d["summary"]["exit_code"] == 1
    outcome = {t["label"]: t.get("success", False) for t in d["targets"]}
    assert outcome == {"//gen:broken": False, "//gen:hello": True}
    (failure,) = d["failures"]
    assert (failure["kind"], failure["label"], failure["what"], failure["exit_code"]) == (
        "action", "//gen:broken", "Genrule", 1)
    shown = granary_cli("build", inv, "--server", granary.url).stdout
    assert "//gen:broken  genrule rule  FAILED" in shown


class CuttingProxy:
    """Forwards TCP connections to `upstream`; the first connection is reset (RST) once it has
    carried `cut_after` bytes from the client, as a network failure would."""

    def __init__(self, upstream: str, cut_after: int):
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.cut_after = cut_after
        self.connections = 0
        self.cut = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            server = socket.create_connection(self.upstream)
            first = self.connections == 1
            threading.Thread(target=self._pump, args=(client, server, first), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, counted: bool) -> None:
        carried = 0
        try:
            while data := src.recv(65536):
                dst.sendall(data)
                carried += len(data)
                if counted and carried >= self.cut_after and not self.cut.is_set():
                    self.cut.set()
                    for s in (src, dst):  # RST both ways
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        s.close()
                    return
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()


def test_a_stream_cut_mid_build_is_retried_and_stored_whole_without_duplicates(tmp_path, granary):
    # A build's BES traffic is about 30 KB here: cut the first connection a third of the way in
    proxy = CuttingProxy(granary.address, cut_after=10_000)
    try:
        ws = copy_workspace("bazel_bes", tmp_path)
        inv = str(uuid.uuid4())
        ws.build("//gen:hello", "//gen:upper", *bes_flags(f"grpc://{proxy.address}", inv))
    finally:
        proxy.close()
    assert proxy.cut.is_set() and proxy.connections >= 2  # the cut happened and Bazel came back
    logs = "".join(p.read_text(errors="replace") for p in ws.output_user_root.glob("*/java.log*"))
    assert "Retrying stream" in logs  # Bazel's BES uploader re-opened its event stream (not only a lifecycle call)
    with grpc.insecure_channel(granary.address) as ch:
        tool = all_events(query_stub(ch), f"/{inv}/TOOL$")
    numbers = [e.event.sequence_number for e in tool]
    assert numbers == list(range(1, len(numbers) + 1))  # whole, in order, each once
    assert tool[-1].event.event.HasField("component_stream_finished")
    d = detail(granary.url, inv)
    assert int(d["summary"]["events"]) == len(numbers)
    assert d["summary"]["result"] == "success" and d["summary"]["stream_finished"]
    assert {t["label"] for t in d["targets"]} == {"//gen:hello", "//gen:upper"}
