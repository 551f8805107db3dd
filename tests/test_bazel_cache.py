"""End-to-end: a real Bazel (4.2.3 here) uses Granary as its remote cache.

Each test copies tests/workspaces/bazel_basic (genrules with one and several
outputs, chained genrules, a Starlark rule with a tree-artifact output,
cc_library/cc_binary/cc_test, sh_test, py_binary/py_test) to tmp_path, builds
it against a fresh `granary serve`, throws the local outputs away and builds
again: the second build must be served from the cache and give byte-identical
outputs.
"""

from __future__ import annotations

import subprocess

import pytest
from bazelutil import (
    BAZEL,
    BazelResult,
    BazelWorkspace,
    bazel_version,
    copy_workspace,
    have_bazel,
    remote_flags,
)
from serverutil import start_granary

pytestmark = [
    pytest.mark.bazel,
    pytest.mark.skipif(not have_bazel(), reason="bazel is not on PATH"),
    pytest.mark.timeout(900),
]

WORKSPACE = "bazel_basic"
TARGETS = ("//...",)
MIN_HIT_RATE = 0.95

TEAM_CONFIG = """\
storage:
  cas-main: {type: disk, path: cas}
action_caches:
  ac-main: {type: disk, path: ac}
instances:
  "team/linux": {cas: cas-main, action_cache: ac-main}
"""

# What Bazel prints when a cache read or write failed but the build went on.
REMOTE_WARNINGS = (
    "Reading from Remote Cache",
    "Writing to Remote Cache",
    "Failed to query remote execution capabilities",
)


@pytest.fixture
def ws(tmp_path) -> BazelWorkspace:
    return copy_workspace(WORKSPACE, tmp_path / "bazel")


def _server_log(server) -> str:
    try:
        return server.log.read_text(errors="replace")[-4000:]
    except OSError:
        return "<no server log>"


def _check_cold(result: BazelResult, server) -> None:
    """The first build against an empty cache: ran everything, uploaded cleanly."""
    assert result.summary is not None, result.describe()
    assert result.cache_hits == 0, f"empty cache yet hits:\n{result.describe()}"
    assert result.non_internal >= 15, f"too few actions ran:\n{result.describe()}"
    for w in REMOTE_WARNINGS:
        assert w not in result.output, (
            f"Bazel warned about the cache:\n{result.describe()}\n--- server log ---\n{_server_log(server)}"
        )


def _check_warm(result: BazelResult, cold: BazelResult, server) -> None:
    assert result.summary is not None, result.describe()
    for w in REMOTE_WARNINGS:
        assert w not in result.output, (
            f"Bazel warned about the cache:\n{result.describe()}\n--- server log ---\n{_server_log(server)}"
        )
    assert result.non_internal == cold.non_internal, f"cold {cold.summary} vs warm {result.summary}"
    assert result.hit_rate >= MIN_HIT_RATE, (
        f"hit rate {result.hit_rate:.0%} < {MIN_HIT_RATE:.0%}:\n{result.describe()}\n--- server log ---\n{_server_log(server)}"
    )


def _assert_same_outputs(before: dict[str, str], after: dict[str, str]) -> None:
    assert before, "no outputs were hashed"
    missing = sorted(set(before) - set(after))
    extra = sorted(set(after) - set(before))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    assert not (missing or extra or changed), f"missing={missing} extra={extra} changed={changed}"
    # The tree artifact must have come back whole, not as an empty directory.
    assert any(k.startswith("tree/tree_out/sub/deeper/") for k in after), sorted(after)


def test_cache_roundtrip_after_clean(tmp_path, ws):
    """(a) build+test with --remote_cache, `bazel clean`, again: all from cache."""
    server = start_granary(tmp_path / "server", processes=None)  # the defaults: one process per core
    try:
        flags = remote_flags(server.address)
        cold = ws.test(*TARGETS, *flags)
        _check_cold(cold, server)
        before = ws.output_hashes()
        ws.clean()
        warm = ws.test(*TARGETS, *flags)
        _check_warm(warm, cold, server)
        assert warm.output.count("(cached) PASSED") == 3, warm.describe()
        _assert_same_outputs(before, ws.output_hashes())
    finally:
        server.stop()


