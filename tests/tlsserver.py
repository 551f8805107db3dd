"""A real `granary serve` behind TLS and authentication, for tests with real clients.

Writes a test PKI (authutil.Pki: a CA, a server certificate for 127.0.0.1 and localhost,
client certificates), an htpasswd file, and a config with `server.tls` and `auth:`; creates
personal access tokens with the real `granary token create`; counts what the server's
stores hold, so a test can show that a client uploaded nothing.
"""

from __future__ import annotations

import base64
import os
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import grpc
import pytest
import yaml
from authutil import Pki

TCNATIVE_PACKAGE = "libnetty-tcnative-jni"


@dataclass
class PkiFiles:
    ca: Path  # the CA that signed the server and the client certificates
    server_cert: Path
    server_key: Path
    client_cert: Path  # CN alice, SAN spiffe://granary.test/alice
    client_key: Path  # PKCS#8 PEM ("BEGIN PRIVATE KEY"), as Bazel wants it
    other_ca: Path  # a CA the server does not trust

    @classmethod
    def write(cls, directory: Path) -> PkiFiles:
        directory.mkdir(parents=True, exist_ok=True)
        pki = Pki.create()
        ca = directory / "ca.pem"
        ca.write_bytes(pki.ca.cert_pem)
        other = directory / "other-ca.pem"
        other.write_bytes(pki.other_ca.cert_pem)
        server_cert, server_key = pki.server.write(directory, "server")
        client_cert, client_key = pki.alice.write(directory, "alice")
        return cls(ca, server_cert, server_key, client_cert, client_key, other)


def write_htpasswd(path: Path, users: dict[str, str]) -> Path:
    lines = [f"{user}:{bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=4)).decode()}" for user, pw in users.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def basic(user: str, password: str) -> str:
    """The value of an `authorization` header for HTTP Basic."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def server_config(
    pki: PkiFiles, auth: dict[str, Any], *, mtls: bool = False, execution: bool = False
) -> str:
    """YAML for `granary serve`: TLS (with the client CA when mtls), auth, a disk CAS and
    an SQLite action cache, and, when execution, remote execution with local workers."""
    tls: dict[str, str] = {"cert": str(pki.server_cert), "key": str(pki.server_key)}
    if mtls:
        tls["client_ca"] = str(pki.ca)
    config: dict[str, Any] = {
        "server": {"tls": tls},
        "storage": {"main": {"type": "disk", "path": "cas"}},
        "action_caches": {"main": {"type": "disk", "path": "ac"}},
        "instances": {"*": {"cas": "main", "action_cache": "main"}},
        "auth": auth,
    }
    if execution:
        config["execution"] = {"local_workers": 2}
    return yaml.safe_dump(config, sort_keys=False)


def create_token(config: Path, data_dir: Path, name: str, scopes: list[str], expires: str = "30d") -> str:
    """A personal access token from the real `granary token create` (printed once on stdout)."""
    cmd = [sys.executable, "-m", "granary", "token", "create", "--config", str(config), "--data-dir", str(data_dir),
           "--name", name, "--expires", expires]
    for scope in scopes:
        cmd += ["--scope", scope]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"granary token create failed ({proc.returncode}): {proc.stderr}"
    lines = proc.stdout.split()
    assert len(lines) == 1, f"expected one token on stdout, got {proc.stdout!r}"
    return lines[0]


def _rows(path: Path, table: str) -> int:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        db.close()


@dataclass(frozen=True)
class StoreCounts:
    action_results: int  # rows of the action cache
    blobs: int  # blobs the disk CAS indexes


def store_counts(data_dir: Path) -> StoreCounts:
    """What the server configured by server_config holds right now (read-only, while it runs)."""
    ac = data_dir / "ac" / "actioncache.sqlite"
    cas = data_dir / "cas" / "index.v2.sqlite"
    return StoreCounts(_rows(ac, "results") if ac.exists() else 0, _rows(cas, "blobs") if cas.exists() else 0)


def tls_channel(address: str, pki: PkiFiles, client_cert: bool = False) -> grpc.Channel:
    key = pki.client_key.read_bytes() if client_cert else None
    chain = pki.client_cert.read_bytes() if client_cert else None
    creds = grpc.ssl_channel_credentials(pki.ca.read_bytes(), key, chain)
    return grpc.secure_channel(address, creds)


def ensure_tcnative() -> None:
    """Install libnetty-tcnative-jni when it is missing and this process may (root, apt-get);
    skip the calling test, saying why, when it stays missing."""
    from bazelutil import TCNATIVE_SYSTEM

    if TCNATIVE_SYSTEM.is_file():
        return
    why = ""
    apt = shutil.which("apt-get")
    if os.geteuid() == 0 and apt is not None:
        proc = subprocess.run(
            [apt, "install", "-y", "-qq", TCNATIVE_PACKAGE], check=False, capture_output=True, text=True,
            timeout=600, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
        why = f" (apt-get install failed: {proc.stderr.strip().splitlines()[-1:] or proc.returncode})"
    elif apt is None:
        why = " (no apt-get here)"
    else:
        why = " (not root, cannot install it)"
    if not TCNATIVE_SYSTEM.is_file():
        pytest.skip(
            f"{TCNATIVE_PACKAGE} is not installed{why}: Debian's Bazel 4.2.3 needs netty's OpenSSL"
            " backend to speak grpcs://"
        )
