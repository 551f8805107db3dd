"""moon (moonrepo) through TLS and mTLS to a real `granary serve` with authentication.

moon's own configuration keys (`.moon/workspace.yml`, `remote:`):
  host: 'grpcs://127.0.0.1:PORT'
  tls:  {cert: CA file, domain: name in the server certificate}              server-only TLS
  mtls: {caCert, clientCert, clientKey, domain}                               mutual TLS
  auth: {token: NAME OF AN ENVIRONMENT VARIABLE}   sent as `authorization: Bearer <value>`

Each case runs the task twice: cold (it executes and moon pushes its outputs) and, after
moon's local cache and the outputs are wiped, warm (moon restores them from Granary: the
run report says `cached-from-remote`, the task did not run, a nanosecond timestamp comes
back byte-identical). The token comes from the real `granary token create`; the mTLS
identity from the client certificate's common name.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from serverutil import start_granary
from test_moon_cache import (
    INSTANCE,
    MOON,
    make_workspace,
    moon_env,
    remote_warnings,
    run_moon,
    snapshot,
    tail,
)
from test_moon_cache import task_operations as operations
from tlsserver import PkiFiles, create_token, server_config, store_counts

pytestmark = [
    pytest.mark.client,
    pytest.mark.skipif(MOON is None, reason="moon not installed (npm install --prefix tests/clients)"),
    pytest.mark.skipif(shutil.which("git") is None, reason="moon needs git"),
    pytest.mark.timeout(600),
]

TOKEN_ENV = "GRANARY_MOON_TOKEN"
WRITE = ["cache-read", "cache-write", "ac-write"]


def secure_workspace(root: Path, address: str, remote_extra: str) -> Path:
    """test_moon_cache's workspace, with grpcs:// and the given extra `remote:` keys."""
    ws = make_workspace(root, address, "none")
    config = ws / ".moon" / "workspace.yml"
    text = config.read_text().replace(f"grpc://{address}", f"grpcs://{address}")
    assert "grpcs://" in text
    config.write_text(text + remote_extra)
    return ws


def push_then_restore(tmp_path: Path, ws: Path, env: dict[str, str]) -> tuple[list[dict], list[dict]]:
    """Run the task cold, wipe moon's cache and the outputs, run it again; the operations
    of both runs. Asserts moon had nothing to complain about the remote."""
    out = ws / "app" / "out"
    cold_log = tmp_path / "moon-cold.log"
    run_moon(ws, env, cold_log)
    assert not remote_warnings(cold_log), "moon warned:\n" + "\n".join(remote_warnings(cold_log))
    status, cold_ops = operations(ws)
    assert status == "passed", cold_ops
    before = snapshot(out)
    assert "stamp.txt" in before

    shutil.rmtree(ws / ".moon" / "cache")
    shutil.rmtree(out)
    warm_log = tmp_path / "moon-warm.log"
    proc = run_moon(ws, env, warm_log)
    assert not remote_warnings(warm_log), "moon warned:\n" + "\n".join(remote_warnings(warm_log))
    status, warm_ops = operations(ws)
    kinds = {op["meta"]["type"]: op["status"] for op in warm_ops}
    assert kinds.get("output-hydration") == "cached-from-remote", (warm_ops, proc.stdout, tail(warm_log))
    assert "task-execution" not in kinds, f"task ran again instead of hitting the cache: {warm_ops}"
    assert status == "cached-from-remote"
    assert snapshot(out) == before  # contents, the timestamp included, and executable bits
    return cold_ops, warm_ops


def test_moon_through_tls_with_a_bearer_token(tmp_path: Path) -> None:
    pki = PkiFiles.write(tmp_path / "pki")
    auth = {"tokens": {}, "rules": [{"instance": "", "identities": ["moon-ci"], "permissions": WRITE}]}
    server = start_granary(tmp_path / "server", server_config(pki, auth))
    try:
        token = create_token(tmp_path / "server" / "granary.yaml", server.data_dir, "moon-ci", WRITE)
        ws = secure_workspace(
            tmp_path, server.address,
            f"  tls:\n    cert: '{pki.ca}'\n    domain: 'localhost'\n  auth:\n    token: '{TOKEN_ENV}'\n",
        )
        env = moon_env(tmp_path)

        # a token the server does not know: moon (which never fails a task on its cache)
        # is told UNAUTHENTICATED, disables the remote, and stores nothing
        bogus_log = tmp_path / "moon-bogus-token.log"
        run_moon(ws, {**env, TOKEN_ENV: "gnr_not-a-token"}, bogus_log)
        warnings = "\n".join(remote_warnings(bogus_log))
        assert "does not have valid authentication credentials" in warnings, tail(bogus_log)
        assert store_counts(server.data_dir).action_results == 0
        shutil.rmtree(ws / ".moon" / "cache")
        shutil.rmtree(ws / "app" / "out")

        env[TOKEN_ENV] = token
        push_then_restore(tmp_path, ws, env)
        assert store_counts(server.data_dir).action_results == 1
    finally:
        server.stop()


def test_moon_through_mtls(tmp_path: Path) -> None:
    pki = PkiFiles.write(tmp_path / "pki")
    auth = {"mtls": {"identity": "common_name"},
            "rules": [{"instance": INSTANCE, "identities": ["alice"], "permissions": WRITE}]}
    server = start_granary(tmp_path / "server", server_config(pki, auth, mtls=True))
    try:
        ws = secure_workspace(
            tmp_path, server.address,
            "  mtls:\n"
            f"    caCert: '{pki.ca}'\n"
            f"    clientCert: '{pki.client_cert}'\n"
            f"    clientKey: '{pki.client_key}'\n"
            "    domain: 'localhost'\n",
        )
        push_then_restore(tmp_path, ws, moon_env(tmp_path))
        assert store_counts(server.data_dir).action_results == 1
    finally:
        server.stop()
