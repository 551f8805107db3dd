"""Parsing ByteStream resource names: the REAPI CAS's and the LogStream API's.

  read:  {instance}/blobs/{digest_function/}{hash}/{size}
         {instance}/compressed-blobs/{compressor}/{digest_function/}{hash}/{size}
         {instance}/logstreams/{id}                      (a live output stream)
  write: {instance}/uploads/{uuid}/blobs/{digest_function/}{hash}/{size}{/metadata}
         {instance}/uploads/{uuid}/compressed-blobs/{compressor}/{digest_function/}{hash}/{size}{/metadata}
         {instance}/logstreams/{id}/{write_token}        (only its writer knows the token)

`read_target` and `write_target` tell the two kinds apart, so one ByteStream service serves both.

Instance names may span several segments; none may be a reserved keyword.
"""

from __future__ import annotations

from dataclasses import dataclass

from granary import compression
from granary import digest as dg
from granary.digest import BlobDigest
from granary.errors import InvalidArgument

RESERVED = frozenset(
    {"blobs", "uploads", "actions", "actionResults", "operations", "capabilities", "compressed-blobs", "logstreams"}
)
LOGSTREAMS = "logstreams"


@dataclass(frozen=True)
class BlobResource:
    instance: str
    digest: BlobDigest
    compressor: int  # compression.IDENTITY for plain blobs
    upload_id: str = ""  # uuid segment of writes

    @property
    def upload_key(self) -> str:
        return f"{self.instance}/{self.upload_id}/{self.compressor}/{self.digest.key}/{self.digest.size}"


@dataclass(frozen=True)
class LogStreamResource:
    """A log stream's name: read names have no token, write names end with the writer's secret."""

    instance: str
    stream_id: str
    token: str = ""

    @property
    def read_name(self) -> str:
        return logstream_name(self.instance, self.stream_id)


def logstream_name(instance: str, stream_id: str, token: str = "") -> str:
    """{instance}/logstreams/{id}[/{token}] (no leading slash for the default instance)."""
    prefix = f"{instance}/" if instance else ""
    return f"{prefix}{LOGSTREAMS}/{stream_id}" + (f"/{token}" if token else "")


def parse_logstream(name: str) -> LogStreamResource | None:
    """The log stream a name designates, None if it is not a log stream name (e.g. a CAS blob's)."""
    parts = name.split("/")
    for i, p in enumerate(parts):
        if p == LOGSTREAMS:
            rest = parts[i + 1 :]
            if not 1 <= len(rest) <= 2 or not all(rest):
                raise InvalidArgument(
                    f"invalid log stream resource name {name!r}: expected '{{instance}}/logstreams/{{id}}'"
                    " (to read) or '{instance}/logstreams/{id}/{write_token}' (to write)"
                )
            return LogStreamResource(_instance(parts[:i]), rest[0], rest[1] if len(rest) == 2 else "")
        if p in RESERVED:
            return None
    return None


def read_target(name: str) -> BlobResource | LogStreamResource:
    """What a ByteStream Read names: a CAS blob or a log stream."""
    return parse_logstream(name) or parse_read(name)


def write_target(name: str) -> BlobResource | LogStreamResource:
    """What a ByteStream Write or QueryWriteStatus names: a CAS upload or a log stream."""
    return parse_logstream(name) or parse_write(name)


def _digest_tail(name: str, parts: list[str], allow_metadata: bool) -> tuple[BlobDigest, int]:
    """Parse [compressor/]{digest_function/}{hash}/{size}... -> digest, segments used."""
    used = 0
    function = dg.UNKNOWN
    if parts and parts[0] in dg.BY_NAME:
        function = dg.BY_NAME[parts[0]]
        used = 1
    elif parts and parts[0].isalpha() and not all(c in "abcdef" for c in parts[0]):
        raise InvalidArgument(f"unsupported digest function {parts[0]!r} in resource name {name!r}")
    rest = parts[used:]
    if len(rest) < 2:
        raise InvalidArgument(f"resource name {name!r} lacks a {{hash}}/{{size}} part")
    if len(rest) > 2 and not allow_metadata:
        raise InvalidArgument(f"resource name {name!r} has unexpected segments after the size")
    hash_, size_s = rest[0], rest[1]
    if not (size_s.isascii() and size_s.isdigit()):
        raise InvalidArgument(f"invalid size {size_s!r} in resource name {name!r}")
    return dg.make_digest(function, hash_, int(size_s)), used + 2


def _compressor(name: str, segment: str | None) -> int:
    if segment is None or segment not in compression.BY_NAME:
        raise InvalidArgument(
            f"unsupported compressor {segment!r} in resource name {name!r} (supported: zstd, deflate)"
        )
    return compression.BY_NAME[segment]


def _instance(parts: list[str]) -> str:
    return "/".join(parts)


def parse_read(name: str) -> BlobResource:
    parts = name.split("/")
    for i, p in enumerate(parts):
        if p == "blobs":
            digest, _ = _digest_tail(name, parts[i + 1 :], allow_metadata=False)
            return BlobResource(_instance(parts[:i]), digest, compression.IDENTITY)
        if p == "compressed-blobs":
            comp = _compressor(name, parts[i + 1] if i + 1 < len(parts) else None)
            digest, _ = _digest_tail(name, parts[i + 2 :], allow_metadata=False)
            return BlobResource(_instance(parts[:i]), digest, comp)
        if p in RESERVED:
            break
    raise InvalidArgument(
        f"invalid read resource name {name!r}: expected"
        " '{instance}/blobs/{hash}/{size}' or '{instance}/compressed-blobs/{compressor}/{hash}/{size}'"
    )


def parse_write(name: str) -> BlobResource:
    parts = name.split("/")
    for i, p in enumerate(parts):
        if p == "uploads":
            if i + 2 >= len(parts) or not parts[i + 1]:
                break
            upload_id = parts[i + 1]
            kind = parts[i + 2]
            if kind == "blobs":
                digest, _ = _digest_tail(name, parts[i + 3 :], allow_metadata=True)
                return BlobResource(_instance(parts[:i]), digest, compression.IDENTITY, upload_id)
            if kind == "compressed-blobs":
                comp = _compressor(name, parts[i + 3] if i + 3 < len(parts) else None)
                digest, _ = _digest_tail(name, parts[i + 4 :], allow_metadata=True)
                return BlobResource(_instance(parts[:i]), digest, comp, upload_id)
            break
        if p in RESERVED:
            break
    raise InvalidArgument(
        f"invalid write resource name {name!r}: expected"
        " '{instance}/uploads/{uuid}/blobs/{hash}/{size}' or"
        " '{instance}/uploads/{uuid}/compressed-blobs/{compressor}/{hash}/{size}'"
    )
