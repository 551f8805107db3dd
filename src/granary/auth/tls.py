"""Server TLS credentials from certificate files, re-read when they change.

gRPC asks for the current certificates on every new handshake; the files are read again
when their modification times change, so a renewed certificate is served without a
restart. With a client CA, clients must present a certificate it signed (mTLS); the
verified certificate can then name the caller (see mtls.py).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import grpc

from granary.errors import ConfigError

log = logging.getLogger("granary.auth")


@dataclass(frozen=True)
class TlsFiles:
    cert: Path  # PEM certificate chain of the server
    key: Path  # PEM private key
    client_ca: Path | None = None  # PEM CA bundle; set: clients must present a certificate it signed

    def paths(self) -> list[Path]:
        return [p for p in (self.cert, self.key, self.client_ca) if p is not None]


def _mtimes(files: TlsFiles) -> tuple[int, ...]:
    return tuple(os.stat(p).st_mtime_ns for p in files.paths())


def _read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"server.tls.{what}: cannot read {path}: {e.strerror}") from None
    if b"-----BEGIN" not in data:
        raise ConfigError(f"server.tls.{what}: {path} is not a PEM file")
    return data


def _configuration(files: TlsFiles) -> grpc.ServerCertificateConfiguration:
    cert = _read(files.cert, "cert")
    pair = (_read(files.key, "key"), cert)
    roots = _read(files.client_ca, "client_ca") if files.client_ca is not None else None
    return grpc.ssl_server_certificate_configuration([pair], root_certificates=roots)


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """Credentials for server.add_secure_port; ConfigError (one line) for unusable files."""
    initial = _configuration(files)
    seen = [_mtimes(files)]

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        try:
            mtimes = _mtimes(files)
            if mtimes == seen[0]:
                return None
            configuration = _configuration(files)
        except (OSError, ConfigError) as e:
            log.error("TLS certificates not reloaded: %s", e)
            return None
        seen[0] = mtimes
        log.info("TLS certificates reloaded from %s", files.cert)
        return configuration

    return grpc.dynamic_ssl_server_credentials(
        initial, fetch, require_client_authentication=files.client_ca is not None
    )
