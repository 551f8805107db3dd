"""Operating a secured `granary serve`: the auth commands under `granary`, the credential-helper
console script, revocation taking effect, the job queue schema migrated in place, an
unauthenticated caller of a draining server, and local workers of several server processes."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import tomllib
import uuid
from pathlib import Path

import bcrypt
import grpc
import pytest
from authutil import Pki
from reapi import digest
from rwapi import ExecClient, final
from serverutil import start_granary

from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from granary._proto.google.bytestream import bytestream_pb2, bytestream_pb2_grpc
from granary.execution.jobqueue import JobQueue
from granary.worker.connect import Credentials, open_channel

ROOT = Path(__file__).resolve().parent.parent
HELPER = "import sys; from granary.auth.cli import credential_helper_main; sys.exit(credential_helper_main())"


def granary(*args: str, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "granary", *args], input=stdin, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})}, check=False)


def secure_client(address: str, ca: Path, header: tuple[str, str] | None) -> ExecClient:
    c = ExecClient(address)
    c.channel.close()
    c.channel = open_channel(f"grpcs://{address}", Credentials(tls_ca=ca, header=header), [])
    c.cas = re_grpc.ContentAddressableStorageStub(c.channel)
    c.ac = re_grpc.ActionCacheStub(c.channel)
    c.bs = bytestream_pb2_grpc.ByteStreamStub(c.channel)
    c.exec = re_grpc.ExecutionStub(c.channel)
    return c


def tls_data_dir(tmp_path: Path, users: dict[str, str]) -> tuple[Path, Path]:
    pki = Pki.create()
    data = tmp_path / "granary-data"
    data.mkdir(parents=True)
    pki.server.write(data, "server")
    (data / "ca.crt").write_bytes(pki.ca.cert_pem)
    lines = [f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=4)).decode()}" for u, p in users.items()]
    (data / "htpasswd").write_text("\n".join(lines) + "\n")
    return data, data / "ca.crt"


def basic(user: str, password: str) -> tuple[str, str]:
    return ("authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())


def test_granary_registers_the_auth_commands_and_a_revoked_token_stops_working(tmp_path):
    data, ca = tls_data_dir(tmp_path, {})
    done = granary("token", "create", "--data-dir", str(data), "--name", "ci", "--scope", "cache-read",
                   "--expires", "1d")
    assert done.returncode == 0, done.stderr
    secret = done.stdout.split()[0]
    listed = granary("token", "list", "--data-dir", str(data))
    assert listed.returncode == 0 and "ci" in listed.stdout and secret not in listed.stdout
    config = """
server: {tls: {cert: server.crt, key: server.key}}
instances: {"*": {cas: {type: memory}}}
auth:
  tokens: {cache_seconds: 0}
  rules: [{identities: [ci], permissions: [cache-read]}]
"""
    with start_granary(tmp_path, config) as server:
        client = secure_client(server.address, ca, ("authorization", f"Bearer {secret}"))
        assert client.missing([digest(b"q")]) == [digest(b"q")]
        assert granary("token", "revoke", "--data-dir", str(data), "ci").returncode == 0
        with pytest.raises(grpc.RpcError) as e:
            client.missing([digest(b"q")])
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # `granary login` + the credential helper Bazel runs, through `granary` itself
        env = {"XDG_CONFIG_HOME": str(tmp_path / "cfg")}
        assert granary("login", "--server", f"grpcs://{server.address}", stdin="gnr_x\n", env=env).returncode == 0
        helper = subprocess.run(
            [sys.executable, "-c", HELPER, "get"],
            input=json.dumps({"uri": f"grpcs://{server.address}/x"}), capture_output=True, text=True,
            env={**os.environ, **env}, timeout=60, check=False,
        )
        assert json.loads(helper.stdout) == {"headers": {"Authorization": ["Bearer gnr_x"]}}, helper.stderr
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["granary-credential-helper"] == "granary.auth.cli:credential_helper_main"


OLD_OPERATIONS = """
CREATE TABLE granary_operations (
    name VARCHAR(400) NOT NULL PRIMARY KEY, job_name VARCHAR(64) NOT NULL, instance VARCHAR(255) NOT NULL,
    created_time FLOAT NOT NULL, cancelled BOOLEAN NOT NULL, tool_name VARCHAR(255) NOT NULL,
    tool_version VARCHAR(255) NOT NULL, invocation_id VARCHAR(255) NOT NULL,
    correlated_invocations_id VARCHAR(255) NOT NULL, action_mnemonic VARCHAR(255) NOT NULL,
    target_id TEXT NOT NULL, configuration_id VARCHAR(255) NOT NULL);
