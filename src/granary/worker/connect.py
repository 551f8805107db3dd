"""A worker's connection to its server: TLS files, the credential header on every call, and a
first contact that says what is wrong and retries until the server answers."""

from __future__ import annotations

import base64
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from granary.errors import ConfigError

NOT_ANSWERED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
AUTHORIZATION = "authorization"


@dataclass(frozen=True)
class Credentials:
    """How a worker proves who it is: TLS files and one header sent with every call."""

    tls_ca: Path | None = None  # PEM CA bundle the server's certificate must chain to (default: system roots)
    tls_client_cert: Path | None = None  # PEM client certificate (mTLS)
    tls_client_key: Path | None = None
    tls_server_name: str | None = None  # name to check the server's certificate against (default: the host)
    header: tuple[str, str] | None = None  # e.g. ("authorization", "Bearer gnr_...")

    def channel_credentials(self) -> grpc.ChannelCredentials:
        if (self.tls_client_cert is None) != (self.tls_client_key is None):
            raise ConfigError("--tls-client-cert and --tls-client-key go together")
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.tls_ca, "--tls-ca"),
            private_key=_read(self.tls_client_key, "--tls-client-key"),
            certificate_chain=_read(self.tls_client_cert, "--tls-client-cert"),
        )


def _read(path: Path | None, flag: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"{flag}: cannot read {path}: {e.strerror}") from None


def _secret(path: Path | None, env: str | None) -> str | None:
    if path is not None and env is not None:
        raise ConfigError("give --token-file or --token-env, not both")
    if env is not None:
        value = os.environ.get(env, "").strip()
        if not value:
            raise ConfigError(f"--token-env: environment variable {env} is not set or empty")
        return value
    if path is None:
        return None
    text = (_read(path, "--token-file") or b"").decode(errors="replace").strip()
    if not text:
        raise ConfigError(f"--token-file: {path} is empty")
    return text


def auth_header(token_file: Path | None, token_env: str | None, basic_file: Path | None,
                header: str = AUTHORIZATION) -> tuple[str, str] | None:
    """The one credential header: `authorization: Bearer TOKEN`, the token alone in another header,
    or `authorization: Basic ...` from a file holding user:password."""
    header = header.lower()
    token = _secret(token_file, token_env)
    if basic_file is not None:
        if token is not None:
            raise ConfigError("give a token or --basic-auth-file, not both")
        pair = _secret(basic_file, None)
        assert pair is not None
        if ":" not in pair:
            raise ConfigError(f"--basic-auth-file: {basic_file} must hold user:password")
        return (AUTHORIZATION, "Basic " + base64.b64encode(pair.encode()).decode())
    if token is None:
        return None
    if header == AUTHORIZATION:
        return (header, token if " " in token else f"Bearer {token}")
    return (header, token)


class _Header(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
              grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds the credential header to every call (plain channels cannot carry call credentials)."""

    def __init__(self, header: tuple[str, str]):
        self.header = header

    def _details(self, details: Any) -> Any:
        metadata = list(details.metadata or ()) + [self.header]
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation: Callable, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Callable, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Callable, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Callable, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


def open_channel(server: str, credentials: Credentials, options: list[tuple[str, Any]]) -> grpc.Channel:
    """grpc://HOST:PORT or HOST:PORT (plain, unless a TLS file is given), grpcs://HOST:PORT (TLS),
    unix:PATH or unix-abstract:NAME (plain); with the credential header on every call."""
    tls = server.startswith("grpcs://") or credentials.tls_ca is not None or credentials.tls_client_cert is not None
    target = server.removeprefix("grpcs://").removeprefix("grpc://")
    if tls:
        if credentials.tls_server_name:
            options = [*options, ("grpc.ssl_target_name_override", credentials.tls_server_name)]
        channel = grpc.secure_channel(target, credentials.channel_credentials(), options)
    else:
        channel = grpc.insecure_channel(target, options)
    if credentials.header is not None:
        channel = grpc.intercept_channel(channel, _Header(credentials.header))
    return channel


def reason(err: grpc.RpcError) -> str:
    """`connection refused` from gRPC's `failed to connect ...: Connection refused`."""
    details = (err.details() or "") if hasattr(err, "details") else ""
    last = details.rstrip().rsplit(": ", 1)[-1].strip() or err.code().name.lower()
    return last[:1].lower() + last[1:]


def wait_until_answered(channel: grpc.Channel, instance: str, label: str, stop: threading.Event,
                        call_timeout: float = 10.0, max_backoff: float = 5.0) -> bool:
    """Call the server until it answers (any reply but UNAVAILABLE counts); False when `stop` is set first.

    Each new reason it cannot be reached is printed once on stderr, as
    `granary: LABEL: REASON; retrying`.
    """
    stub = re_grpc.CapabilitiesStub(channel)
    backoff, said = 0.2, ""
    while not stop.is_set():
        try:
            stub.GetCapabilities(re_pb2.GetCapabilitiesRequest(instance_name=instance), timeout=call_timeout)
            return True
        except grpc.RpcError as e:
            if e.code() not in NOT_ANSWERED:
                return True  # it answered: the bot sessions deal with what it said
            why = reason(e)
            if why != said:
                print(f"granary: {label}: {why}; retrying", file=sys.stderr, flush=True)
                said = why
        stop.wait(backoff)
        backoff = min(max_backoff, backoff * 2)
    return False
