"""End-to-end: a real Bazel (4.2.3 here) uses Granary's bazel-remote HTTP protocol as its cache.

The workspace (tests/workspaces/bazel_basic: genrules, a tree artifact, cc and py rules) is built
with `--remote_cache=http://...` on the HTTP port, cleaned, and built again: the warm build must
be all remote cache hits with byte-identical outputs. Then a third build with a brand-new output
base talks gRPC to the same server: it must be all hits as well, so what came in over HTTP (the
CAS blobs and the Action Cache entries) is the same data gRPC serves.
"""

from __future__ import annotations

import pytest
from bazelutil import BazelResult, BazelWorkspace, copy_workspace, have_bazel, remote_flags
from obsutil import http_url
from serverutil import start_granary

pytestmark = [
    pytest.mark.bazel,
    pytest.mark.skipif(not have_bazel(), reason="bazel is not on PATH"),
    pytest.mark.timeout(900),
]

CONFIG = """\
storage:
  main: {type: disk, path: cas}
action_caches:
  ac: {type: disk, path: ac}
instances:
  "*": {cas: main, action_cache: ac}
http:
  cache: {enabled: true}
"""
TARGETS = ("//...",)


def _log(server) -> str:
    return server.log.read_text(errors="replace")[-4000:]


def _hashes(ws: BazelWorkspace, **kw) -> dict[str, str]:
    out = ws.output_hashes(**kw)
    assert out and any(k.startswith("tree/tree_out/sub/deeper/") for k in out), sorted(out)
    return out


def _all_hits(result: BazelResult, cold: BazelResult, server) -> None:
    assert result.ok, result.describe()
    assert result.non_internal == cold.non_internal, f"cold {cold.summary} vs warm {result.summary}"
    assert result.count("remote cache hit") == cold.non_internal, (
        f"not all remote cache hits:\n{result.describe()}\n--- server log ---\n{_log(server)}")
    assert "WARNING: Remote Cache" not in result.output, result.describe()
    assert "Writing to Remote Cache" not in result.output, result.describe()


def _roundtrip(tmp_path, instance: str | None) -> None:
    server = start_granary(tmp_path / "server", CONFIG)
    try:
        base = http_url(server)
        url = f"{base}/{instance}" if instance else base
        http_flags = [f"--remote_cache={url}", "--remote_timeout=60"]
        ws = copy_workspace("bazel_basic", tmp_path / "bazel")
        cold = ws.build(*TARGETS, *http_flags)
        assert cold.ok, cold.describe()
        assert cold.cache_hits == 0 and cold.non_internal >= 15, cold.describe()
        assert "Writing to Remote Cache" not in cold.output, f"{cold.describe()}\n{_log(server)}"
        before = _hashes(ws)

        ws.clean()
        warm = ws.build(*TARGETS, *http_flags)
        _all_hits(warm, cold, server)
        assert _hashes(ws) == before

        # the same entries over gRPC: a fresh output base, --remote_cache=grpc://
        fresh = tmp_path / "grpc-output-base"
        via_grpc = ws.build(*TARGETS, *remote_flags(server.address, instance), output_base=fresh)
        _all_hits(via_grpc, cold, server)
        print(f"cold {cold.summary}; warm over HTTP {warm.summary}; over gRPC {via_grpc.summary}")
        assert _hashes(ws, output_base=fresh) == before
    finally:
        server.stop()


def test_bazel_http_cache_roundtrip(tmp_path):
    """--remote_cache=http://HOST:PORT: warm build all hits, same outputs, then the same over gRPC."""
    _roundtrip(tmp_path, None)


def test_bazel_http_cache_instance_prefix(tmp_path):
    """--remote_cache=http://HOST:PORT/team/linux maps to instance "team/linux" (as gRPC's
    --remote_instance_name=team/linux), and another prefix is another cache."""
    _roundtrip(tmp_path, "team/linux")
