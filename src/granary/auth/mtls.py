"""Identities from TLS client certificates, as gRPC reports them in the call's auth context.

The gRPC server verifies the certificate against the client CA before any call, so the
fields here are trustworthy; which one names the caller is the operator's choice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from granary.auth.identity import AuthMethod, Identity

AuthContext = Mapping[str, Sequence[bytes]]


class CertField(StrEnum):
    COMMON_NAME = "common_name"
    SUBJECT_ALTERNATIVE_NAME = "subject_alternative_name"


_KEYS = {
    CertField.COMMON_NAME: "x509_common_name",
    CertField.SUBJECT_ALTERNATIVE_NAME: "x509_subject_alternative_name",
}


@dataclass(frozen=True)
class CertIdentities:
    field: CertField = CertField.COMMON_NAME
    san_prefix: str = ""  # with subject_alternative_name: the first SAN starting with this (e.g. spiffe://)

    def identity(self, auth_context: AuthContext) -> Identity | None:
        """The identity of a verified client certificate, or None when the peer presented none."""
        if not auth_context or b"ssl" not in auth_context.get("transport_security_type", ()):
            return None
        for raw in auth_context.get(_KEYS[self.field], ()):
            value = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
            if value and value.startswith(self.san_prefix if self.field is CertField.SUBJECT_ALTERNATIVE_NAME else ""):
                return Identity(value, AuthMethod.MTLS)
        return None
