"""/metrics after a real Bazel build (issue 10): the counters agree with what the build did.

A real Bazel builds tests/workspaces/bazel_basic (genrules, a tree artifact, C++) with remote
execution on a fresh `granary serve` (the defaults: one server process per core, local workers),
then again after `bazel clean` (every action a remote cache hit). After each build /metrics is
scraped and compared with Bazel's own summary and the outputs it wrote.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from bazelutil import bazel_version, copy_workspace, have_bazel
from obsutil import http_url, scrape, settled
from serverutil import start_granary
from test_bazel_remote_execution import remote_exec_flags

pytestmark = [
    pytest.mark.bazel,
    pytest.mark.skipif(not have_bazel(), reason="bazel is not on PATH"),
    pytest.mark.timeout(1800),
]

TARGETS = ("//gen/...", "//tree/...", "//cc:greeter")
COUNTERS = ("granary_grpc_requests_total", "granary_cas_written_bytes_total", "granary_cas_read_bytes_total",
            "granary_action_cache_hits_total", "granary_action_cache_misses_total")


def output_bytes(bin_dir: Path) -> int:
    """Bytes of the regular files Bazel wrote under bazel-bin for TARGETS (runfiles trees aside)."""
    total = 0
    for top in ("gen", "tree", "cc"):
        for dirpath, dirnames, filenames in os.walk(bin_dir / top):
            dirnames[:] = [d for d in dirnames if not d.endswith((".runfiles", "_objs"))]
            for name in filenames:
                p = Path(dirpath) / name
                if p.is_file() and not p.is_symlink() and not name.endswith(".runfiles_manifest"):
                    total += p.stat().st_size
    return total


def test_metrics_agree_with_a_bazel_build(tmp_path):
    print(f"\n{bazel_version()}")
    server = start_granary(tmp_path / "server", processes=None)
    try:
        base = http_url(server)
        ws = copy_workspace("bazel_basic", tmp_path / "ws")
        flags = remote_exec_flags(server.address)
        before = scrape(base)
        cold = ws.build(*TARGETS, *flags)
        executed = cold.count("remote")
        assert executed >= 8 and executed == cold.non_internal, cold.describe()
        outputs = output_bytes(ws.bin_dir())
        assert outputs > 0
        m1 = settled(base, COUNTERS)
        print(f"cold: {cold.summary}; {outputs} output bytes")

        # every remotely executed action: one Execute call, one job its worker finished
        assert m1.total("granary_grpc_requests_total", method="Execute", code="OK") == executed
        assert m1.total("granary_execution_jobs_completed_total", outcome="ok") == executed
        assert m1.total("granary_execution_jobs_completed_total") == executed
        assert m1.total("granary_execution_queue_wait_seconds_count") == executed
        assert m1.total("granary_execution_duration_seconds_count") == executed
        # Bazel looked each action up first (GetActionResult), and Execute looked again: all misses
        assert m1.total("granary_action_cache_hits_total") == 0
        assert m1.total("granary_action_cache_misses_total") >= executed
        assert m1.total("granary_grpc_requests_total", method="GetActionResult", code="NOT_FOUND") == executed
        # the workers uploaded every output and Bazel downloaded them
        assert m1.total("granary_cas_written_bytes_total") >= outputs
        assert m1.total("granary_cas_read_bytes_total") >= outputs
        assert m1.total("granary_grpc_sent_bytes_total", service="google.bytestream.ByteStream") + m1.total(
            "granary_grpc_sent_bytes_total", method="BatchReadBlobs") >= outputs
        assert m1.total("granary_workers_connected") >= 1
        assert m1.total("granary_execution_queue_depth") == 0
        assert m1.total("granary_execution_jobs", stage="executing") == 0
        assert m1.total("granary_cas_stored_blobs") >= 2 * executed  # actions, commands, outputs...
        assert before.total("granary_grpc_requests_total", method="Execute") == 0

        ws.clean()
        warm = ws.build(*TARGETS, *flags)
        hits = warm.count("remote cache hit")
        assert hits == executed and warm.non_internal == hits, warm.describe()
        m2 = settled(base, COUNTERS)
        print(f"warm: {warm.summary}")
        assert m2.total("granary_action_cache_hits_total") == hits
        assert m2.total("granary_grpc_requests_total", method="GetActionResult", code="OK") == hits
        assert m2.total("granary_grpc_requests_total", method="Execute") == executed  # nothing ran again
        assert m2.total("granary_execution_jobs_completed_total") == executed
        read_again = m2.total("granary_cas_read_bytes_total") - m1.total("granary_cas_read_bytes_total")
        assert read_again >= outputs, (read_again, outputs)
        assert m2.total("granary_cas_written_bytes_total") == m1.total("granary_cas_written_bytes_total")
    finally:
        server.stop()
    assert server.proc.returncode == 0, server.log.read_text()[-4000:]
