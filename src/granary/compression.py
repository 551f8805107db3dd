"""Compressors REAPI clients may ask for: zstd and raw DEFLATE (RFC 1951)."""

from __future__ import annotations

import zlib
from typing import Protocol

import zstandard

from granary.errors import InvalidArgument

# build.bazel.remote.execution.v2.Compressor.Value numbers (wire contract).
IDENTITY = 0
ZSTD = 1
DEFLATE = 2
BROTLI = 3

NAMES = {ZSTD: "zstd", DEFLATE: "deflate"}
BY_NAME = {v: k for k, v in NAMES.items()}
SUPPORTED = (ZSTD, DEFLATE)

_ZSTD_LEVEL = 1  # speed first: clients mostly sit next to the server
# No shared (de)compressor objects: objects derived from one zstandard context
# share its state, so two concurrent streams would corrupt each other.


class StreamDecompressor(Protocol):
    def decompress(self, data: bytes) -> bytes: ...


class StreamCompressor(Protocol):
    def compress(self, data: bytes) -> bytes: ...
    def flush(self) -> bytes: ...


def check(compressor: int) -> None:
    if compressor != IDENTITY and compressor not in SUPPORTED:
        raise InvalidArgument(f"compressor {compressor} is not supported (supported: zstd, deflate)")


def compress(compressor: int, data: bytes) -> bytes:
    if compressor == ZSTD:
        return zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(data)
    if compressor == DEFLATE:
        c = zlib.compressobj(1, zlib.DEFLATED, -15)
        return c.compress(data) + c.flush()
    return data


def decompress(compressor: int, data: bytes, expected_size: int) -> bytes:
    """Decompress a whole blob; at most `expected_size` + 1 bytes are produced."""
    try:
        if compressor == ZSTD:
            # bounded: a small "bomb" must not expand past what the digest allows
            out = bytearray()
            with zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True) as r:
                while len(out) <= expected_size:
                    chunk = r.read(expected_size + 1 - len(out))
                    if not chunk:
                        break
                    out += chunk
            return bytes(out)
        if compressor == DEFLATE:
            d = zlib.decompressobj(-15)
            return d.decompress(data, expected_size + 1)
    except (zstandard.ZstdError, zlib.error) as e:
        raise InvalidArgument(f"data is not valid {NAMES[compressor]}: {e}") from None
    return data


class _ZstdStreamDecompressor:
    def __init__(self) -> None:
        self._d = zstandard.ZstdDecompressor().decompressobj()

    def decompress(self, data: bytes) -> bytes:
        try:
            return self._d.decompress(data)
        except zstandard.ZstdError as e:
            raise InvalidArgument(f"data is not valid zstd: {e}") from None


class _DeflateStreamDecompressor:
    def __init__(self) -> None:
        self._d = zlib.decompressobj(-15)

    def decompress(self, data: bytes) -> bytes:
        try:
            return self._d.decompress(data)
        except zlib.error as e:
            raise InvalidArgument(f"data is not valid deflate: {e}") from None


class _IdentityStream:
    def decompress(self, data: bytes) -> bytes:
        return data

    def compress(self, data: bytes) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""


def stream_decompressor(compressor: int) -> StreamDecompressor:
    if compressor == ZSTD:
        return _ZstdStreamDecompressor()
    if compressor == DEFLATE:
        return _DeflateStreamDecompressor()
    return _IdentityStream()


def stream_compressor(compressor: int) -> StreamCompressor:
    if compressor == ZSTD:
        return zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compressobj()
    if compressor == DEFLATE:
        return zlib.compressobj(1, zlib.DEFLATED, -15)
    return _IdentityStream()