INSERT INTO granary_operations VALUES ('operations/old', 'job-1', '', 1.0, 0, '', '', '', '', '', '', '');
"""


def test_a_queue_database_from_before_identities_gains_the_column(tmp_path):
    path = tmp_path / "queue.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(OLD_OPERATIONS)
    queue = JobQueue(f"sqlite:///{path}")
    queue.create_schema()
    queue.create_schema()  # idempotent: a second server process starting on the same database
    queue.close()
    with sqlite3.connect(path) as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(granary_operations)")]
        assert "identity" in columns
        assert db.execute("SELECT identity FROM granary_operations").fetchall() == [("",)]
        indexes = [row[1] for row in db.execute("PRAGMA index_list(granary_operations)")]
        assert "granary_operations_identity" in indexes


def test_a_draining_server_answers_strangers_unauthenticated(tmp_path):
    _, ca = tls_data_dir(tmp_path, {"alice": "pw"})
    config = """
server: {tls: {cert: server.crt, key: server.key}, drain_timeout: 60s}
storage: {main: {type: disk, path: cas}}
action_caches: {main: {type: disk, path: ac}}
instances: {"*": {cas: main, action_cache: main}}
execution: {local_workers: 1, known_platforms: [], platform_grace: 60s, bot_long_poll: 1}
auth:
  htpasswd: htpasswd
  rules: [{identities: [alice], permissions: [cache-read, cache-write, execute]}]
"""
    server = start_granary(tmp_path, config)
    try:
        alice = secure_client(server.address, ca, basic("alice", "pw"))
        d, _ = alice.action(["sh", "-c", "sleep 8; echo slow > out"])
        call = alice.execute(d, timeout=120)
        for op in call:  # wait until a local worker runs it: draining waits for it
            md = re_pb2.ExecuteOperationMetadata()
            op.metadata.Unpack(md)
            if md.stage == re_pb2.ExecutionStage.EXECUTING:
                break
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        assert server.proc.poll() is None
        stranger = secure_client(server.address, ca, None)
        with pytest.raises(grpc.RpcError) as e:
            final(stranger.execute(d))
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as e:
            final(alice.execute(d))
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        done = [op for op in call][-1]
        response = re_pb2.ExecuteResponse()
        done.response.Unpack(response)
        assert response.result.exit_code == 0
    finally:
        server.stop()


def test_local_workers_serve_several_server_processes(tmp_path):
    _, ca = tls_data_dir(tmp_path, {"alice": "pw"})
    config = """
server: {tls: {cert: server.crt, key: server.key}}
storage: {main: {type: disk, path: cas}}
action_caches: {main: {type: disk, path: ac}}
instances: {"*": {cas: main, action_cache: main}}
execution: {local_workers: 1, known_platforms: [], platform_grace: 60s, bot_long_poll: 1}
auth:
  htpasswd: htpasswd
  rules: [{identities: [alice], permissions: [cache-read, cache-write, execute]}]
"""
    with start_granary(tmp_path, config, processes=2) as server:
        for k in range(3):  # new connections land on either process; every one reaches the worker's queue
            alice = secure_client(server.address, ca, basic("alice", "pw"))
            d, _ = alice.action(["sh", "-c", f"echo {k} > out"])
            response = final(alice.execute(d, timeout=120))
            assert response.result.exit_code == 0, response
            assert response.result.execution_metadata.worker.startswith("local-")
            alice.close()


def _abandon(client: ExecClient, size: int) -> None:
    """Open an upload, send a piece of it and walk away: it stays unfinished (resumable)."""
    name = f"uploads/{uuid.uuid4()}/blobs/{hashlib.sha256(os.urandom(8)).hexdigest()}/{size}"
    client.bs.Write(iter([bytestream_pb2.WriteRequest(resource_name=name, data=b"x" * 10)]), timeout=60)


def test_upload_limits_count_per_identity_not_per_host(tmp_path):
    _, ca = tls_data_dir(tmp_path, {"alice": "pw", "bob": "pw"})
    config = """
server: {tls: {cert: server.crt, key: server.key}, max_uploads_per_client: 2}
instances: {"*": {cas: {type: memory}}}
auth:
  htpasswd: htpasswd
  rules: [{identities: [alice, bob], permissions: [cache-read, cache-write]}]
"""
    with start_granary(tmp_path, config) as server:
        alice = secure_client(server.address, ca, basic("alice", "pw"))
        bob = secure_client(server.address, ca, basic("bob", "pw"))  # same host, another identity
        _abandon(alice, 1000)
        _abandon(alice, 1000)
        with pytest.raises(grpc.RpcError) as e:
            _abandon(alice, 1000)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "identity:alice" in (e.value.details() or "")
        _abandon(bob, 1000)
        _abandon(bob, 1000)
