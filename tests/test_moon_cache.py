"""moon (moonrepo) as a real remote-cache client of Granary.

moon 2.x speaks REAPI over gRPC: GetCapabilities, FindMissingBlobs,
BatchUpdateBlobs/BatchReadBlobs below ~4 MiB, ByteStream Write/Read above
(with `compressed-blobs/zstd/...` resource names when zstd is configured),
GetActionResult and UpdateActionResult. Its "action digest" is the digest of
moon's own JSON hash manifest (.moon/cache/hashes/<hash>.json), not an Action
proto, and its ActionResults carry only `output_files`.

The test runs a task that writes outputs, checks that moon uploaded them
(moon's trace log, and Granary queried directly), wipes moon's local cache and
the outputs, runs the task again and asserts moon restored it from the remote
cache (its run report says `cached-from-remote`, the task did not execute, and
a file holding a nanosecond timestamp comes back byte-identical).

moon comes from npm: `npm install --prefix tests/clients` (see
tests/clients/package.json). The test also finds `moon` via $GRANARY_MOON or
PATH, and skips when there is none.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from serverutil import start_granary

HERE = Path(__file__).resolve().parent
INSTANCE = "granary-moon-test"
BIG = 5 * 1024 * 1024  # above moon's ~4 MiB batch limit, so it goes through ByteStream


def find_moon() -> str | None:
    env = os.environ.get("GRANARY_MOON")
    if env:
        return env
    # The native binary that the npm wrapper (node_modules/.bin/moon) execs.
    for cand in sorted((HERE / "clients" / "node_modules" / "@moonrepo").glob("core-*/moon")):
        if os.access(cand, os.X_OK):
            return str(cand)
    return shutil.which("moon")


MOON = find_moon()
pytestmark = [
    pytest.mark.client,
    pytest.mark.skipif(MOON is None, reason="moon not installed (npm install --prefix tests/clients)"),
    pytest.mark.skipif(shutil.which("git") is None, reason="moon needs git"),
    pytest.mark.timeout(300),
]

GEN_SH = f"""\
set -e
mkdir -p out/sub
echo "hello from moon" > out/a.txt
printf '#!/bin/sh\\necho tool\\n' > out/tool.sh
chmod 755 out/tool.sh
# a fresh value on every real execution: proves a later run restored, not re-ran
date +%s%N > out/stamp.txt
head -c {BIG} /dev/urandom > out/sub/big-random.bin
yes granary | head -c {BIG + 12345} > out/sub/big-text.txt
"""


def make_workspace(root: Path, address: str, compression: str) -> Path:
    ws = root / "ws"
    (ws / ".moon").mkdir(parents=True)
    (ws / "app").mkdir()
    (ws / ".moon" / "workspace.yml").write_text(
        "projects:\n"
        "  app: 'app'\n"
        "remote:\n"
        f"  host: 'grpc://{address}'\n"
        "  api: 'grpc'\n"
        "  cache:\n"
        f"    instanceName: '{INSTANCE}'\n"
        f"    compression: '{compression}'\n"
        "    verifyIntegrity: true\n"
    )
    (ws / "app" / "moon.yml").write_text(
        "tasks:\n  build:\n    command: 'sh gen.sh'\n    inputs: ['gen.sh']\n    outputs: ['out']\n"
    )
    (ws / "app" / "gen.sh").write_text(GEN_SH)
    (ws / ".gitignore").write_text(".moon/cache\napp/out\n")
    git = [
        "git",
        "-c",
        "user.name=granary",
        "-c",
        "user.email=granary@example.invalid",
        "-c",
        "init.defaultBranch=main",
        "-c",
        "commit.gpgsign=false",
    ]
    subprocess.run(git + ["init", "-q", "-b", "master"], cwd=ws, check=True)
    subprocess.run(git + ["add", "-A"], cwd=ws, check=True)
    subprocess.run(git + ["commit", "-qm", "init"], cwd=ws, check=True)
    return ws


def moon_env(root: Path) -> dict[str, str]:
    # Under CI=true moon compares against the default branch as CI systems do; this is a
    # local workspace, so the test runs moon as a developer would, in CI or not.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOON_") and k not in ("CI", "CONTINUOUS_INTEGRATION")}
    env.update(
        MOON_HOME=str(root / "moon-home"),  # plugins, ids: keep them out of ~/.moon
        MOON_TELEMETRY="false",
        NO_COLOR="1",
        MOON_COLOR="false",
    )
    return env


def run_moon(ws: Path, env: dict[str, str], log: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [MOON, "run", "app:build", "--log", "trace", "--log-file", str(log)],
        check=False,
        cwd=ws,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, (
        f"moon failed ({proc.returncode}):\n{proc.stdout}\n--- log tail ---\n{tail(log)}"
    )
    return proc


def tail(path: Path, n: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def remote_warnings(log: Path) -> list[str]:
    """moon's WARN/ERROR lines about its remote storage (it never fails the task on them)."""
    return [
        line
        for line in log.read_text(errors="replace").splitlines()
        if re.search(r"\b(WARN|ERROR)\b", line)
        and re.search(r"remote|grpc|storage|compression", line, re.IGNORECASE)
    ]


