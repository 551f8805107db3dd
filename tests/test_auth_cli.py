"""`granary token`, `granary login` and `granary credential-helper`, run as processes."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from authutil import AuthServer

from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from granary.auth.settings import AuthSettings, build_auth


def granary(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "granary.auth.cli", *args],
        input=stdin, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})}, check=False,
    )


def find_missing(address: str, md) -> int:
    with grpc.insecure_channel(address) as channel:
        stub = re_grpc.ContentAddressableStorageStub(channel)
        d = re_pb2.Digest(hash=hashlib.sha256(b"x").hexdigest(), size_bytes=1)
        req = re_pb2.FindMissingBlobsRequest(blob_digests=[d])
        return len(stub.FindMissingBlobs(req, metadata=md, timeout=30).missing_blob_digests)


def test_token_create_list_revoke(tmp_path):
    config = tmp_path / "granary.yaml"
    config.write_text("auth:\n  tokens: {database: 'sqlite:///auth/tokens.db'}\n")
    common = ["--config", str(config), "--data-dir", str(tmp_path)]
    made = granary("token", "create", "--name", "ci", "--scope", "cache-read", "--scope", "execute",
                   "--expires", "30d", *common)
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert secret.startswith("gnr_") and len(secret) > 40
    assert "shown only this once" in made.stderr
    assert (tmp_path / "auth" / "tokens.db").exists()
    granary("token", "create", "--name", "laptop", "--scope", "cache-read", "--instance", "team/", *common)

    listed = granary("token", "list", *common)
    assert listed.returncode == 0, listed.stderr
    assert secret not in listed.stdout
    lines = listed.stdout.strip().splitlines()
    assert lines[0].split() == ["ID", "NAME", "SCOPES", "INSTANCE", "CREATED", "EXPIRES", "REVOKED"]
    ci = next(ln for ln in lines if " ci " in ln)
    assert "cache-read,execute" in ci and ci.rstrip().endswith("-")
    assert "team/" in next(ln for ln in lines if "laptop" in ln)

    settings = AuthSettings.model_validate({
        "tokens": {"database": "sqlite:///auth/tokens.db", "cache_seconds": 0},
        "rules": [{"instance": "", "identities": ["ci"], "permissions": ["cache-read"]}],
    })
    runtime = build_auth(settings, tmp_path)
    with AuthServer(runtime) as server:
        assert find_missing(server.address, (("authorization", f"Bearer {secret}"),)) == 1
        revoked = granary("token", "revoke", "ci", *common)
        assert revoked.returncode == 0 and "revoked 1 token" in revoked.stdout
        with pytest.raises(grpc.RpcError) as exc:
            find_missing(server.address, (("authorization", f"Bearer {secret}"),))
        assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
    runtime.close()
    listed = granary("token", "list", *common).stdout
    ci = next(ln for ln in listed.splitlines() if " ci " in ln)
    assert not ci.rstrip().endswith(" -")  # a revocation time
    again = granary("token", "revoke", "ci", *common)
    assert again.returncode == 1 and "'ci'" in again.stderr


def test_token_create_refuses_bad_input(tmp_path):
    bad_scope = granary("token", "create", "--name", "x", "--scope", "everything", "--data-dir", str(tmp_path))
    assert bad_scope.returncode == 2 and "everything" in bad_scope.stderr
    bad_expiry = granary("token", "create", "--name", "x", "--scope", "cache-read", "--expires", "soon",
                         "--data-dir", str(tmp_path))
    assert bad_expiry.returncode == 2
    assert bad_expiry.stderr.strip().count("\n") == 0 and "'soon'" in bad_expiry.stderr


def test_login_and_credential_helper(tmp_path):
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config")}
    token_file = tmp_path / "token"
    token_file.write_text("gnr_exampletoken\n")
    done = granary("login", "--server", "grpcs://cache.example.com:8980", "--token-file", str(token_file), env=env)
    assert done.returncode == 0, done.stderr
    other = granary("login", "--server", "grpc://127.0.0.1:9000", env=env, stdin="gnr_localtoken\n")
    assert other.returncode == 0, other.stderr
    creds = tmp_path / "config" / "granary" / "credentials.json"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    assert "gnr_exampletoken" in creds.read_text()

    def helper(request) -> tuple[int, dict | str]:
        r = granary("credential-helper", "get", env=env, stdin=json.dumps(request) if request is not None else "")
        return r.returncode, json.loads(r.stdout) if r.returncode == 0 else r.stderr

    assert helper({"uri": "grpcs://cache.example.com:8980"}) == (
        0, {"headers": {"Authorization": ["Bearer gnr_exampletoken"]}}
    )
    assert helper({"uri": "https://cache.example.com:8980/some/path"})[1]["headers"]["Authorization"] == [
        "Bearer gnr_exampletoken"
    ]
    assert helper({"uri": "grpc://127.0.0.1:9000"})[1]["headers"]["Authorization"] == ["Bearer gnr_localtoken"]
    assert helper({"uri": "grpcs://cache.example.com:443"}) == (0, {"headers": {}})
    assert helper({"uri": "grpcs://elsewhere.example.com:8980"}) == (0, {"headers": {}})
    code, err = helper({"url": "x"})
    assert code == 2 and "uri" in err
    r = granary("credential-helper", "get", env=env, stdin="not json")
    assert r.returncode == 2 and "not JSON" in r.stderr

    # logging in again replaces the server's token
    token_file.write_text("gnr_rotated")
    granary("login", "--server", "grpcs://cache.example.com:8980", "--token-file", str(token_file), env=env)
    assert helper({"uri": "grpcs://cache.example.com:8980"})[1]["headers"]["Authorization"] == ["Bearer gnr_rotated"]
    assert len(json.loads(creds.read_text())["servers"]) == 2


def test_credential_helper_token_is_accepted_by_the_server(tmp_path):
    from granary.auth.settings import token_store

    settings = AuthSettings.model_validate({
        "tokens": {"database": "sqlite:///tokens.sqlite"},
        "rules": [{"instance": "", "identities": ["dev"], "permissions": ["cache-read"]}],
    })
    store = token_store(settings.tokens, tmp_path)
    _, secret = store.create("dev", ["cache-read"], 3600)
    store.close()
    env = {"XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    runtime = build_auth(settings, tmp_path)
    with AuthServer(runtime) as server:
        assert granary("login", "--server", f"grpc://{server.address}", env=env, stdin=secret).returncode == 0
        out = granary("credential-helper", "get", env=env, stdin=json.dumps({"uri": f"grpc://{server.address}"}))
        headers = json.loads(out.stdout)["headers"]
        md = tuple((k.lower(), v) for k, values in headers.items() for v in values)
        assert find_missing(server.address, md) == 1
        assert server.seen[-1].name == "dev"
    runtime.close()


def test_credentials_file_is_private_from_the_start(tmp_path):
    env = {"XDG_CONFIG_HOME": str(tmp_path / "c")}
    old = os.umask(0)
    try:
        assert granary("login", "--server", "grpc://h:1", env=env, stdin="gnr_t").returncode == 0
    finally:
        os.umask(old)
    path = Path(tmp_path / "c" / "granary" / "credentials.json")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