def test_instance_name_with_slash_default_config(tmp_path, ws):
    """(b) --remote_instance_name=team/linux with the default (wildcard)
    config; the second build uses a brand-new output base."""
    server = start_granary(tmp_path / "server")
    try:
        flags = remote_flags(server.address, "team/linux")
        cold = ws.build(*TARGETS, *flags)
        _check_cold(cold, server)
        before = ws.output_hashes()
        fresh = tmp_path / "fresh-output-base"
        warm = ws.build(*TARGETS, *flags, output_base=fresh)
        _check_warm(warm, cold, server)
        _assert_same_outputs(before, ws.output_hashes(output_base=fresh))

        # Another instance name is another cache: nothing may leak across.
        other = ws.build(
            *TARGETS, *remote_flags(server.address, "team/other"), output_base=tmp_path / "ob-other"
        )
        assert other.cache_hits == 0, other.describe()
    finally:
        server.stop()


def test_instance_name_with_slash_mapped_config(tmp_path, ws):
    """(b) the same with a config that maps exactly "team/linux" to disk
    stores; the server is restarted between the builds, so the hits must
    come from disk."""
    server = start_granary(tmp_path / "server", TEAM_CONFIG)
    try:
        flags = remote_flags(server.address, "team/linux")
        cold = ws.build(*TARGETS, *flags)
        _check_cold(cold, server)
        before = ws.output_hashes()
    finally:
        server.stop()
    data = server.data_dir
    assert (data / "cas").is_dir() and (data / "ac").is_dir(), sorted(p.name for p in data.iterdir())

    server = start_granary(tmp_path / "server", TEAM_CONFIG)
    try:
        flags = remote_flags(server.address, "team/linux")
        ws.clean()
        warm = ws.build(*TARGETS, *flags)
        _check_warm(warm, cold, server)
        _assert_same_outputs(before, ws.output_hashes())
    finally:
        server.stop()


def test_cache_compression(tmp_path, ws):
    """(c) --experimental_remote_cache_compression (zstd over ByteStream)."""
    help_text = subprocess.run(
        [BAZEL, *ws.startup_flags(), "help", "build"],
        check=False,
        cwd=ws.root,
        env=ws.env(),
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout
    if "remote_cache_compression" not in help_text:
        pytest.skip(
            f"{bazel_version()} has no --experimental_remote_cache_compression "
            "(the flag arrived in Bazel 5.0; 4.2.3 answers 'Unrecognized option')"
        )
    server = start_granary(tmp_path / "server")
    try:
        flags = remote_flags(server.address, None, "--experimental_remote_cache_compression")
        cold = ws.build(*TARGETS, *flags)
        _check_cold(cold, server)
        before = ws.output_hashes()
        ws.clean()
        warm = ws.build(*TARGETS, *flags)
        _check_warm(warm, cold, server)
        _assert_same_outputs(before, ws.output_hashes())
    finally:
        server.stop()


def test_unmapped_instance_name_is_refused(tmp_path, ws):
    """(d) with only "team/linux" configured, --remote_instance_name=other is
    refused. Granary answers INVALID_ARGUMENT (unknown instance name) from
    GetCapabilities, which Bazel 4.2.3 checks before building: the build fails."""
    server = start_granary(tmp_path / "server", TEAM_CONFIG)
    try:
        res = ws.build(
            "//gen:hello", *remote_flags(server.address, "other", "--remote_retries=0"), check=False
        )
        assert res.returncode != 0, f"build with an unmapped instance succeeded:\n{res.describe()}"
        assert "INVALID_ARGUMENT" in res.output, res.describe()
        assert "unknown instance name" in res.output, res.describe()
        assert "other" in res.output, res.describe()
    finally:
        server.stop()