def task_operations(ws: Path) -> tuple[str, list[dict]]:
    report = json.loads((ws / ".moon" / "cache" / "runReport.json").read_text())
    for action in report["actions"]:
        if action.get("label") == "RunTask(app:build)":
            return action["status"], action["operations"]
    raise AssertionError(f"no RunTask(app:build) in runReport.json: {report}")


def snapshot(out: Path) -> dict[str, tuple[bytes, bool]]:
    files = {}
    for p in sorted(out.rglob("*")):
        if p.is_file():
            files[str(p.relative_to(out))] = (p.read_bytes(), bool(p.stat().st_mode & stat.S_IXUSR))
    return files


def check_server_has_result(
    address: str, ws: Path, task_hash: str, outputs: dict[str, tuple[bytes, bool]]
) -> None:
    """Ask Granary directly: the ActionResult moon stored and every output blob."""
    import grpc

    from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
    from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc

    manifest = ws / ".moon" / "cache" / "hashes" / f"{task_hash}.json"
    action_digest = re_pb2.Digest(hash=task_hash, size_bytes=manifest.stat().st_size)
    with grpc.insecure_channel(address) as ch:
        ac = re_grpc.ActionCacheStub(ch)
        cas = re_grpc.ContentAddressableStorageStub(ch)
        result = ac.GetActionResult(
            re_pb2.GetActionResultRequest(instance_name=INSTANCE, action_digest=action_digest), timeout=30
        )
        assert result.exit_code == 0
        by_path = {f.path: f for f in result.output_files}
        for rel, (data, executable) in outputs.items():
            path = f"app/out/{rel}"
            assert path in by_path, f"{path} not in stored ActionResult: {sorted(by_path)}"
            f = by_path[path]
            assert f.digest.hash == hashlib.sha256(data).hexdigest()
            assert f.digest.size_bytes == len(data)
            assert f.is_executable == executable, path
        missing = cas.FindMissingBlobs(
            re_pb2.FindMissingBlobsRequest(
                instance_name=INSTANCE, blob_digests=[f.digest for f in result.output_files]
            ),
            timeout=30,
        ).missing_blob_digests
        assert list(missing) == [], f"ActionResult refers to blobs Granary lacks: {missing}"


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_moon_remote_cache_roundtrip(tmp_path: Path, compression: str) -> None:
    server = start_granary(tmp_path / "server")
    try:
        ws = make_workspace(tmp_path, server.address, compression)
        env = moon_env(tmp_path)
        out = ws / "app" / "out"

        # 1. Cold run: the task executes and moon uploads its outputs.
        log1 = tmp_path / "moon-1.log"
        run_moon(ws, env, log1)
        status, ops = task_operations(ws)
        kinds = {op["meta"]["type"]: op["status"] for op in ops}
        assert status == "passed" and kinds.get("task-execution") == "passed", ops
        task_hash = next(op["meta"]["hash"] for op in ops if op["meta"]["type"] == "hash-generation")
        assert not remote_warnings(log1), "moon warned about the remote:\n" + "\n".join(remote_warnings(log1))
        text1 = log1.read_text(errors="replace")
        assert "Connecting to gRPC host" in text1
        assert re.search(r"Stored blobs .*missing=0", text1), (
            f"moon did not report storing blobs:\n{tail(log1)}"
        )
        before = snapshot(out)
        assert set(before) == {"a.txt", "tool.sh", "stamp.txt", "sub/big-random.bin", "sub/big-text.txt"}
        check_server_has_result(server.address, ws, task_hash, before)

        # 2. Forget everything locally; moon must hydrate from Granary.
        shutil.rmtree(ws / ".moon" / "cache")
        shutil.rmtree(out)
        log2 = tmp_path / "moon-2.log"
        proc = run_moon(ws, env, log2)
        assert not remote_warnings(log2), "moon warned about the remote:\n" + "\n".join(remote_warnings(log2))
        status, ops = task_operations(ws)
        kinds = {op["meta"]["type"]: op["status"] for op in ops}
        assert kinds.get("output-hydration") == "cached-from-remote", (ops, proc.stdout)
        assert "task-execution" not in kinds, f"task ran again instead of hitting the cache: {ops}"
        assert status == "cached-from-remote", status
        assert "cached from remote" in proc.stdout
        assert snapshot(out) == before  # contents (incl. the timestamp) and executable bits
    finally:
        server.stop()
