"""A connection to another REAPI server: address, TLS, auth header, channel options.

Shared by the remote CAS and the remote Action Cache. The channel is opened
lazily, on the event loop that first uses it (grpc.aio channels belong to a loop).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from granary import errors

_BY_CODE: dict[grpc.StatusCode, type[errors.GranaryError]] = {
    cls.code: cls
    for cls in (
        errors.InvalidArgument, errors.NotFound, errors.OutOfRange, errors.PermissionDenied,
        errors.ResourceExhausted, errors.Unavailable, errors.Unimplemented, errors.Aborted,
        errors.Cancelled, errors.DeadlineExceeded, errors.FailedPrecondition,
    )
}
_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def error_for(code: grpc.StatusCode | int, message: str, where: str) -> errors.GranaryError:
    """A domain error for a status the remote server answered with."""
    if isinstance(code, int):
        code = _BY_NUMBER.get(code, grpc.StatusCode.UNKNOWN)
    cls = _BY_CODE.get(code, errors.Unavailable)
    return cls(f"remote {where}: {code.name}: {message}")


def rpc_error(e: grpc.aio.AioRpcError, where: str) -> errors.GranaryError:
    return error_for(e.code(), e.details() or "", where)


@dataclass
class RemoteEndpoint:
    address: str  # grpc://host:port, grpcs://host:port or host:port
    tls_ca_cert: Path | None = None
    tls_client_cert: Path | None = None
    tls_client_key: Path | None = None
    auth_header: str = "authorization"
    auth_token: str | None = None  # in authorization: "Bearer TOKEN" unless it has a scheme; other headers: as is
    channel_options: dict[str, Any] = field(default_factory=dict)
    timeout: float = 300.0
    _channel: grpc.aio.Channel | None = field(default=None, init=False, repr=False)

    @property
    def target(self) -> str:
        for scheme in ("grpcs://", "grpc://"):
            if self.address.startswith(scheme):
                return self.address[len(scheme):]
        return self.address

    @property
    def secure(self) -> bool:
        return self.address.startswith("grpcs://") or self.tls_ca_cert is not None

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        if not self.auth_token:
            return ()
        header = self.auth_header.lower()
        if header != "authorization" or " " in self.auth_token:
            return ((header, self.auth_token),)  # another header carries the bare token (x-granary-token)
        return ((header, f"Bearer {self.auth_token}"),)

    def channel(self) -> grpc.aio.Channel:
        if self._channel is None:
            options = [("grpc.max_receive_message_length", 64 << 20),
                       ("grpc.max_send_message_length", 64 << 20)]
            options += list(self.channel_options.items())
            if self.secure:
                creds = grpc.ssl_channel_credentials(
                    root_certificates=_read(self.tls_ca_cert),
                    private_key=_read(self.tls_client_key),
                    certificate_chain=_read(self.tls_client_cert),
                )
                self._channel = grpc.aio.secure_channel(self.target, creds, options=options)
            else:
                self._channel = grpc.aio.insecure_channel(self.target, options=options)
        return self._channel

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None


def _read(path: Path | None) -> bytes | None:
    return Path(path).read_bytes() if path else None
