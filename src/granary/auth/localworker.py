"""The credential of the local workers `granary serve` starts itself.

When authentication is on, the local workers must authenticate like any other bot.
`granary serve` mints a random secret at start-up, writes it to a 0600 file in the data
directory for its workers (`granary worker --token-file`) and hands its server processes
only the SHA-256 of it (in the environment, so children of the supervisor share it). The
secret authenticates as the identity `granary-local-worker` with method `local-worker`,
which may use `worker`, `cache-read` and `cache-write` on every instance and nothing else;
a user of the same name from htpasswd or tokens gets nothing from this. It is never logged
and the file is removed when the server stops.

The workers reach their server over an abstract Unix socket named in the environment too,
beside the TCP port: no TLS hostname to match and no client certificate needed under mTLS,
while the bearer secret is still checked by the same interceptor as every call.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from granary.auth.identity import AuthMethod, Identity

LOCAL_WORKER = "granary-local-worker"
SECRET_PREFIX = "gnrlw_"
HASH_ENV = "GRANARY_LOCAL_WORKER_KEY_SHA256"
SOCKET_ENV = "GRANARY_LOCAL_WORKER_SOCKET"
IDENTITY = Identity(LOCAL_WORKER, AuthMethod.LOCAL_WORKER)


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass(frozen=True)
class LocalWorkerKey:
    """What a server process knows of the secret: its hash."""

    sha256: str

    def matches(self, presented: str) -> bool:
        return presented.startswith(SECRET_PREFIX) and hmac.compare_digest(_sha256(presented), self.sha256)

    @classmethod
    def from_environment(cls) -> LocalWorkerKey | None:
        value = os.environ.get(HASH_ENV)
        return cls(value) if value else None


@dataclass
class LocalWorkerCredential:
    """The secret as the process that starts the workers holds it, and where they find it."""

    token_file: Path
    socket: str  # gRPC address of the abstract Unix socket: unix-abstract:NAME

    @classmethod
    def mint(cls, data_dir: Path) -> LocalWorkerCredential:
        """A fresh secret in a 0600 file; its hash and the socket name go into os.environ for the servers."""
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        path = Path(data_dir) / f"local-worker-{os.getpid()}.token"
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret + "\n")
        os.environ[HASH_ENV] = _sha256(secret)
        socket = f"unix-abstract:granary-{os.getpid()}-{secrets.token_hex(8)}"
        os.environ[SOCKET_ENV] = socket
        return cls(path, socket)

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.token_file.unlink()
